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
 * The jet ramp of app/service/render.py: c(x) = clip(1.5 - |4x - k|, 0, 1), k = 3, 2, 1 for R, G, B.
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
