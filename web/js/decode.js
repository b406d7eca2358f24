// From heatmaps to points in the browser: a port of fan_edge/runtime/decode.py, function by function.
//
// Heatmap cell j covers crop pixels stride*j .. stride*j + stride - 1, so its centre is at crop coordinate
// stride*j + (stride - 1)/2 (0-based pixel centres). Heatmaps are (N, K, H, W) float32 in a flat Float32Array
// (what onnxruntime-web returns); points are flat Float64Arrays of (x, y) pairs, scores Float32Arrays.

import { applyAffine, invertAffine } from "./crop.js";

const EPS = 1e-10;
const EPS_F32 = Math.fround(EPS); // numpy 2 compares a float32 array with a Python float in float32 (NEP 50)

// heatmap_to_crop: heatmap cell coordinates to crop pixel coordinates (in place).
export function heatmapToCrop(points, stride) {
  for (let i = 0; i < points.length; i++) points[i] = points[i] * stride + (stride - 1) / 2.0;
  return points;
}

// crop_to_heatmap: crop pixel coordinates to heatmap cell coordinates.
export function cropToHeatmap(points, stride) {
  return Float64Array.from(points, (p) => (p - (stride - 1) / 2.0) / stride);
}

// _toward_higher: +1, -1 or 0, the direction of the higher neighbour.
function towardHigher(before, after) {
  return (after > before ? 1 : 0) - (after < before ? 1 : 0);
}

// The flat index of the maximum of hm[start, start + len) as numpy's argmax gives it: the first maximum, or the
// first NaN when there is one.
function argmax(hm, start, len) {
  let best = start;
  let value = hm[start];
  if (Number.isNaN(value)) return 0;
  for (let i = 1; i < len; i++) {
    const v = hm[start + i];
    if (Number.isNaN(v)) return i;
    if (v > value) {
      value = v;
      best = start + i;
    }
  }
  return best - start;
}

// Each heatmap's peak and score, the peak moved on each axis by `step(centre, before, after)` of its value and its two
// neighbours on that axis (no move on the border). Returns {cells: Float64Array (count * 2) of (x, y) cell
// coordinates, scores: Float32Array (count)}.
function refinedPeaks(hm, count, h, w, step) {
  const cells = new Float64Array(count * 2);
  const scores = new Float32Array(count);
  const plane = h * w;
  for (let r = 0; r < count; r++) {
    const base = r * plane;
    const idx = argmax(hm, base, plane);
    scores[r] = hm[base + idx];
    const py = Math.floor(idx / w);
    const px = idx - py * w;
    const at = (x, y) => hm[base + y * w + x];
    const centre = at(px, py);
    const dx = px > 0 && px < w - 1 ? step(centre, at(px - 1, py), at(px + 1, py)) : 0.0;
    const dy = py > 0 && py < h - 1 ? step(centre, at(px, py - 1), at(px, py + 1)) : 0.0;
    cells[2 * r] = px + dx;
    cells[2 * r + 1] = py + dy;
  }
  return { cells, scores };
}

// The `step` of argmax_gaussian: the vertex of the parabola through the logs of a peak and its two neighbours,
// bounded to half a cell; no step where the neighbourhood is flat or not positive.
function gaussianStep(centre, before, after) {
  const lc = Math.log(Math.max(centre, EPS));
  const lb = Math.log(Math.max(before, EPS));
  const la = Math.log(Math.max(after, EPS));
  const curvature = lb - 2.0 * lc + la;
  const valid = centre > EPS_F32 && curvature < -1e-9;
  const delta = valid ? (0.5 * (lb - la)) / curvature : 0.0;
  return Math.min(Math.max(delta, -0.5), 0.5);
}

// argmax_quarter: each heatmap's peak moved a quarter cell toward the higher neighbour (FAN's refinement).
export function argmaxQuarter(hm, count, h, w) {
  return refinedPeaks(hm, count, h, w, (centre, before, after) => 0.25 * towardHigher(before, after));
}

// argmax_gaussian: each heatmap's peak refined by a Gaussian (log-parabola) fit on each axis.
export function argmaxGaussian(hm, count, h, w) {
  return refinedPeaks(hm, count, h, w, gaussianStep);
}

export const REFINEMENTS = { quarter: argmaxQuarter, gaussian: argmaxGaussian };

// decode_heatmaps: (N, K, H, W) heatmaps (dims = [N, K, H, W]) to (N, K, 2) crop-pixel points and (N, K) scores.
export function decodeHeatmaps(heatmaps, dims, inputSize, refine = "quarter") {
  const fn = REFINEMENTS[refine];
  if (!fn) throw new Error(`unknown refinement ${JSON.stringify(refine)}; expected one of ${Object.keys(REFINEMENTS).join(", ")}`);
  const [n, k, h, w] = dims;
  const stride = inputSize / w;
  const { cells, scores } = fn(heatmaps, n * k, h, w);
  return { points: heatmapToCrop(cells, stride), scores };
}

// crop_points_to_image: one face's crop-pixel points (flat x, y pairs) back to image pixels through its crop matrix.
export function cropPointsToImage(points, matrix) {
  return applyAffine(invertAffine(matrix), points);
}
