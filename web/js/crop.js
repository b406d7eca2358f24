// FAN's crop in the browser: a line-by-line port of fan_edge/runtime/crop.py (and of the two steps of
// fan_edge/runtime/image.py and session.py around it), so that a page feeds the network exactly what
// LandmarkSession.predict feeds it.
//
// Coordinates are 0-based pixel centres: pixel (0, 0) covers -0.5..0.5, the image spans -0.5..W-0.5.
// numpy computes the sampling grid in float64 and blends in float32; here the grid is in doubles (JS numbers)
// and every float32 operation of the Python code goes through Math.fround, which gives the same bits
// (float32 +, -, *, / done in double and rounded once are correctly rounded).
//
// Images are {data, width, height, channels}: `data` a Uint8Array / Uint8ClampedArray with `channels` values
// per pixel (4 for canvas ImageData, RGBA; only the first 3, RGB, are read), row-major.

const f32 = Math.fround;

// box_center_and_side: centre (x, y) and side, in image pixels, of the crop window of one box.
export function boxCenterAndSide(box, spec) {
  const [x1, y1, x2, y2] = box;
  const w = x2 - x1;
  const h = y2 - y1;
  const center = [(x1 + x2) / 2.0, (y1 + y2) / 2.0 - spec.center_shift * h];
  const side = (spec.window * (w + h)) / spec.reference_scale;
  return [center, side];
}

// crop_matrix: the 2x3 affine [[a, b, c], [d, e, f]] (rows) taking image coordinates to crop coordinates.
export function cropMatrix(box, inputSize, spec) {
  const [center, side] = boxCenterAndSide(box, spec);
  const s = inputSize / side;
  // u = (x - cx + side/2) * N/side - 0.5 : window edges onto crop edges.
  return [
    [s, 0.0, (side / 2.0 - center[0]) * s - 0.5],
    [0.0, s, (side / 2.0 - center[1]) * s - 0.5],
  ];
}

// invert_affine: inverse of a 2x3 affine (numpy inverts the 3x3 with LAPACK; the closed form agrees to an ulp).
export function invertAffine(m) {
  const [[a, b, c], [d, e, f]] = m;
  const det = a * e - b * d;
  const ia = e / det;
  const ib = -b / det;
  const id = -d / det;
  const ie = a / det;
  return [
    [ia, ib, -(ia * c + ib * f)],
    [id, ie, -(id * c + ie * f)],
  ];
}

// apply_affine for a flat [x0, y0, x1, y1, ...] list of points; returns a Float64Array.
export function applyAffine(m, points) {
  const out = new Float64Array(points.length);
  for (let i = 0; i < points.length; i += 2) {
    const x = points[i];
    const y = points[i + 1];
    out[i] = m[0][0] * x + m[0][1] * y + m[0][2];
    out[i + 1] = m[1][0] * x + m[1][1] * y + m[1][2];
  }
  return out;
}

// _halvings: how many times the region is halved before bilinear sampling.
export function halvings(spacing, height, width) {
  let n = 0;
  while (spacing >= 2.0 && Math.min(height, width) >= 2) {
    height = Math.floor(height / 2);
    width = Math.floor(width / 2);
    spacing /= 2.0;
    n += 1;
  }
  return n;
}

// Source bytes (as float32) converted at a time when halving: crop.py's TILE_BYTES.
export const TILE_BYTES = 8 << 20;

// `n` successive _halve of the float32 (h, w, 3) array `cur`: 0.25 * (((img[0::2, 0::2] + img[1::2, 0::2]) +
// img[0::2, 1::2]) + img[1::2, 1::2]) in float32, each level dropping an odd last row or column.
function halveTimes(cur, h, w, n) {
  for (let k = 0; k < n; k++) {
    const nh = Math.floor(h / 2);
    const nw = Math.floor(w / 2);
    const next = new Float32Array(nh * nw * 3);
    for (let y = 0; y < nh; y++) {
      for (let x = 0; x < nw; x++) {
        const p00 = ((2 * y) * w + 2 * x) * 3; // img[0::2, 0::2]
        const p10 = ((2 * y + 1) * w + 2 * x) * 3; // img[1::2, 0::2]
        const p01 = p00 + 3; // img[0::2, 1::2]
        const p11 = p10 + 3; // img[1::2, 1::2]
        const o = (y * nw + x) * 3;
        for (let c = 0; c < 3; c++) {
          next[o + c] = f32(0.25 * f32(f32(f32(cur[p00 + c] + cur[p10 + c]) + cur[p01 + c]) + cur[p11 + c]));
        }
      }
    }
    cur = next;
    h = nh;
    w = nw;
  }
  return cur;
}

