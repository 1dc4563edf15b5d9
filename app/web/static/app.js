// The demo page's behaviour: wires the form to the API client in api.js and draws the results.
// Everything it knows about the service comes from the public /v1 API.

import { ApiError, createApi, describeError } from "./api.js";
import { drawHeatmap, drawPartialMap } from "./heatmap.js";

const $ = (id) => document.getElementById(id);
const METHOD_NAMES = { scorecam: "Score-CAM", gradcam: "Grad-CAM", "gradcam++": "Grad-CAM++", "recipro-cam": "Recipro-CAM" };

const state = {
  file: null, // the chosen File
  imageUrl: null, // an object URL of it, shared by the preview and every overlay
  models: [],
  labels: [], // class names of the selected model ([] until known)
  running: null, // AbortController of the explanation in flight
};

function api() {
  const apiKey = $("api-key").value.trim();
  return createApi({ apiKey });
}

function showError(err) {
  const box = $("error");
  box.textContent = describeError(err);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---- models, layers and labels -------------------------------------------------------------

async function loadModels() {
  try {
    state.models = await api().models();
  } catch (err) {
    showError(err);
    return;
  }
  const select = $("model");
  select.replaceChildren(
    ...state.models.map((m) => new Option(m.name, m.name, m.default, m.default)),
  );
  await modelChanged();
}

async function modelChanged() {
  const model = currentModel();
  if (!model) return;
  fillLayers(model);
  state.labels = [];
  try {
    state.labels = (await api().labels(model.name)) || [];
  } catch (err) {
    showError(err);
  }
  fillLabels(state.labels.map((label, index) => ({ class_index: index, label })));
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value);
}

/** The layers the chosen method can explain: Recipro-CAM only those with a head
 * (`recipro_layers` of GET /v1/models), the other methods every layer. Keeps the choice when
 * it is still offered. */
function fillLayers(model) {
  const layer = $("layer");
  const kept = layer.value;
  const recipro = $("method").value === "recipro-cam";
  const names = (recipro ? model.recipro_layers : model.layers) || [];
  const options = names.map((name) => new Option(name, name));
  if (!recipro || names.includes(model.target_layer)) {
    options.unshift(new Option(`model default (${model.target_layer})`, ""));
  } else if (!names.length) {
    options.push(Object.assign(new Option("no layer of this model supports Recipro-CAM", ""), { disabled: true }));
  }
  layer.replaceChildren(...options);
  if (options.some((o) => o.value === kept && !o.disabled)) layer.value = kept;
}

/** Fill the class picker; without a label list, the latest predictions are the suggestions. */
function fillLabels(entries) {
  $("labels").replaceChildren(...entries.map((e) => new Option(`${e.class_index}: ${e.label}`)));
}

/** "281", "281: tabby, tabby cat" or an exact label -> class index, or null. */
function parseClass(text) {
  const match = /^\s*(\d+)\s*(:|$)/.exec(text);
  if (match) return Number(match[1]);
  const index = state.labels.findIndex((label) => label.toLowerCase() === text.trim().toLowerCase());
  return index >= 0 ? index : null;
}

// ---- choosing an image ---------------------------------------------------------------------

function chooseFile(file) {
  if (!file) return;
  clearError();
  // A new photo: what was shown (or is still running) for the previous one goes.
  state.running?.abort();
  state.running = null;
  clearResults();
  clearLive();
  resetProgress();
  state.file = file;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(file);
  $("preview").src = state.imageUrl;
  $("preview").hidden = false;
  $("drop-hint").textContent = file.name;
  $("explain").disabled = false;
  if (!state.labels.length) suggestClasses(file);
}

/** Without a label list, ask /v1/predict for the likely classes so the class picker has choices. */
async function suggestClasses(file) {
  try {
    const result = await api().predict(file, { model: $("model").value, topK: 10 });
    if (!state.labels.length && file === state.file) fillLabels(result.predictions);
  } catch {
    // only suggestions: the Explain button reports errors
  }
}

