// LandmarkSession for the browser: an exported fan-edge .onnx, its contract, and FAN's crop and decode around
// it, on onnxruntime-web. Mirrors fan_edge/runtime/session.py (LandmarkSession: _check_graph, run_raw,
// run_crops, predict) with the crop of crop.js and the decoding of decode.js.

import * as ort from "onnxruntime-web";

import { outputName, resolveContract } from "./contract.js";
import { checkBoxes, cropMatrix, toNetworkInput, warpImage } from "./crop.js";
import { cropPointsToImage, decodeHeatmaps } from "./decode.js";
import { readOnnxMetadata } from "./onnx-metadata.js";

export { ort };

const now = () => performance.now();
const MAX_FIXED_BATCH = 64; // fan_edge.runtime.session.MAX_FIXED_BATCH

// The execution providers to ask for: "webgpu" only where the browser gives a WebGPU adapter (else "wasm",
// with the reason), "auto" = WebGPU when present, else WASM.
export async function chooseProvider(requested = "auto") {
  if (requested === "wasm") return { provider: "wasm", note: "" };
  if (!["auto", "webgpu"].includes(requested)) throw new Error(`unknown execution provider ${requested}; expected auto, wasm or webgpu`);
  let adapter = null;
  try {
    adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
  } catch {
    adapter = null;
  }
  if (adapter) return { provider: "webgpu", note: "" };
  const why = navigator.gpu ? "the browser offers no WebGPU adapter" : "this browser has no WebGPU (navigator.gpu)";
  return { provider: "wasm", note: `${why}: running on WASM` };
}

export class LandmarkSession {
  // Use LandmarkSession.create(): a session needs an async start.
  constructor(session, contract, contractSource, provider, name) {
    this.session = session;
    this.contract = contract;
    this.contractSource = contractSource;
    this.provider = provider;
    this.name = name;
    this.checkGraph();
  }

  // bytes: the .onnx file (ArrayBuffer or Uint8Array); sidecarText: the ARTIFACT.json text or null.
  // options: {provider: "auto" | "wasm" | "webgpu", threads: number | undefined}.
  static async create(bytes, sidecarText, name = "model.onnx", options = {}) {
    const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    const { contract, source } = resolveContract(readOnnxMetadata(data), sidecarText, name);
    if (options.threads) ort.env.wasm.numThreads = options.threads;
    const chosen = await chooseProvider(options.provider ?? "auto");
    let session;
    let provider = chosen.provider;
    let note = chosen.note;
    try {
      session = await ort.InferenceSession.create(data, { executionProviders: [provider] });
    } catch (err) {
      if (provider === "wasm") throw err;
      note = `WebGPU failed to start (${String(err.message ?? err).split("\n")[0]}): running on WASM`;
      provider = "wasm";
      session = await ort.InferenceSession.create(data, { executionProviders: ["wasm"] });
    }
    const s = new LandmarkSession(session, contract, source, provider, name);
    s.providerNote = note;
    return s;
  }

  // _check_graph: one input of the contract's layout and size, the contract's outputs present with its shapes.
  checkGraph() {
    const c = this.contract;
    const s = this.session;
    if (s.inputNames.length !== 1) throw new Error(`${this.name}: expected one input, the graph has ${s.inputNames.length}`);
    if (s.inputNames[0] !== c.input_name) {
      throw new Error(`${this.name}: the graph's input is ${s.inputNames[0]}, the contract says ${c.input_name}`);
    }
    const meta = (list, name) => (list || []).find((m) => m.name === name);
    const fixed = (d) => (typeof d === "number" && d >= 0 ? d : null);
    const input = meta(s.inputMetadata, c.input_name);
    const shape = input && input.isTensor ? input.shape : [];
    const expected = c.layout === "NCHW" ? [3, c.input_size, c.input_size] : [c.input_size, c.input_size, 3];
    if (shape.length && (shape.length !== 4 || shape.slice(1).some((d, i) => fixed(d) !== null && d !== expected[i]))) {
      throw new Error(`${this.name}: input shape ${JSON.stringify(shape)} does not match the contract (${c.layout}, size ${c.input_size})`);
    }
    const missing = c.output_names.filter((n) => !s.outputNames.includes(n));
    if (missing.length) {
      throw new Error(`${this.name}: the contract names outputs ${missing.join(", ")} that the graph does not have (${s.outputNames.join(", ")})`);
    }
    this.outputTails = {};
    const k = c.num_landmarks;
    if (c.outputs === "heatmaps") this.outputTails[outputName(c, "heatmaps")] = [k, c.heatmap_size, c.heatmap_size];
    else {
      this.outputTails[outputName(c, "landmarks")] = [k, 2];
      this.outputTails[outputName(c, "scores")] = [k];
    }
    const batch = shape.length ? fixed(shape[0]) : null;
    this.fixedBatch = batch;
    if (batch !== null && ((c.batch !== null && batch !== c.batch) || (c.batch === null && batch > MAX_FIXED_BATCH))) {
      throw new Error(`${this.name}: the graph's input has a fixed batch of ${batch}, the contract says ${c.batch === null ? "a dynamic batch" : c.batch}`);
    }
  }