// image[y0:y1, x0:x1] (RGB of `image`) as float32, box-averaged `n` times by halves: _box_reduce. Like it, the
// region is converted in strips of whole 2**n-row blocks (each output pixel depends only on its own block, so
// the values are those of halving the whole region), which bounds the memory whatever the photo's size.
export function boxReduce(image, x0, y0, x1, y1, n) {
  const { data, width, channels } = image;
  const block = 2 ** n;
  const outH = Math.floor((y1 - y0) / block);
  const outW = Math.floor((x1 - x0) / block);
  const w = n === 0 ? x1 - x0 : outW * block; // the columns the halvings keep
  const out = new Float32Array(outH * outW * 3);
  const blockRows = Math.max(1, Math.min(outH, Math.floor(TILE_BYTES / (block * block * Math.max(outW, 1) * 3 * 4))));
  const stripRows = n === 0 ? y1 - y0 : blockRows * block;
  const totalRows = n === 0 ? y1 - y0 : outH * block;
  for (let r0 = 0; r0 < totalRows; r0 += stripRows) {
    const rows = Math.min(stripRows, totalRows - r0);
    const strip = new Float32Array(rows * w * 3);
    for (let y = 0; y < rows; y++) {
      let src = ((y0 + r0 + y) * width + x0) * channels;
      let dst = y * w * 3;
      for (let x = 0; x < w; x++, src += channels, dst += 3) {
        strip[dst] = data[src];
        strip[dst + 1] = data[src + 1];
        strip[dst + 2] = data[src + 2];
      }
    }
    if (n === 0) return { data: strip, width: w, height: rows };
    out.set(halveTimes(strip, rows, w, n), (r0 / block) * outW * 3);
  }
  return { data: out, width: outW, height: outH };
}

