// Runs the page's crop and decode ports (web/js/crop.js, web/js/decode.js) under Node on inputs written by
// tests/test_web.py, which compares the results with fan_edge.runtime's Python functions.
//
//   node web/test/port-check.mjs CASE.json OUT.json
//
// CASE: {image: {width, height, channels, data: base64 uint8}, boxes: [[x1, y1, x2, y2]...], input_size,
//        crop: {reference_scale, center_shift, window}, layout, value_range,
//        heatmaps: [{dims: [N, K, H, W], data: base64 float32 LE, refine, input_size}...]}
// OUT:  {matrices, inputs: [base64 float32 network input per box], decoded: [{points: base64 float64, scores:
//        base64 float32, image_points: base64 float64 (through matrices[0])}...]}

import { readFileSync, writeFileSync } from "node:fs";

import { cropMatrix, toNetworkInput, warpImage } from "../js/crop.js";
import { cropPointsToImage, decodeHeatmaps } from "../js/decode.js";

const [casePath, outPath] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(casePath, "utf8"));
const bytes = (b64) => new Uint8Array(Buffer.from(b64, "base64"));
const b64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength).toString("base64");
const f32 = (b64text) => {
  const raw = bytes(b64text);
  return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
};

const image = { ...spec.image, data: bytes(spec.image.data) };
const matrices = spec.boxes.map((box) => cropMatrix(box, spec.input_size, spec.crop));
const inputs = matrices.map((m) =>
  b64(toNetworkInput(warpImage(image, m, spec.input_size), spec.input_size, spec.layout, spec.value_range)),
);
const decoded = spec.heatmaps.map((h) => {
  const { points, scores } = decodeHeatmaps(f32(h.data), h.dims, h.input_size, h.refine);
  const k = h.dims[0] * h.dims[1];
  return {
    points: b64(points),
    scores: b64(scores),
    image_points: b64(cropPointsToImage(points.subarray(0, 2 * k), matrices[0])),
  };
});
writeFileSync(outPath, JSON.stringify({ matrices, inputs, decoded }));