/** Overlays fit their column and the screen in the photo's own shape (style.css, .stack). */
function photoLoaded() {
  const { naturalWidth: w, naturalHeight: h } = $("preview");
  if (w && h) document.documentElement.style.setProperty("--photo-ratio", String(w / h));
}

function setupDrop() {
  const drop = $("drop");
  $("preview").addEventListener("load", photoLoaded);
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    chooseFile(e.dataTransfer.files[0]);
  });
}

// ---- explaining ----------------------------------------------------------------------------

function options() {
  const byClass = document.querySelector('input[name="target"]:checked').value === "class";
  const opts = {
    model: $("model").value,
    method: $("method").value,
    layer: $("layer").value || undefined,
    maxChannels: $("max-channels").value || undefined,
  };
  if (byClass) {
    const index = parseClass($("class").value);
    if (index === null) throw new ApiError(400, "invalid_class", "Choose a class from the list, or type its number.");
    opts.classes = [index];
  } else {
    opts.topK = Number($("top-k").value) || 1;
  }
  return opts;
}

/** Hidden and empty: before the first run, on a new photo, after an error. */
function resetProgress() {
  $("progress").hidden = true;
  $("progress-bar").value = 0;
  $("progress-text").textContent = "";
}

function setProgress(done, total) {
  $("progress").hidden = false;
  $("progress-bar").max = total || 1;
  $("progress-bar").value = done;
  $("progress-text").textContent = total ? `${done} / ${total} masks` : "starting…";
}

// ---- the map so far, while Score-CAM streams ----------------------------------------------

/** Draw each class's partial map over the image; the heatmap sharpens as the forwards go. */
function showPartialMaps(maps, done, total) {
  const live = $("live");
  const preview = $("preview");
  for (const map of maps) {
    let figure = live.querySelector(`figure[data-class-index="${map.class_index}"]`);
    if (!figure) {
      figure = Object.assign(document.createElement("figure"), { className: "live-map" });
      figure.dataset.classIndex = map.class_index;
      const stack = Object.assign(document.createElement("div"), { className: "stack" });
      const img = Object.assign(document.createElement("img"), { src: state.imageUrl, alt: "the uploaded image" });
      const canvas = document.createElement("canvas");
      stack.append(img, canvas);
      figure.append(stack, document.createElement("figcaption"));
      live.append(figure);
    }
    const label = state.labels[map.class_index] || `class ${map.class_index}`;
    const canvas = figure.querySelector("canvas");
    canvas.setAttribute("aria-label", `Score-CAM heatmap of ${label} so far`);
    drawPartialMap(canvas, map, preview.naturalWidth || map.width, preview.naturalHeight || map.height);
    figure.querySelector("figcaption").textContent = `${label} · so far, ${done} / ${total} masks`;
    figure.dataset.done = String(done);
  }
  live.hidden = false;
}

function clearResults() {
  $("results").hidden = true;
  $("predictions").replaceChildren();
  $("explanations").replaceChildren();
  $("timing").textContent = "";
}

/** The final result replaces the maps so far. */
function clearLive() {
  $("live").hidden = true;
  $("live").replaceChildren();
}

async function explain(event) {
  event.preventDefault();
  if (!state.file) return;
  clearError();
  state.running?.abort();
  const controller = new AbortController();
  state.running = controller;
  $("explain").disabled = true;
  setProgress(0, 0);
  clearLive();
  try {
    const opts = options();
    const client = api();
    const methods = [opts.method];
    if ($("compare").checked && opts.method !== "gradcam") methods.push("gradcam");
    // Every method runs on the same classes: the same model ranks them the same way.
    // The first stream drives the progress bar; for Score-CAM it also brings the maps so far.
    const onProgress = (done, total, maps) => {
      if (state.running !== controller) return; // a newer explanation took over the page
      setProgress(done, total);
      if (maps.length) showPartialMaps(maps, done, total);
    };
    const results = await Promise.all(
      methods.map((method, i) =>
        client.explain(
          state.file,
          { ...opts, method, partialMaps: i === 0 && method === "scorecam" },
          i === 0 ? onProgress : () => {},
          controller.signal,
        ),
      ),
    );
    await showResults(methods, results);
    clearLive();
    $("progress-text").textContent = "done";
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
    if (state.running === controller) {
      // a newer run (or a new photo) owns the bar otherwise
      resetProgress();
      clearLive();
    }
  } finally {
    if (state.running === controller) state.running = null;
    $("explain").disabled = !state.file;
  }
}

