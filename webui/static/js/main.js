// Start-up: sign in with a key (GET /v1/me), then load the model list and the server's tools
// and show the Chat, Sessions and Settings views. Every call goes to this page's own origin.

import * as api from "./api.js";
import * as chat from "./chat.js";
import { $, h } from "./dom.js";
import { loadRenderers } from "./render.js";
import * as sessions from "./sessions.js";
import * as settings from "./settings.js";

let me = null;
let started = false;

function showView(name) {
  for (const view of ["login", "chat", "sessions", "settings"]) {
    $(`#${view}-view`).hidden = view !== name;
  }
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  }
  if (name === "sessions") sessions.refresh();
  if (name === "settings") settings.show(me);
  if (name === "chat") $("#prompt").focus();
  if (name !== "login") history.replaceState(null, "", `#${name}`);
}

function showLogin(message) {
  $("#tabs").hidden = true;
  $("#status").hidden = true;
  $("#login-error").textContent = message || "";
  showView("login");
  $("#login-key").focus();
}

async function signIn(candidate) {
  api.setKey(candidate);
  try {
    me = await api.call("GET", "/v1/me");
  } catch (error) {
    api.setKey(null);
    showLogin(error.status === 401 ? "This key was refused: it is wrong or has been revoked." : error.message);
    return;
  }
  await start();
}

async function start() {
  const [models, tools] = await Promise.all([
    api.call("GET", "/v1/models").then((r) => r.data, () => []),
    api.call("GET", "/v1/tools").then((r) => r.data, () => []),
  ]);
  $("#model").replaceChildren(...models.map((m) => h("option", { value: m.id }, m.id)));
  $("#whoami").textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
  $("#tabs").hidden = false;
  $("#status").hidden = false;
  if (!started) {
    started = true;
    chat.init({ models, tools, onSessionsChanged: () => sessions.refresh() });
    sessions.init({
      use: (id) => {
        chat.setSessionId(id);
        showView("chat");
      },
      listed: chat.setSessionChoices,
    });
    settings.init();
  }
  const wanted = location.hash.slice(1);
  showView(["chat", "sessions", "settings"].includes(wanted) ? wanted : "chat");
  sessions.refresh();
}

async function boot() {
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#login-key").value.trim());
  });
  $("#sign-out").addEventListener("click", () => {
    api.setKey(null);
    me = null;
    location.hash = "";
    location.reload();
  });
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  api.onUnauthorized(() => {
    api.setKey(null);
    showLogin("The server refused the key (revoked?). Sign in again.");
  });
  await loadRenderers();
  if (api.key()) await signIn(api.key());
  else showLogin();
  document.documentElement.dataset.ready = "true";
}

boot();
