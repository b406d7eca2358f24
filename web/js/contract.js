// The preprocessing contract of an exported artifact, read and checked in the browser.
//
// A port of fan_edge/runtime/contract.py (ModelContract.from_json / from_dict / __post_init__) for the fields
// that change what a session computes (RESULT_FIELDS), and of read_contract in fan_edge/runtime/session.py:
// the contract inside the artifact (ONNX metadata_props "fan_edge.contract") and the sidecar ARTIFACT.json
// must agree on those fields where both exist; either alone serves. Any problem is a one-line Error.

import { METADATA_KEY } from "./onnx-metadata.js";

export const SCHEMA_VERSION = 1;
export const MAX_JSON_BYTES = 1 << 20;
export const MAX_INPUT_SIZE = 4096;
export const MAX_LANDMARKS = 10000;
export const CROP_SIDE_RATIO = [0.05, 20.0];
export const MAX_CENTER_SHIFT = 1.0;
export const OUTPUT_ROLES = { heatmaps: ["heatmaps"], landmarks: ["landmarks", "scores"] };
export const LAYOUTS = ["NCHW", "NHWC"];
export const CHANNEL_ORDERS = ["RGB"];
export const REFINEMENTS = ["quarter", "gaussian"];
export const PRECISIONS = ["fp32", "fp16", "int8"];
export const RESULT_FIELDS = [
  "input_size", "heatmap_size", "outputs", "refine", "num_landmarks", "crop", "layout", "channel_order",
  "value_range", "input_name", "output_names", "batch", "mirror_pairs",
];
// fan_edge.runtime.scheme.MIRROR_PAIRS is only used for flipping; the page never flips, so a contract without
// mirror_pairs is compared as written.

const DEFAULTS = {
  outputs: "heatmaps",
  refine: "quarter",
  num_landmarks: 68,
  crop: { reference_scale: 195.0, center_shift: 0.12, window: 200.0 },
  layout: "NCHW",
  channel_order: "RGB",
  value_range: [0.0, 1.0],
  input_name: "input",
  batch: null,
  precision: "fp32",
  schema_version: SCHEMA_VERSION,
};

function short(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length <= 60 ? text : text.slice(0, 57) + "...";
}

function fail(message) {
  throw new Error(`contract ${message}`);
}

const isInt = (v) => typeof v === "number" && Number.isInteger(v);
const isFiniteNumber = (v) => typeof v === "number" && Number.isFinite(v);

function checkInt(name, value, lo, hi) {
  if (!isInt(value)) fail(`field ${name} must be an integer, got ${short(value)}`);
  if (value < lo || value > hi) fail(`field ${name} must be in ${lo}..${hi}, got ${short(value)}`);
  return value;
}

function checkStr(name, value, choices = null) {
  if (typeof value !== "string") fail(`field ${name} must be a string, got ${short(value)}`);
  if (value.length > 1000) fail(`field ${name} is longer than 1000 characters`);
  if (choices && !choices.includes(value)) fail(`field ${name} must be one of ${choices.join(", ")}, got ${short(value)}`);
  return value;
}

// CropSpec.from_dict + __post_init__ and contract._check_crop (fan_edge/runtime/crop.py, contract.py).
function checkCrop(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) fail(`field crop must be a mapping, got ${short(data)}`);
  const unknown = Object.keys(data).filter((k) => !["reference_scale", "center_shift", "window"].includes(k));
  if (unknown.length) fail(`field crop: unknown crop keys: ${unknown.sort().join(", ")}`);
  const crop = { ...DEFAULTS.crop, ...data };
  for (const k of ["reference_scale", "center_shift", "window"]) {
    if (!isFiniteNumber(crop[k])) fail(`field crop: crop ${k} must be a finite number, got ${short(crop[k])}`);
  }
  if (crop.reference_scale <= 0 || crop.window <= 0) fail("field crop needs reference_scale and window positive");
  const ratio = crop.window / crop.reference_scale;
  if (ratio < CROP_SIDE_RATIO[0] || ratio > CROP_SIDE_RATIO[1]) {
    fail(`field crop: window / reference_scale is ${ratio.toPrecision(3)}, outside ${CROP_SIDE_RATIO[0]}..${CROP_SIDE_RATIO[1]}`);
  }
  if (Math.abs(crop.center_shift) > MAX_CENTER_SHIFT) {
    fail(`field crop: center_shift ${crop.center_shift} is more than ${MAX_CENTER_SHIFT} box heights`);
  }
  return crop;
}