async function showResults(methods, results) {
  const main = results[0];
  $("predictions").replaceChildren(...main.predictions.map(predictionItem));
  if (!state.labels.length) fillLabels(main.predictions);
  const rows = main.explanations.map((exp, row) => explanationRow(exp, methods, results, row));
  $("explanations").replaceChildren(...rows.map((r) => r.element));
  $("timing").textContent = methods
    .map((m, i) => `${METHOD_NAMES[m]}: ${Math.round(results[i].timing_ms.total_ms)} ms`)
    .join(" · ");
  $("results").hidden = false;
  await Promise.all(rows.flatMap((r) => r.drawn));
}

function predictionItem(p) {
  const li = document.createElement("li");
  const label = Object.assign(document.createElement("span"), { className: "label", textContent: p.label });
  const score = Object.assign(document.createElement("span"), {
    className: "score",
    textContent: `${(100 * p.score).toFixed(1)}%`,
  });
  const bar = Object.assign(document.createElement("span"), { className: "bar" });
  bar.append(Object.assign(document.createElement("span"), { style: `width: ${100 * p.score}%` }));
  li.append(label, score, bar);
  li.dataset.classIndex = p.class_index;
  return li;
}

function explanationRow(exp, methods, results, row) {
  const section = Object.assign(document.createElement("section"), { className: "explanation" });
  const title = document.createElement("h3");
  title.textContent = `${exp.label} — ${(100 * exp.score).toFixed(1)}%`;
  const grid = Object.assign(document.createElement("div"), { className: "methods" });
  const drawn = methods.map((method, i) => {
    const match = results[i].explanations.find((e) => e.class_index === exp.class_index) || results[i].explanations[row];
    const { figure, done } = overlayFigure(match, method, results[i].stats);
    grid.append(figure);
    return done;
  });
  section.append(title, grid);
  return { element: section, drawn };
}

function overlayFigure(exp, method, stats) {
  const figure = Object.assign(document.createElement("figure"), { className: "overlay" });
  figure.dataset.method = method;
  figure.dataset.classIndex = exp.class_index;
  const stack = Object.assign(document.createElement("div"), { className: "stack" });
  const img = Object.assign(document.createElement("img"), { src: state.imageUrl, alt: "the uploaded image" });
  const canvas = document.createElement("canvas");
  canvas.setAttribute("aria-label", `${METHOD_NAMES[method]} heatmap of ${exp.label}`);
  stack.append(img, canvas);
  const caption = document.createElement("figcaption");
  caption.textContent = `${METHOD_NAMES[method]}${statsText(stats)}`;
  figure.append(stack, caption);
  const done = drawHeatmap(canvas, exp.heatmap_png).then(() => {
    figure.dataset.ready = "true";
  });
  return { figure, done };
}

function statsText(stats) {
  if (!stats || !stats.masked_forwards) return "";
  return ` · ${stats.masked_forwards} masked forwards over ${stats.channels} channels`;
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  setupDrop();
  $("model").addEventListener("change", modelChanged);
  $("method").addEventListener("change", () => {
    $("compare").disabled = $("method").value === "gradcam";
    const model = currentModel();
    if (model) fillLayers(model);
  });
  $("class").addEventListener("focus", () => {
    document.querySelector('input[name="target"][value="class"]').checked = true;
  });
  $("opacity").addEventListener("input", (e) => {
    document.documentElement.style.setProperty("--heat-opacity", String(e.target.value / 100));
  });
  $("api-key").addEventListener("change", loadModels);
  $("explain-form").addEventListener("submit", explain);
  loadModels();
}

start();
