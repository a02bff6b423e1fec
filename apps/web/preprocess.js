// The one preprocessing rule, shared with `aperture predict` / OnnxClassifier (load_image in
// aperture_zoo/images.py): decoded pixels -> 8-bit RGB -> resized to 32x32 with Pillow's
// BILINEAR filter -> float32 N x 3 x 32 x 32 in [0, 1] (value / 255), the ONNX input
// `pixel_values`. Normalisation is inside the graph.
//
// The resize below is Pillow's ImagingResample for 8-bit images, ported operation by operation:
// a separable triangle filter whose support widens with the downscale factor (so shrinking
// averages, it does not skip pixels), coefficients computed in double precision, rounded to
// 22-bit fixed point, horizontal pass first (only when the width changes), then vertical (only
// when the height changes), each rounding to 8 bits. Every step is integer or IEEE double
// arithmetic, so the result is bit-identical to Pillow's, not merely close (the tests check it).
//
// Pure functions, no DOM: the page imports it, and node can too.

const PRECISION_BITS = 32 - 8 - 2;

function bilinearFilter(x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box (0, inSize).
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = 0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let ww = 0.0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = bilinearFilter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS))
                                 : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function clip8(ss) {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Resize packed 8-bit RGB (width * height * 3 bytes) to outW x outH exactly as Pillow's
 * `Image.resize((outW, outH), Image.Resampling.BILINEAR)` does for an RGB image.
 */
export function resizeBilinearRGB(rgb, width, height, outW, outH) {
  if (width === outW && height === outH) return Uint8Array.from(rgb);
  const half = 1 << (PRECISION_BITS - 1);
  const vert = coefficients(height, outH);
  let src = rgb;
  let srcW = width;
  let rowOffset = 0;
  if (width !== outW) {
    // Only the rows the vertical pass reads are resampled horizontally (as Pillow does).
    const first = vert.bounds[0];
    const last = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
    const rows = last - first;
    const { ksize, kk, bounds } = coefficients(width, outW);
    const tmp = new Uint8Array(outW * rows * 3);
    for (let yy = 0; yy < rows; yy++) {
      const inRow = (yy + first) * width * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        const kOff = xx * ksize;
        let s0 = half, s1 = half, s2 = half;
        for (let x = 0; x < xmax; x++) {
          const c = kk[kOff + x];
          const p = inRow + (x + xmin) * 3;
          s0 += rgb[p] * c;
          s1 += rgb[p + 1] * c;
          s2 += rgb[p + 2] * c;
        }
        const o = (yy * outW + xx) * 3;
        tmp[o] = clip8(s0);
        tmp[o + 1] = clip8(s1);
        tmp[o + 2] = clip8(s2);
      }
    }
    src = tmp;
    srcW = outW;
    rowOffset = first;
  }
  if (height === outH) return src;
  const out = new Uint8Array(outW * outH * 3);
  const { ksize, kk, bounds } = vert;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - rowOffset;
    const ymax = bounds[yy * 2 + 1];
    const kOff = yy * ksize;
    for (let xx = 0; xx < outW; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < ymax; y++) {
        const c = kk[kOff + y];
        const p = ((y + ymin) * srcW + xx) * 3;
        s0 += src[p] * c;
        s1 += src[p + 1] * c;
        s2 += src[p + 2] * c;
      }
      const o = (yy * outW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** Packed RGB from canvas RGBA (alpha dropped, as Pillow's convert("RGB") drops it). */
export function rgbaToRgb(rgba) {
  const n = rgba.length / 4;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    rgb[i * 3] = rgba[i * 4];
    rgb[i * 3 + 1] = rgba[i * 4 + 1];
    rgb[i * 3 + 2] = rgba[i * 4 + 2];
  }
  return rgb;
}

/** True when any pixel is not fully opaque (the canvas cannot give back colour under alpha exactly). */
export function hasTranslucency(rgba) {
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] !== 255) return true;
  return false;
}

/** Packed 32x32 RGB -> Float32Array 1 x 3 x H x W with values / 255 (the `pixel_values` contract). */
export function toPixelValues(rgb, width, height) {
  const plane = width * height;
  const x = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    x[i] = rgb[i * 3] / 255;
    x[plane + i] = rgb[i * 3 + 1] / 255;
    x[2 * plane + i] = rgb[i * 3 + 2] / 255;
  }
  return x;
}

/** Numerically stable softmax in float64 (the page's probabilities; Python's is float32). */
export function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  const e = Array.from(logits, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}