// ModelContract.from_dict + __post_init__: a plain object with every result field filled in and checked.
export function contractFromObject(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) fail(`must be a JSON object, got ${short(data)}`);
  const version = data.schema_version ?? SCHEMA_VERSION;
  if (isInt(version) && version > SCHEMA_VERSION) {
    fail(`schema_version ${version} is newer than this page understands (${SCHEMA_VERSION})`);
  }
  for (const required of ["input_size", "heatmap_size"]) {
    if (!(required in data)) fail(`has no ${required}`);
  }
  const c = { ...DEFAULTS, ...data };
  checkInt("schema_version", c.schema_version, 1, SCHEMA_VERSION);
  checkInt("input_size", c.input_size, 1, MAX_INPUT_SIZE);
  checkInt("heatmap_size", c.heatmap_size, 1, c.input_size);
  checkInt("num_landmarks", c.num_landmarks, 1, MAX_LANDMARKS);
  checkStr("outputs", c.outputs, Object.keys(OUTPUT_ROLES));
  checkStr("refine", c.refine, REFINEMENTS);
  checkStr("layout", c.layout, LAYOUTS);
  checkStr("channel_order", c.channel_order, CHANNEL_ORDERS);
  checkStr("precision", c.precision, PRECISIONS);
  checkStr("input_name", c.input_name);
  c.crop = checkCrop(c.crop);
  const vr = c.value_range;
  if (!Array.isArray(vr) || vr.length !== 2 || !vr.every(isFiniteNumber) || !(vr[0] < vr[1])) {
    fail(`field value_range must be two finite increasing numbers, got ${short(vr)}`);
  }
  const roles = OUTPUT_ROLES[c.outputs];
  if (!("output_names" in data)) c.output_names = roles.slice();
  if (!Array.isArray(c.output_names) || c.output_names.length !== roles.length) {
    fail(`field output_names must list ${roles.length} names (${roles.join(", ")}) for ${c.outputs} outputs`);
  }
  c.output_names.forEach((n) => checkStr("output_names", n));
  if (new Set(c.output_names).size !== c.output_names.length) fail(`field output_names repeats a name: ${short(c.output_names)}`);
  if (c.batch !== null) checkInt("batch", c.batch, 1, 1 << 16);
  if ("heatmap_stride" in data) {
    const stride = data.heatmap_stride;
    if (!isFiniteNumber(stride) || !(Math.abs(stride - c.input_size / c.heatmap_size) <= 1e-6)) {
      fail(`heatmap_stride ${short(stride)} disagrees with input_size/heatmap_size (${c.input_size / c.heatmap_size})`);
    }
  }
  c.heatmap_stride = c.input_size / c.heatmap_size; // ModelContract.heatmap_stride
  return c;
}

// ModelContract.from_json: bounded, standard JSON only (JSON.parse already refuses NaN and Infinity).
export function contractFromJson(text) {
  if (typeof text !== "string") fail(`must be JSON text, got ${typeof text}`);
  if (text.length > MAX_JSON_BYTES) fail(`is ${text.length} characters, more than ${MAX_JSON_BYTES}`);
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    fail(`is not valid JSON (${String(err.message).slice(0, 120)})`);
  }
  return contractFromObject(data);
}

// ModelContract.output_name: the graph output name of a role.
export function outputName(contract, role) {
  const roles = OUTPUT_ROLES[contract.outputs];
  const i = roles.indexOf(role);
  if (i < 0) fail(`of a ${contract.outputs} artifact has no ${role} output`);
  return contract.output_names[i];
}

const canonical = (v) => JSON.stringify(v, (k, x) => (x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x));

// ModelContract.result_differences.
export function resultDifferences(a, b) {
  return RESULT_FIELDS.filter((f) => canonical(a[f] ?? null) !== canonical(b[f] ?? null));
}

// read_contract (fan_edge/runtime/session.py): the embedded contract (metadata_props of the .onnx bytes) and
// the sidecar text (null when there is none). Returns {contract, source}; the embedded one is preferred.
export function resolveContract(metadata, sidecarText, name = "model.onnx") {
  const embeddedText = metadata[METADATA_KEY];
  let embedded = null;
  let sidecar = null;
  if (embeddedText !== undefined) {
    try {
      embedded = contractFromJson(embeddedText);
    } catch (err) {
      throw new Error(`${name}: ${err.message}`);
    }
  }
  if (sidecarText !== null && sidecarText !== undefined) {
    try {
      sidecar = contractFromJson(sidecarText);
    } catch (err) {
      throw new Error(`${name}.json: ${err.message}`);
    }
  }
  if (!embedded && !sidecar) {
    throw new Error(`${name}: no fan-edge contract (no ${METADATA_KEY} metadata and no sidecar ${name}.json); was it exported by fan-export?`);
  }
  if (embedded && sidecar) {
    const differ = resultDifferences(sidecar, embedded);
    if (differ.length) {
      const f = differ[0];
      throw new Error(
        `${name}: its sidecar ${name}.json disagrees with the contract inside the artifact on ${differ.join(", ")} ` +
          `(${f}: sidecar ${short(sidecar[f])}, artifact ${short(embedded[f])}); it belongs to another export`,
      );
    }
  }
  return embedded ? { contract: embedded, source: `ONNX metadata_props["${METADATA_KEY}"]` + (sidecar ? " (sidecar agrees)" : "") }
    : { contract: sidecar, source: `sidecar ${name}.json` };
}