  // _check_outputs: each output of a run against the contract.
  checkOutputs(outputs, n) {
    for (const [name, tail] of Object.entries(this.outputTails)) {
      const got = outputs[name] ? Array.from(outputs[name].dims) : null;
      const want = [n, ...tail];
      if (!got || got.length !== want.length || got.some((d, i) => d !== want[i])) {
        throw new Error(`${this.name}: output ${name} came out ${JSON.stringify(got)} for ${n} crops, the contract says ${JSON.stringify(want)}`);
      }
    }
  }

  // run_raw: network inputs (n crops, already in the contract's layout) to every raw output; a graph with a
  // fixed batch is fed in chunks of it, the last one padded with zeros.
  async runRaw(x, n) {
    const c = this.contract;
    const per = 3 * c.input_size * c.input_size;
    const dims = (b) => (c.layout === "NCHW" ? [b, 3, c.input_size, c.input_size] : [b, c.input_size, c.input_size, 3]);
    const b = this.fixedBatch;
    if (b === null || b === n) {
      return this.session.run({ [c.input_name]: new ort.Tensor("float32", x, dims(n)) });
    }
    const parts = [];
    for (let start = 0; start < n; start += b) {
      const chunk = new Float32Array(b * per);
      chunk.set(x.subarray(start * per, Math.min(n, start + b) * per));
      parts.push(await this.session.run({ [c.input_name]: new ort.Tensor("float32", chunk, dims(b)) }));
    }
    const out = {};
    for (const name of Object.keys(parts[0])) {
      const tail = parts[0][name].dims.slice(1);
      const size = tail.reduce((a, d) => a * d, 1);
      const data = new Float32Array(n * size);
      parts.forEach((p, i) => data.set(p[name].data.subarray(0, Math.min(b, n - i * b) * size), i * b * size));
      out[name] = { data, dims: [n, ...tail] };
    }
    return out;
  }

  // The decoding half of run_crops: raw outputs of n crops to points (crop pixels, flat x, y) and scores.
  decodeOutputs(outputs, n) {
    const c = this.contract;
    this.checkOutputs(outputs, n);
    if (c.outputs === "heatmaps") {
      const hm = outputs[outputName(c, "heatmaps")];
      return decodeHeatmaps(hm.data, Array.from(hm.dims), c.input_size, c.refine);
    }
    const points = Float64Array.from(outputs[outputName(c, "landmarks")].data);
    const scores = Float32Array.from(outputs[outputName(c, "scores")].data);
    return { points, scores };
  }

  // run_crops: points and scores for n network inputs, decoded per the contract.
  async runCrops(x, n) {
    const outputs = await this.runRaw(x, n);
    return { ...this.decodeOutputs(outputs, n), outputs };
  }

  // predict, one face per backend call (the per-face latency is what the page shows): image {data, width,
  // height, channels} RGB(A) uint8; boxes [[x1, y1, x2, y2], ...] image pixels. Returns one
  // {points: [[x, y] x K], scores: [K], box, ms: {crop, run, decode, total}} per box.
  async predict(image, boxes) {
    const c = this.contract;
    checkBoxes(boxes, image.width, image.height);
    const k = c.num_landmarks;
    const faces = [];
    for (const box of boxes) {
      const t0 = now();
      const matrix = cropMatrix(box, c.input_size, c.crop);
      const crop = warpImage(image, matrix, c.input_size);
      const x = toNetworkInput(crop, c.input_size, c.layout, c.value_range);
      const t1 = now();
      const outputs = await this.runRaw(x, 1);
      const t2 = now();
      const result = this.decodeOutputs(outputs, 1);
      const image_points = cropPointsToImage(result.points.subarray(0, 2 * k), matrix);
      const points = [];
      for (let i = 0; i < k; i++) points.push([image_points[2 * i], image_points[2 * i + 1]]);
      const t3 = now();
      faces.push({
        box: box.slice(),
        points,
        scores: Array.from(result.scores.subarray(0, k)),
        ms: { crop: t1 - t0, run: t2 - t1, decode: t3 - t2, total: t3 - t0 },
      });
    }
    return faces;
  }
}
