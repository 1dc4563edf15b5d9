// A small browser client of the public /v1 API: what any frontend needs, and nothing private.
//
// Why fetch() and not EventSource: /v1/explain streams its progress as Server-Sent Events in the
// response to a POST (the image is in the body), and EventSource can only GET. So we POST with
// `Accept: text/event-stream` and parse the stream ourselves from response.body's reader.
//
// Copy this file into your own frontend: createApi({ baseUrl: "https://scorecam.example.com",
// apiKey }) and call models(), labels(name), predict(file, options), explain(file, options,
// onProgress). Cross-origin use needs the page's origin in SCORECAM_CORS_ORIGINS.

/** An error the API answered with ({"error": {"code", "message"}}) or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status, 0 for a network failure
    this.code = code; // the API's stable error code, e.g. "unknown_model", "queue_full"
    this.retryAfter = retryAfter; // seconds, from Retry-After on 503
  }
}

/** Plain words for an ApiError, for people rather than programs. */
export function describeError(err) {
  if (!(err instanceof ApiError)) return `Something went wrong: ${err.message || err}`;
  const detail = err.message ? ` (${err.message})` : "";
  switch (err.code) {
    case "network":
      return "Could not reach the service. Is it running, and does it allow this page's origin (CORS)?";
    case "unauthorized":
      return "The service needs an API key. Enter it under Advanced options and try again.";
    case "queue_full":
    case "unavailable": {
      const wait = err.retryAfter ? ` in about ${err.retryAfter} s` : " in a moment";
      return `The service is busy right now. Please try again${wait}.${detail}`;
    }
    case "invalid_image":
      return `That file does not look like an image we can read. Try a JPEG, PNG or WebP photo.${detail}`;
    case "unsupported_media_type":
      return `That image format is not supported. Try a JPEG, PNG or WebP photo.${detail}`;
    case "too_large":
      return `The image is too large for this service.${detail}`;
    case "deadline_exceeded":
      return "The explanation took too long and was stopped. Try fewer channels (Advanced options) or Grad-CAM.";
    default:
      return err.message || `The service answered with HTTP ${err.status}.`;
  }
}

/** Build an API client; baseUrl defaults to the folder this page was served from. */
export function createApi({ baseUrl = new URL(".", window.location.href).href, apiKey = "" } = {}) {
  const root = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
  const headers = (extra = {}) => (apiKey ? { "X-API-Key": apiKey, ...extra } : { ...extra });

  async function request(path, init = {}) {
    let response;
    try {
      response = await fetch(new URL(path, root), { ...init, headers: headers(init.headers) });
    } catch (err) {
      if (err.name === "AbortError") throw err; // the caller cancelled: not a network failure
      throw new ApiError(0, "network", String(err.message || err));
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  return {
    async models() {
      return (await (await request("v1/models")).json()).models;
    },

    /** The model's class names, or null when the service has no labels endpoint. */
    async labels(model) {
      try {
        const body = await (await request(`v1/models/${encodeURIComponent(model)}/labels`)).json();
        return Array.isArray(body) ? body : body.labels;
      } catch (err) {
        if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
        throw err;
      }
    },

    async predict(file, { model, topK = 5 } = {}) {
      const form = formOf(file, { model, top_k: topK });
      return (await request("v1/predict", { method: "POST", body: form })).json();
    },

    /**
     * POST /v1/explain and follow its event stream; resolves with the final result.
     * onProgress(done, total, partialMaps) is called for every progress event. With
     * options.partialMaps (Score-CAM), the events where a map is due carry partialMaps:
     * [{class_index, height, width, values}], each class's map so far at the layer's resolution
     * (values row-major in [0, 1]; see drawPartialMap in heatmap.js); otherwise it is [].
     * options.partialMapsEvery: the share of the masked forwards between two maps (server default 0.1).
     */
    async explain(file, options = {}, onProgress = () => {}, signal = undefined) {
      const form = formOf(file, {
        model: options.model,
        method: options.method,
        classes: options.classes && options.classes.length ? options.classes.join(",") : undefined,
        top_k: options.classes && options.classes.length ? undefined : options.topK,
        layer: options.layer,
        max_channels: options.maxChannels,
        outputs: options.outputs || "heatmap",
        partial_maps: options.partialMaps ? "true" : undefined,
        partial_maps_every: options.partialMaps ? options.partialMapsEvery : undefined,
      });
      const response = await request("v1/explain", {
        method: "POST",
        body: form,
        headers: { Accept: "text/event-stream" },
        signal,
      });
      const type = response.headers.get("content-type") || "";
      if (!type.includes("text/event-stream")) return response.json(); // a server that does not stream
      for await (const { event, data } of readEvents(response)) {
        const payload = data ? JSON.parse(data) : {};
        if (event === "progress") onProgress(payload.done, payload.total, payload.partial_maps || []);
        else if (event === "result") return payload;
        else if (event === "error") throw errorFromBody(payload, 500);
      }
      throw new ApiError(0, "network", "the event stream ended before the result arrived");
    },
  };
}

function formOf(file, fields) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null && value !== "") form.append(name, String(value));
  }
  return form;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's HTML error page, say): fall back to the status line
  }
  const err = errorFromBody(body, response.status);
  const retry = Number(response.headers.get("retry-after"));
  if (Number.isFinite(retry) && retry > 0) err.retryAfter = retry;
  return err;
}

function errorFromBody(body, status) {
  const error = (body && body.error) || {};
  const code = error.code || (status === 401 || status === 403 ? "unauthorized" : `http_${status}`);
  const message = error.message || (body && body.detail ? String(body.detail) : `HTTP ${status}`);
  return new ApiError(body && body.status ? body.status : status, code, message, error.retry_after ?? null);
}

/** Parse a text/event-stream body into {event, data} records (the WHATWG SSE framing). */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      if (newline === buffer.length - 1 && buffer.endsWith("\r")) break; // "\r\n" split across chunks
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (data.length) yield { event, data: data.join("\n") };
        event = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
    }
  }
  if (data.length) yield { event, data: data.join("\n") };
}
