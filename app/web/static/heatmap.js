// Colour the API's grayscale heatmap in the browser, so the opacity slider is a CSS change and not
// a new request. The API also returns a ready-blended overlay_png, but its opacity is fixed.

/** Decode a base64 PNG into an HTMLImageElement. */
export function pngImage(base64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the heatmap PNG could not be decoded"));
    img.src = `data:image/png;base64,${base64}`;
  });
}

/**
 * The jet ramp of app/imaging/render.py: c(x) = clip(1.5 - |4x - k|, 0, 1), k = 3, 2, 1 for R, G, B.
 * Returned as a 256-entry lookup table of [r, g, b].
 */
const JET = Array.from({ length: 256 }, (_, i) => {
  const x = (4 * i) / 255;
  return [3, 2, 1].map((k) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(x - k)))));
});

/** Draw the grayscale heatmap (base64 PNG) into `canvas` in jet colours; resolves when drawn. */
export async function drawHeatmap(canvas, heatmapBase64) {
  const gray = await pngImage(heatmapBase64);
  canvas.width = gray.naturalWidth;
  canvas.height = gray.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(gray, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b] = JET[d[i]];
    d[i] = r;
    d[i + 1] = g;
    d[i + 2] = b;
    d[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
}

/** Longest side, in pixels, of a partial map's canvas (CSS stretches it over the image). */
const PARTIAL_SIDE = 512;

/**
 * Draw a streamed partial map ({height, width, values}: row-major, in [0, 1], at the target
 * layer's resolution) into `canvas` over an image of imageWidth x imageHeight, in jet colours.
 *
 * Upsampled as the server upsamples the final map: bilinear with corners not aligned (a source
 * coordinate s = (x + 0.5) * w / W - 0.5, clamped to the edges), then min-max normalised.
 */
export function drawPartialMap(canvas, map, imageWidth, imageHeight) {
  const scale = Math.min(1, PARTIAL_SIDE / Math.max(imageWidth, imageHeight));
  const W = Math.max(1, Math.round(imageWidth * scale));
  const H = Math.max(1, Math.round(imageHeight * scale));
  const { width: w, height: h, values } = map;
  const axis = (n, size) =>
    Array.from({ length: n }, (_, i) => {
      const s = Math.min(size - 1, Math.max(0, ((i + 0.5) * size) / n - 0.5));
      const lo = Math.floor(s);
      return [lo, Math.min(lo + 1, size - 1), s - lo];
    });
  const xs = axis(W, w);
  const ys = axis(H, h);
  const up = new Float32Array(W * H);
  let low = Infinity;
  let high = -Infinity;
  for (let y = 0; y < H; y++) {
    const [y0, y1, fy] = ys[y];
    for (let x = 0; x < W; x++) {
      const [x0, x1, fx] = xs[x];
      const top = values[y0 * w + x0] * (1 - fx) + values[y0 * w + x1] * fx;
      const bottom = values[y1 * w + x0] * (1 - fx) + values[y1 * w + x1] * fx;
      const v = top * (1 - fy) + bottom * fy;
      up[y * W + x] = v;
      if (v < low) low = v;
      if (v > high) high = v;
    }
  }
  const span = high - low;
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(W, H);
  const d = pixels.data;
  for (let i = 0; i < up.length; i++) {
    const level = span > 0 ? Math.floor(((up[i] - low) / span) * 255 + 0.5) : 0;
    const [r, g, b] = JET[level];
    d[4 * i] = r;
    d[4 * i + 1] = g;
    d[4 * i + 2] = b;
    d[4 * i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
}
