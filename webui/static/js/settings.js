// Settings → API: the base URLs, SDK snippets, and (admin keys only) creating, listing and
// revoking keys through /v1/keys.

import * as api from "./api.js";
import { $, copyText, formatTime, h } from "./dom.js";
import { renderCode } from "./render.js";

const PLACEHOLDER = 'os.environ["UNSLOTH_STUDIO_AUTH_TOKEN"]';

function renderSnippets(newKey) {
  const origin = location.origin;
  const apiKey = newKey ? JSON.stringify(newKey) : PLACEHOLDER;
  const imports = newKey ? "" : "import os\n";
  $("#openai-base").textContent = `${origin}/v1`;
  $("#anthropic-base").textContent = origin;
  renderCode(
    $("#snippet-openai"),
    `${imports}from openai import OpenAI\n\n` +
      `client = OpenAI(base_url="${origin}/v1", api_key=${apiKey})\n` +
      `response = client.chat.completions.create(\n` +
      `    model="default", messages=[{"role": "user", "content": "Hello!"}]\n)\n` +
      `print(response.choices[0].message.content)\n`,
    "python",
  );
  renderCode(
    $("#snippet-anthropic"),
    `${imports}from anthropic import Anthropic\n\n` +
      `client = Anthropic(base_url="${origin}", api_key=${apiKey})\n` +
      `message = client.messages.create(\n` +
      `    model="default", max_tokens=256, messages=[{"role": "user", "content": "Hello!"}]\n)\n` +
      `print(message.content[0].text)\n`,
    "python",
  );
}

export async function refreshKeys() {
  $("#keys-error").textContent = "";
  let keys;
  try {
    keys = (await api.call("GET", "/v1/keys")).data;
  } catch (error) {
    $("#keys-error").textContent = error.message;
    return;
  }
  $("#key-table tbody").replaceChildren(
    ...keys.map((k) =>
      h(
        "tr",
        { "data-key-id": String(k.id), "data-key-name": k.name, class: k.revoked_at ? "revoked" : null },
        h("td", {}, k.name),
        h("td", {}, h("code", {}, `${k.prefix}…`)),
        h("td", {}, k.admin ? "admin" : "user"),
        h("td", {}, formatTime(k.created_at)),
        h("td", {}, formatTime(k.last_used_at)),
        h("td", {}, k.revoked_at ? `revoked ${formatTime(k.revoked_at)}` : "active"),
        h(
          "td",
          {},
          k.revoked_at
            ? null
            : h("button", { type: "button", class: "danger", onclick: () => revoke(k) }, "Revoke"),
        ),
      ),
    ),
  );
}

async function revoke(record) {
  if (!confirm(`Revoke the key "${record.name}"? Programs using it stop working at once.`)) return;
  try {
    await api.call("DELETE", `/v1/keys/${record.id}`);
  } catch (error) {
    $("#keys-error").textContent = error.message;
  }
  await refreshKeys();
}

async function create(event) {
  event.preventDefault();
  $("#keys-error").textContent = "";
  const name = $("#new-key-name").value.trim();
  const body = { admin: $("#new-key-admin").checked };
  if (name) body.name = name;
  let created;
  try {
    created = await api.call("POST", "/v1/keys", body);
  } catch (error) {
    $("#keys-error").textContent = error.message;
    return;
  }
  $("#new-key-name").value = "";
  $("#new-key-admin").checked = false;
  $("#new-key-value").textContent = created.key;
  $("#new-key").hidden = false;
  renderSnippets(created.key);
  await refreshKeys();
}

/** Show Settings for the signed-in key (`me`: GET /v1/me); key management only for admins. */
export function show(me) {
  renderSnippets(null);
  $("#new-key").hidden = true;
  $("#keys-admin").hidden = !me.admin;
  $("#keys-denied").hidden = me.admin;
  if (me.admin) refreshKeys();
}

export function init() {
  $("#create-key").addEventListener("submit", create);
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      copyText(source.textContent, button, source);
    });
  }
}
