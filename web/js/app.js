// The page: load an artifact, read an image (a file, a URL or the webcam), run the session, draw the points.
//
// URL query (all optional):
//   model=URL        an .onnx to load at start; its sidecar is looked for at URL + ".json" (sidecar=URL overrides)
//   ep=auto|wasm|webgpu  execution provider (auto: WebGPU where the browser has an adapter, else WASM)
//   threads=N        WASM threads (needs a cross-origin isolated page: web/serve.py sends the headers)
//   image=URL        a photo to run on once the model is loaded
//   box=x1,y1,x2,y2[;x1,y1,x2,y2...]  face boxes in image pixels (0-based pixel centres); default: central square
//   repeat=N         run each face N more times after a warm-up run and report median latencies
//
// For automation, window.fanEdge exposes {ready, loadModelUrl, runUrl, runPixels, lastResult, session}, and
// document.body.dataset.state says "loading", "ready", "running", "done" or "error".

import { LandmarkSession, ort } from "./session.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const view = $("view");
const ctx = view.getContext("2d");

let session = null;
let current = null; // {bitmap, pixels: {data, width, height, channels}, ms}
let webcam = null;
const state = (s) => { document.body.dataset.state = s; };

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  if (error) state("error");
}

// ---- boxes ------------------------------------------------------------------------------------------------

function parseBoxes(text) {
  const t = (text || "").trim();
  if (!t) return null;
  return t.split(";").filter((s) => s.trim()).map((s) => {
    const v = s.split(",").map((x) => Number(x.trim()));
    if (v.length !== 4 || !v.every(Number.isFinite)) throw new Error(`a box is x1,y1,x2,y2 (four numbers), got "${s.trim()}"`);
    return v;
  });
}

// No detector: the image's central square, in 0-based pixel-centre coordinates (the image spans -0.5..W-0.5).
export function centralSquare(width, height) {
  const side = Math.min(width, height);
  const x1 = (width - side) / 2 - 0.5;
  const y1 = (height - side) / 2 - 0.5;
  return [x1, y1, x1 + side, y1 + side];
}

function boxesFor(pixels) {
  return parseBoxes($("boxes").value) ?? [centralSquare(pixels.width, pixels.height)];
}

// ---- pixels -----------------------------------------------------------------------------------------------

// RGBA bytes of an image as stored: no colour-space conversion and no EXIF rotation, like fan-edge's
// read_image (cv2.imdecode IMREAD_UNCHANGED); alpha is ignored by the crop, as the Python runtime drops it.
async function pixelsFromBlob(blob) {
  const t0 = performance.now();
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
  const pixels = pixelsFromSource(bitmap, bitmap.width, bitmap.height);
  return { bitmap, pixels, ms: performance.now() - t0 };
}

const scratch = document.createElement("canvas");
function pixelsFromSource(source, width, height) {
  scratch.width = width;
  scratch.height = height;
  const c = scratch.getContext("2d", { willReadFrequently: true });
  c.clearRect(0, 0, width, height);
  c.drawImage(source, 0, 0);
  const data = c.getImageData(0, 0, width, height).data;
  return { data, width, height, channels: 4 };
}