// warp_image: resample `image` through `matrix` into a (size, size, 3) float32 crop (HWC), bilinear with a zero
// border, the window's region first box-averaged by halves when the window is over twice the crop.
export function warpImage(image, matrix, size) {
  const out = new Float32Array(size * size * 3);
  const inv = invertAffine(matrix);
  const corners = applyAffine(inv, [-0.5, -0.5, size - 0.5, -0.5, -0.5, size - 0.5, size - 0.5, size - 0.5]);
  const cxs = [corners[0], corners[2], corners[4], corners[6]];
  const cys = [corners[1], corners[3], corners[5], corners[7]];
  const spacing = Math.hypot(inv[0][0], inv[1][0]);
  const factor = Number.isFinite(spacing) && spacing >= 2.0 ? 2 ** Math.floor(Math.log2(spacing)) : 1;
  const pad = 2 * factor + 1;
  const x0 = Math.max(Math.floor(Math.min(...cxs)) - pad, 0);
  const y0 = Math.max(Math.floor(Math.min(...cys)) - pad, 0);
  const x1 = Math.min(Math.ceil(Math.max(...cxs)) + pad + 1, image.width);
  const y1 = Math.min(Math.ceil(Math.max(...cys)) + pad + 1, image.height);
  if (x1 - x0 < 1 || y1 - y0 < 1 || !inv.flat().every(Number.isFinite)) return out;
  // crop pixel -> region pixel
  let t = [inv[0].slice(), inv[1].slice()];
  t[0][2] -= x0;
  t[1][2] -= y0;
  const n = halvings(spacing, y1 - y0, x1 - x0);
  const region = boxReduce(image, x0, y0, x1, y1, n);
  for (let k = 0; k < n; k++) {
    t = t.map((row) => row.map((v) => v / 2.0));
    t[0][2] -= 0.25;
    t[1][2] -= 0.25;
  }
  const { width: w, height: h } = region;
  // The zero-padded region of warp_image, (h + 2, w + 2, 3).
  const pw = w + 2;
  const padded = new Float32Array((h + 2) * pw * 3);
  let lo = Infinity;
  let hi = -Infinity;
  for (let y = 0; y < h; y++) {
    padded.set(region.data.subarray(y * w * 3, (y + 1) * w * 3), ((y + 1) * pw + 1) * 3);
  }
  for (let i = 0; i < region.data.length; i++) {
    const v = region.data[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  // float32 blending can overshoot the source range by an ulp; warp_image clips to the documented range.
  const clipLo = Math.min(lo, 0.0);
  const clipHi = Math.max(hi, 0.0);
  const clamp = (v, a, b) => (v < a ? a : v > b ? b : v);
  for (let i = 0; i < size; i++) {
    for (let j = 0; j < size; j++) {
      // xs = to_region[0, 0] * grid[None, :] + to_region[0, 1] * grid[:, None] + to_region[0, 2]
      const xs = t[0][0] * j + t[0][1] * i + t[0][2];
      const ys = t[1][0] * j + t[1][1] * i + t[1][2];
      const xf = Math.floor(xs);
      const yf = Math.floor(ys);
      const ax = f32(xs - xf);
      const ay = f32(ys - yf);
      const xa = clamp(xf + 1, 0, w + 1);
      const xb = clamp(xf + 2, 0, w + 1);
      const ya = clamp(yf + 1, 0, h + 1);
      const yb = clamp(yf + 2, 0, h + 1);
      const pAA = (ya * pw + xa) * 3;
      const pAB = (ya * pw + xb) * 3;
      const pBA = (yb * pw + xa) * 3;
      const pBB = (yb * pw + xb) * 3;
      const oneAx = f32(1 - ax);
      const oneAy = f32(1 - ay);
      const o = (i * size + j) * 3;
      for (let c = 0; c < 3; c++) {
        const top = f32(f32(padded[pAA + c] * oneAx) + f32(padded[pAB + c] * ax));
        const bottom = f32(f32(padded[pBA + c] * oneAx) + f32(padded[pBB + c] * ax));
        out[o + c] = clamp(f32(f32(top * oneAy) + f32(bottom * ay)), clipLo, clipHi);
      }
    }
  }
  return out;
}

// to_network_input (fan_edge/runtime/image.py) for one (S, S, 3) 0..255 crop: float32 pixel / 255 clipped to
// [0, 1], in the contract's layout. The Python runtime feeds FAN's [0, 1]; a contract with another value_range
// is mapped linearly onto it (lo + (hi - lo) * pixel / 255), which is the same bits for [0, 1].
export function toNetworkInput(crop, size, layout, valueRange, out = null, offset = 0) {
  const plane = size * size;
  const x = out ?? new Float32Array(3 * plane);
  const [lo, hi] = valueRange;
  const unit = lo === 0 && hi === 1;
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      let v = f32(crop[p * 3 + c] / 255);
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      if (!unit) v = f32(lo + (hi - lo) * v);
      if (layout === "NCHW") x[offset + c * plane + p] = v;
      else x[offset + p * 3 + c] = v;
    }
  }
  return x;
}

// check_boxes (fan_edge/runtime/session.py): each box finite, x2 > x1, y2 > y1, and overlapping the image.
export function checkBoxes(boxes, width, height) {
  boxes.forEach((b, i) => {
    if (!Array.isArray(b) || b.length !== 4) throw new Error(`box ${i} must be x1, y1, x2, y2`);
    if (!b.every(Number.isFinite)) throw new Error(`box ${i} is not finite: ${JSON.stringify(b)}`);
    if (b[2] <= b[0] || b[3] <= b[1]) throw new Error(`box ${i} ${JSON.stringify(b)} is degenerate: x1, y1, x2, y2 needs x2 > x1 and y2 > y1`);
    if (b[2] <= -0.5 || b[3] <= -0.5 || b[0] >= width - 0.5 || b[1] >= height - 0.5) {
      throw new Error(`box ${i} ${JSON.stringify(b)} lies outside the ${width}x${height} image`);
    }
  });
  return boxes;
}
