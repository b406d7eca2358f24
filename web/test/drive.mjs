// Drive the page in a headless Chromium with puppeteer-core (used by tests/test_web.py, and to time the page).
//
//   node web/test/drive.mjs --browser /usr/bin/chromium --page 'http://127.0.0.1:8000/?model=models/m.onnx&ep=wasm' \
//        --jobs JOBS.json --out OUT.json [--timeout 120000] [--webgpu]
//
// The page loads the model from its URL (and runs the first job itself when the URL has image= and box=);
// each job {image: URL, boxes: [[x1, y1, x2, y2]...], repeat: N, model: URL (optional: load it first)} then
// runs through window.fanEdge.runUrl.
// OUT: {results: [page result per job], model: the page's model line, console: [browser messages]}.
// --webgpu starts Chromium with WebGPU enabled (SwiftShader's Vulkan where there is no GPU).

import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import puppeteer from "puppeteer-core";

const { values: args } = parseArgs({
  options: {
    browser: { type: "string" },
    page: { type: "string" },
    jobs: { type: "string" },
    out: { type: "string" },
    timeout: { type: "string", default: "120000" },
    webgpu: { type: "boolean", default: false },
  },
});
for (const need of ["browser", "page", "jobs", "out"]) {
  if (!args[need]) {
    console.error(`drive.mjs: --${need} is required`);
    process.exit(2);
  }
}
const timeout = Number(args.timeout);
const jobs = JSON.parse(readFileSync(args.jobs, "utf8"));
const flags = ["--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions", "--disable-renderer-backgrounding",
  "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"];
if (args.webgpu) flags.push("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader", "--enable-unsafe-swiftshader");

const messages = [];
const browser = await puppeteer.launch({ executablePath: args.browser, headless: true, args: flags, protocolTimeout: timeout });
let code = 0;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  await page.goto(args.page, { waitUntil: "load" });
  await page.waitForFunction(() => Boolean(window.fanEdge && window.fanEdge.ready));
  const ready = await page.evaluate(() => window.fanEdge.ready.then(() => "ok", (e) => `error: ${e.message ?? e}`));
  if (ready !== "ok") throw new Error(`the page did not start: ${ready}`);
  const fromUrl = new URL(args.page).searchParams.has("image");
  const results = [];
  for (const [i, job] of jobs.entries()) {
    if (i === 0 && fromUrl) {
      results.push(await page.evaluate(() => window.fanEdge.lastResult));
      continue;
    }
    if (job.model) await page.evaluate((url) => window.fanEdge.loadModelUrl(url).then(() => null), job.model);
    results.push(await page.evaluate((j) => window.fanEdge.runUrl(j.image, j.boxes, j.repeat || 0), job));
  }
  const model = await page.evaluate(() => document.getElementById("model-info").textContent);
  const state = await page.evaluate(() => document.body.dataset.state);
  writeFileSync(args.out, JSON.stringify({ results, model, state, console: messages }));
  for (const [i, r] of results.entries()) {
    if (!jobs[i].repeat) continue;
    for (const [k, f] of r.faces.entries()) {
      const ms = Object.entries(f.ms).map(([name, v]) => `${name} ${v.toFixed(2)}`).join(", ");
      console.log(`job ${i} face ${k}: ${r.provider} (${r.provider === "wasm" ? `${r.threads} threads` : "GPU"}), median of ${jobs[i].repeat} runs (ms): ${ms}`);
    }
  }
} catch (err) {
  console.error(`drive.mjs: ${err.message ?? err}`);
  for (const m of messages) console.error(`  browser ${m}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