async function fetchBytes(url, what) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${what} ${url}: HTTP ${r.status}`);
  return r;
}

// ---- model ------------------------------------------------------------------------------------------------

function describe(s) {
  const c = s.contract;
  const crop = c.crop;
  return `${c.model || s.name}: ${c.precision}, input ${c.input_size}x${c.input_size} ${c.layout} RGB in ` +
    `[${c.value_range.join(", ")}], outputs ${c.outputs}` + (c.outputs === "heatmaps" ? ` ${c.heatmap_size}x${c.heatmap_size}, refine ${c.refine}` : " (decoded in the graph)") +
    `, crop reference_scale ${crop.reference_scale} window ${crop.window} center_shift ${crop.center_shift}. ` +
    `Contract from ${s.contractSource}. Running on ${s.provider.toUpperCase()}` +
    (s.provider === "wasm" ? ` (${ort.env.wasm.numThreads ?? "default"} threads, cross-origin isolated: ${self.crossOriginIsolated})` : "") +
    (s.providerNote ? `; ${s.providerNote}` : "") + ".";
}

async function loadModel(bytes, sidecarText, name) {
  state("loading");
  status(`Loading ${name}...`);
  const threads = Number(params.get("threads")) || undefined;
  session = await LandmarkSession.create(bytes, sidecarText, name, { provider: $("ep").value, threads });
  window.fanEdge.session = session;
  $("model-info").textContent = describe(session);
  $("run").disabled = $("bench").disabled = false;
  status(`Model loaded. ${current || webcam ? "" : "Pick a photo or start the webcam."}`);
  state("ready");
  return session;
}

async function loadModelUrl(url, sidecarUrl = null) {
  const bytes = new Uint8Array(await (await fetchBytes(url, "model")).arrayBuffer());
  let sidecar = null;
  try {
    const r = await fetch(sidecarUrl || `${url}.json`);
    if (r.ok) sidecar = await r.text();
  } catch {
    sidecar = null; // no sidecar: the contract inside the artifact serves alone
  }
  const name = decodeURIComponent(new URL(url, location.href).pathname.split("/").pop() || "model.onnx");
  return loadModel(bytes, sidecar, name);
}

// ---- running and drawing ----------------------------------------------------------------------------------

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// Run every box on pixels; repeat > 0 adds that many timed runs after the first (warm-up) one and reports
// medians. Returns {faces: [{box, points, scores, ms, samples}], provider, contractSource}.
async function runPixels(pixels, boxes, repeat = 0) {
  if (!session) throw new Error("no model loaded");
  let faces = await session.predict(pixels, boxes);
  if (repeat > 0) {
    const samples = faces.map(() => []);
    for (let r = 0; r < repeat; r++) {
      const again = await session.predict(pixels, boxes);
      again.forEach((f, i) => samples[i].push(f.ms));
      faces = again.map((f, i) => ({ ...f, samples: samples[i] }));
    }
    faces = faces.map((f) => ({
      ...f,
      ms: Object.fromEntries(Object.keys(f.ms).map((k) => [k, median(f.samples.map((s) => s[k]))])),
    }));
  }
  return { faces, provider: session.provider, contractSource: session.contractSource, threads: ort.env.wasm.numThreads ?? null,
    crossOriginIsolated: self.crossOriginIsolated, userAgent: navigator.userAgent };
}

function draw(source, width, height, faces) {
  view.width = width;
  view.height = height;
  ctx.drawImage(source, 0, 0);
  const r = Math.max(1.5, Math.min(width, height) / 250);
  ctx.lineWidth = Math.max(1, r / 2);
  for (const f of faces) {
    const [x1, y1, x2, y2] = f.box;
    ctx.strokeStyle = "#0a0";
    ctx.strokeRect(x1 + 0.5, y1 + 0.5, x2 - x1, y2 - y1); // pixel centres: image x maps to canvas x + 0.5
    ctx.fillStyle = "#f30";
    for (const [x, y] of f.points) {
      ctx.beginPath();
      ctx.arc(x + 0.5, y + 0.5, r, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

function showTiming(faces, repeat) {
  const body = $("timing").querySelector("tbody");
  body.replaceChildren();
  faces.forEach((f, i) => {
    const tr = document.createElement("tr");
    const cells = [i, f.box.map((v) => v.toFixed(1)).join(", "), f.ms.crop, f.ms.run, f.ms.decode, f.ms.total];
    tr.replaceChildren(...cells.map((v) => {
      const td = document.createElement("td");
      td.textContent = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : String(v);
      return td;
    }));
    body.append(tr);
  });
  $("timing").hidden = faces.length === 0;
  $("timing").querySelector("th:nth-child(4)").textContent = repeat ? `model run ms (median of ${repeat})` : "model run ms";
}

async function runCurrent(repeat = 0) {
  if (!current) throw new Error("no image: pick a photo or start the webcam");
  state("running");
  const boxes = boxesFor(current.pixels);
  const result = await runPixels(current.pixels, boxes, repeat);
  result.image = { width: current.pixels.width, height: current.pixels.height, read_ms: current.ms };
  draw(current.bitmap, current.pixels.width, current.pixels.height, result.faces);
  showTiming(result.faces, repeat);
  const usedDefault = !parseBoxes($("boxes").value);
  status(`${result.faces.length} face(s) on ${result.provider.toUpperCase()}; image read ${current.ms.toFixed(1)} ms` +
    (usedDefault ? ". No box given: used the image's central square." : "."));
  window.fanEdge.lastResult = result;
  state("done");
  return result;
}

async function runUrl(url, boxes = null, repeat = 0) {
  const blob = await (await fetchBytes(url, "image")).blob();
  current = await pixelsFromBlob(blob);
  $("boxes").value = boxes ? boxes.map((b) => b.join(",")).join("; ") : "";
  return runCurrent(repeat);
}

// ---- webcam -----------------------------------------------------------------------------------------------

async function toggleWebcam() {
  if (webcam) {
    webcam.stop = true;
    webcam.stream.getTracks().forEach((t) => t.stop());
    webcam = null;
    $("webcam").textContent = "Start webcam";
    return;
  }
  if (!session) throw new Error("load a model first");
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  const video = document.createElement("video");
  video.srcObject = stream;
  video.muted = true;
  video.playsInline = true;
  await video.play();
  webcam = { stream, video, stop: false };
  $("webcam").textContent = "Stop webcam";
  const loop = async () => {
    if (!webcam || webcam.stop) return;
    try {
      const t0 = performance.now();
      const pixels = pixelsFromSource(video, video.videoWidth, video.videoHeight);
      const readMs = performance.now() - t0;
      const result = await runPixels(pixels, boxesFor(pixels));
      draw(video, pixels.width, pixels.height, result.faces);
      showTiming(result.faces, 0);
      const total = performance.now() - t0;
      status(`Webcam on ${result.provider.toUpperCase()}: frame read ${readMs.toFixed(1)} ms, frame total ${total.toFixed(1)} ms` +
        (parseBoxes($("boxes").value) ? "." : "; no box given: the frame's central square is the face box."));
      window.fanEdge.lastResult = result;
    } catch (err) {
      status(String(err.message ?? err), true);
    }
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}

// ---- mouse: draw a box ------------------------------------------------------------------------------------

let dragFrom = null;
function imagePoint(ev) {
  const rect = view.getBoundingClientRect();
  // canvas pixel u (0 at the left edge) is image coordinate u - 0.5
  return [((ev.clientX - rect.left) * view.width) / rect.width - 0.5, ((ev.clientY - rect.top) * view.height) / rect.height - 0.5];
}
view.addEventListener("mousedown", (ev) => { dragFrom = imagePoint(ev); });
view.addEventListener("mouseup", (ev) => {
  if (!dragFrom) return;
  const [ax, ay] = dragFrom;
  const [bx, by] = imagePoint(ev);
  dragFrom = null;
  if (Math.abs(bx - ax) < 4 || Math.abs(by - ay) < 4) return;
  $("boxes").value = [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)].map((v) => v.toFixed(1)).join(",");
  if (current && !webcam) guarded(() => runCurrent());
});

// ---- wiring -----------------------------------------------------------------------------------------------

async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    status(String(err.message ?? err), true);
    throw err;
  }
}

$("model-file").addEventListener("change", () => guarded(async () => {
  const files = [...$("model-file").files];
  const onnx = files.find((f) => !f.name.endsWith(".json"));
  if (!onnx) throw new Error("pick the .onnx file (its .onnx.json sidecar may be picked with it)");
  const side = files.find((f) => f.name === `${onnx.name}.json`) || files.find((f) => f.name.endsWith(".json"));
  await loadModel(new Uint8Array(await onnx.arrayBuffer()), side ? await side.text() : null, onnx.name);
  if (current) await runCurrent();
}).catch(() => {}));

$("image-file").addEventListener("change", () => guarded(async () => {
  const file = $("image-file").files[0];
  if (!file) return;
  current = await pixelsFromBlob(file);
  $("boxes").value = "";
  if (session) await runCurrent();
  else {
    draw(current.bitmap, current.pixels.width, current.pixels.height, []);
    status("Image loaded; now pick a model.");
  }
}).catch(() => {}));

$("run").addEventListener("click", () => guarded(() => runCurrent()).catch(() => {}));
$("bench").addEventListener("click", () => guarded(() => runCurrent(20)).catch(() => {}));
$("webcam").addEventListener("click", () => guarded(toggleWebcam).catch(() => {}));

window.fanEdge = {
  loadModelUrl,
  runUrl,
  runPixels,
  lastResult: null,
  session: null,
};

async function start() {
  if (["auto", "wasm", "webgpu"].includes(params.get("ep"))) $("ep").value = params.get("ep");
  if (params.get("box")) $("boxes").value = params.get("box");
  const model = params.get("model");
  if (!model) {
    status("Pick an exported .onnx (fan-export --target onnx), or open this page with ?model=URL.");
    state("ready");
    return;
  }
  await loadModelUrl(model, params.get("sidecar"));
  const image = params.get("image");
  if (image) await runUrl(image, parseBoxes(params.get("box")), Number(params.get("repeat")) || 0);
}

window.fanEdge.ready = guarded(start);
window.fanEdge.ready.catch(() => {});
