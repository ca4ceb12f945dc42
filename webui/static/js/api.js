// The public HTTP API, called with the key the user pasted (kept in localStorage). Same origin
// only: every path here is relative to the page.

const KEY_STORAGE = "toolstudio.key";

let apiKey = localStorage.getItem(KEY_STORAGE);
const unauthorizedListeners = [];

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && typeof body === "object" ? body.error : null;
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.type = error ? error.type : null;
  }
}

export function key() {
  return apiKey;
}

export function setKey(value) {
  apiKey = value;
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
}

/** Called with the error when a request is refused with 401 (a revoked or wrong key). */
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

function headers(json) {
  const h = { Authorization: `Bearer ${apiKey}` };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) unauthorizedListeners.forEach((l) => l(error));
  return error;
}

/** JSON request; resolves to the parsed body, rejects with ApiError. */
export async function call(method, path, body, { signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** A POST whose answer is an SSE stream: the Response (headers readable), or ApiError. */
export async function stream(path, body, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body), signal });
  if (!response.ok) throw await failure(response);
  return response;
}

/** A file's bytes as a Blob (downloads need the key, so no plain link can fetch them). */
export async function blob(path) {
  const response = await fetch(path, { headers: headers(false) });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

/**
 * The events of an SSE body: yields {event, data} with `data` parsed as JSON ("[DONE]" ends
 * the stream and is not yielded). Frames may be split anywhere across network chunks.
 */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        let event = "message";
        const data = [];
        for (const line of frame.split(/\r?\n/)) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        const text = data.join("\n");
        if (text === "[DONE]") return;
        yield { event, data: JSON.parse(text) };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** Save a Blob as a file, as a download. */
export function saveBlob(data, filename) {
  const url = URL.createObjectURL(data);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
