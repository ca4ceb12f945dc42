// The Sessions view: GET /v1/sessions, a session's workspace files (list and download), and
// DELETE /v1/sessions/{id}.

import * as api from "./api.js";
import { $, formatBytes, formatTime, h } from "./dom.js";

let useInChat = () => {};
let onList = () => {};
let shown = null; // the session whose files are listed

const path = (id) => `/v1/sessions/${encodeURIComponent(id)}`;

export async function refresh() {
  $("#sessions-error").textContent = "";
  let sessions;
  try {
    sessions = (await api.call("GET", "/v1/sessions")).data;
  } catch (error) {
    $("#sessions-error").textContent = error.message;
    return;
  }
  onList(sessions.map((s) => s.id));
  $("#sessions-empty").hidden = sessions.length > 0;
  $("#session-table tbody").replaceChildren(
    ...sessions.map((s) =>
      h(
        "tr",
        { "data-session": s.id, class: s.id === shown ? "selected" : null },
        h("td", {}, h("code", {}, s.id)),
        h("td", {}, s.live ? "live" : "closed (files kept)"),
        h("td", {}, s.file_count >= 0 ? String(s.file_count) : "–"),
        h("td", {}, formatBytes(s.size_bytes)),
        h("td", {}, formatTime(s.last_used)),
        h(
          "td",
          {},
          h(
            "div",
            { class: "row" },
            h("button", { type: "button", onclick: () => showFiles(s.id) }, "Files"),
            h("button", { type: "button", onclick: () => useInChat(s.id) }, "Use in chat"),
            h("button", { type: "button", class: "danger", onclick: () => remove(s.id) }, "Delete"),
          ),
        ),
      ),
    ),
  );
  if (shown && !sessions.some((s) => s.id === shown)) {
    shown = null;
    $("#session-files").hidden = true;
  }
}

async function showFiles(sessionId) {
  shown = sessionId;
  $("#sessions-error").textContent = "";
  let listing;
  try {
    listing = await api.call("GET", `${path(sessionId)}/files`);
  } catch (error) {
    $("#sessions-error").textContent = error.message;
    return;
  }
  $("#files-title").textContent = `Files in ${sessionId}${listing.truncated ? " (first ones only)" : ""}`;
  $("#files-empty").hidden = listing.data.length > 0;
  $("#file-table tbody").replaceChildren(
    ...listing.data.map((f) =>
      h(
        "tr",
        { "data-path": f.path },
        h("td", {}, h("code", {}, f.path)),
        h("td", {}, formatBytes(f.size_bytes)),
        h("td", {}, formatTime(f.modified)),
        h("td", {}, h("button", { type: "button", onclick: () => download(sessionId, f.path) }, "Download")),
      ),
    ),
  );
  $("#session-files").hidden = false;
  for (const row of document.querySelectorAll("#session-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.session === sessionId);
  }
}

async function download(sessionId, filePath) {
  const encoded = filePath.split("/").map(encodeURIComponent).join("/");
  try {
    const data = await api.blob(`${path(sessionId)}/files/${encoded}`);
    api.saveBlob(data, filePath.split("/").pop());
  } catch (error) {
    $("#sessions-error").textContent = error.message;
  }
}

async function remove(sessionId) {
  if (!confirm(`Delete session ${sessionId}? Its kernel stops and its files are removed.`)) return;
  try {
    await api.call("DELETE", path(sessionId));
  } catch (error) {
    $("#sessions-error").textContent = error.message;
  }
  if (shown === sessionId) {
    shown = null;
    $("#session-files").hidden = true;
  }
  await refresh();
}

/** `use(id)`: make the chat use that session; `listed(ids)`: called with each fresh listing. */
export function init({ use, listed }) {
  useInChat = use;
  onList = listed;
  $("#refresh-sessions").addEventListener("click", refresh);
}
