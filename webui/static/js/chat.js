// The Chat view: streamed replies over POST /v1/chat/completions, server tool runs shown live
// from the `tool_call` / `tool_result` SSE events every API client gets, images by upload or
// paste, and a Stop button that aborts the request (the server stops decoding when the
// connection closes).

import * as api from "./api.js";
import { $, h } from "./dom.js";
import { renderCode, renderMarkdown, safeHtml } from "./render.js";
import * as store from "./store.js";

const MAX_IMAGE_BYTES = 20 * 1024 * 1024;

const state = {
  conversations: [],
  current: null,
  pendingImages: [],
  controller: null,
  tools: [],
  models: [],
  onSessionsChanged: () => {},
};

// -- conversations --------------------------------------------------------------------------

function current() {
  return state.current;
}

function save() {
  const note = store.saveConversations(state.conversations);
  if (note) console.warn(note);
  return note;
}

function select(conversation) {
  state.current = conversation;
  store.setCurrentId(conversation.id);
  $("#session-id").value = conversation.session_id || "";
  renderConversationList();
  renderMessages();
  showContextUse();
}

function startNew() {
  if (state.controller) return;
  if (!current().messages.length) return $("#prompt").focus(); // already a fresh one
  const conversation = store.newConversation();
  state.conversations.unshift(conversation);
  save();
  select(conversation);
  $("#prompt").focus();
}

function renderConversationList() {
  const list = $("#conversation-list");
  list.replaceChildren(
    ...state.conversations.map((c) =>
      h(
        "li",
        { "aria-current": c === state.current ? "true" : "false" },
        h("button", { type: "button", class: "open", title: c.title, onclick: () => !state.controller && select(c) }, c.title),
        h(
          "button",
          {
            type: "button",
            class: "remove",
            "aria-label": `Delete conversation ${c.title}`,
            title: "Delete conversation",
            onclick: () => removeConversation(c),
          },
          "×",
        ),
      ),
    ),
  );
}

function removeConversation(conversation) {
  if (state.controller && conversation === state.current) return;
  if (!confirm(`Delete the conversation "${conversation.title}" from this browser?`)) return;
  state.conversations = state.conversations.filter((c) => c !== conversation);
  if (!state.conversations.length) state.conversations.push(store.newConversation());
  save();
  select(conversation === state.current ? state.conversations[0] : state.current);
}

function exportConversations() {
  const body = JSON.stringify({ exported: new Date().toISOString(), conversations: state.conversations }, null, 2);
  api.saveBlob(new Blob([body], { type: "application/json" }), "toolstudio-conversations.json");
}

async function importConversations(file) {
  try {
    const parsed = JSON.parse(await file.text());
    const incoming = (Array.isArray(parsed) ? parsed : parsed.conversations) || [];
    const known = new Set(state.conversations.map((c) => c.id));
    const valid = incoming.filter((c) => c && c.id && Array.isArray(c.messages) && !known.has(c.id));
    state.conversations.unshift(...valid);
    save();
    renderConversationList();
  } catch (error) {
    alert(`Not a conversations export: ${error.message}`);
  }
}

// -- rendering ------------------------------------------------------------------------------

function renderMessages() {
  const box = $("#messages");
  const conversation = current();
  if (!conversation.messages.length) {
    box.replaceChildren(
      h("p", { class: "empty-chat" }, "Ask something. Enable a tool in Options to let the model run code."),
    );
    return;
  }
  box.replaceChildren(...conversation.messages.map(renderMessage));
  box.scrollTop = box.scrollHeight;
}

function renderMessage(message) {
  if (message.role === "user") {
    return h(
      "article",
      { class: "message user" },
      h("div", { class: "who" }, "You"),
      h(
        "div",
        { class: "body" },
        message.content,
        message.images && message.images.length
          ? h("div", { class: "images" }, message.images.map((src, i) => h("img", { src, alt: `attached image ${i + 1}` })))
          : null,
        message.images_dropped ? h("div", { class: "meta" }, "(images not kept: browser storage was full)") : null,
      ),
    );
  }
  const article = h("article", { class: "message assistant" });
  fillAssistant(article, message);
  return article;
}

function fillAssistant(article, message) {
  const parts = message.parts.map((part) => {
    if (part.type === "reasoning") {
      return h(
        "details",
        { class: "reasoning", open: message.streaming ? true : null },
        h("summary", {}, "Reasoning"),
        h("div", { class: "text" }, part.text),
      );
    }
    if (part.type === "tool") return renderToolRun(part);
    const answer = h("div", { class: "answer" });
    renderMarkdown(answer, part.text);
    return answer;
  });
  const meta = [];
  if (message.streaming) meta.push(h("span", {}, "generating…"));
  if (message.stopped) meta.push(h("span", { class: "warning" }, "stopped"));
  if (message.finish === "length") meta.push(h("span", { class: "warning" }, "cut at max tokens"));
  if (message.usage) {
    const u = message.usage;
    meta.push(h("span", {}, `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens`));
  }
  if (message.warning) meta.push(h("span", { class: "warning server-warning" }, message.warning));
  if (message.error) meta.push(h("span", { class: "error", role: "alert" }, message.error));
  article.replaceChildren(
    h("div", { class: "who" }, "Assistant"),
    ...parts,
    h("div", { class: "meta" }, ...meta.flatMap((m, i) => (i ? [" · ", m] : [m]))),
  );
}

function toolSource(part) {
  let args = part.arguments;
  try {
    args = JSON.parse(part.arguments || "{}");
  } catch {
    return { text: String(part.arguments || ""), language: "json" };
  }
  if (args && typeof args.code === "string") return { text: args.code, language: "python" };
  if (args && typeof args.command === "string") return { text: args.command, language: "bash" };
  return { text: JSON.stringify(args, null, 2), language: "json" };
}

/** The output text with its `[stderr]` / `[stdout]` sections (as the tools mark them) told apart. */
function outputNodes(output) {
  const nodes = [];
  let stream = "stdout";
  for (const piece of output.split(/^\[(stderr|stdout)\]\n/m)) {
    if (piece === "stderr" || piece === "stdout") {
      stream = piece;
      continue;
    }
    if (piece) nodes.push(stream === "stderr" ? h("span", { class: "stderr" }, piece) : piece);
  }
  return nodes;
}

function renderToolRun(part) {
  const source = toolSource(part);
  const code = h("code", {});
  renderCode(code, source.text, source.language);
  const label = part.running ? "running…" : part.is_error ? "error" : "ok";
  const stateClass = part.running ? "running" : part.is_error ? "error" : "ok";
  const duration = part.duration_ms !== undefined ? `${(part.duration_ms / 1000).toFixed(2)} s` : "";
  const attachments = (part.attachments || []).map((a, i) => {
    if (a.type === "image") return h("img", { src: `data:${a.media_type};base64,${a.data}`, alt: `${part.name} output image ${i + 1}` });
    if (a.type === "html") {
      const html = safeHtml(new TextDecoder().decode(Uint8Array.from(atob(a.data), (c) => c.charCodeAt(0))));
      if (html === null) return null;
      const box = h("div", { class: "html-table" });
      box.innerHTML = html;
      return box;
    }
    return h("div", { class: "muted small" }, `(${a.media_type} attachment)`);
  });
  return h(
    "details",
    { class: `tool-run${part.is_error ? " error" : ""}`, open: true, "data-call-id": part.call_id },
    h(
      "summary",
      {},
      h("span", { class: "tool-name" }, part.name),
      h("span", { class: `tool-state ${stateClass}` }, label),
      h("span", { class: "tool-duration muted" }, duration),
      part.session_restored ? h("span", { class: "muted" }, "(session restored: Python state was reset)") : null,
    ),
    h(
      "div",
      { class: "tool-body" },
      h("pre", { class: "tool-args" }, code),
      part.running ? null : h("pre", { class: "tool-output" }, ...outputNodes(part.output || "")),
      attachments.length ? h("div", { class: "tool-attachments" }, attachments) : null,
      part.attachments_dropped ? h("div", { class: "meta" }, "(figures not kept: browser storage was full)") : null,
    ),
  );
}

let repaint = null;

/** Re-render the streaming message at most once a frame. */
function schedule(article, message) {
  if (repaint) return;
  repaint = requestAnimationFrame(() => {
    repaint = null;
    const box = $("#messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    fillAssistant(article, message);
    if (atBottom) box.scrollTop = box.scrollHeight;
  });
}

function showContextUse() {
  const conversation = current();
  const model = state.models.find((m) => m.id === $("#model").value) || state.models[0];
  const limit = model && model.context_length ? ` / ${model.context_length}` : "";
  $("#context-use").textContent = model ? `context ${(conversation && conversation.context_used) || 0}${limit} tokens` : "";
}

// -- options --------------------------------------------------------------------------------

function readOptions() {
  const enabled = [...document.querySelectorAll("#tool-toggles input[type=checkbox]:checked")].map((i) => i.value);
  return {
    temperature: $("#temperature").value,
    max_tokens: $("#max-tokens").value,
    reasoning: $("#reasoning").value,
    system: $("#system-prompt").value,
    tools: enabled,
    tool_choice: $("#tool-choice").value,
    max_tool_calls: $("#max-tool-calls").value,
  };
}

function restoreOptions() {
  const options = store.loadOptions();
  $("#temperature").value = options.temperature ?? "";
  $("#max-tokens").value = options.max_tokens ?? "";
  $("#reasoning").value = options.reasoning ?? "";
  $("#system-prompt").value = options.system ?? "";
  $("#max-tool-calls").value = options.max_tool_calls ?? "";
  for (const box of document.querySelectorAll("#tool-toggles input[type=checkbox]")) {
    box.checked = (options.tools || []).includes(box.value);
  }
  if ([...$("#tool-choice").options].some((o) => o.value === options.tool_choice)) $("#tool-choice").value = options.tool_choice;
}

function renderToolToggles() {
  const fieldset = $("#tool-toggles");
  fieldset.querySelectorAll("label").forEach((l) => l.remove());
  $("#no-tools").hidden = state.tools.length > 0;
  for (const tool of state.tools) {
    fieldset.append(
      h(
        "label",
        { title: tool.description },
        h("input", { type: "checkbox", value: tool.name, name: "tool", onchange: persistOptions }),
        tool.name,
      ),
    );
  }
  const choice = $("#tool-choice");
  choice.replaceChildren(
    h("option", { value: "auto" }, "auto"),
    h("option", { value: "required" }, "required (some tool)"),
    ...state.tools.map((t) => h("option", { value: `tool:${t.name}` }, `force ${t.name}`)),
  );
}

function persistOptions() {
  store.saveOptions(readOptions());
}

// -- sending --------------------------------------------------------------------------------

function wireMessages(conversation, options) {
  const messages = [];
  if (options.system.trim()) messages.push({ role: "system", content: options.system });
  for (const message of conversation.messages) {
    if (message.role === "user") {
      const images = message.images || [];
      messages.push({
        role: "user",
        content: images.length
          ? [{ type: "text", text: message.content }, ...images.map((url) => ({ type: "image_url", image_url: { url } }))]
          : message.content,
      });
    } else if (!message.streaming) {
      const text = store.answerText(message);
      if (text) messages.push({ role: "assistant", content: text });
    }
  }
  return messages;
}

export function buildRequest(conversation, options) {
  const body = {
    model: $("#model").value || "default",
    messages: wireMessages(conversation, options),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (options.temperature !== "") body.temperature = Number(options.temperature);
  if (options.max_tokens !== "") body.max_tokens = Number(options.max_tokens);
  if (options.reasoning) body.chat_template_kwargs = { enable_thinking: options.reasoning === "on" };
  body.enable_tools = options.tools.length > 0;
  if (body.enable_tools) {
    body.enabled_tools = options.tools;
    body.session_id = conversation.session_id;
    if (options.max_tool_calls !== "") body.max_tool_calls_per_message = Number(options.max_tool_calls);
    if (options.tool_choice === "required") body.tool_choice = "required";
    else if (options.tool_choice.startsWith("tool:")) {
      const name = options.tool_choice.slice(5);
      if (options.tools.includes(name)) body.tool_choice = { type: "function", function: { name } };
    }
  }
  return body;
}

function appendText(message, type, text) {
  const last = message.parts[message.parts.length - 1];
  if (last && last.type === type) last.text += text;
  else message.parts.push({ type, text });
}

function apply(message, event, data, started) {
  if (event === "tool_call" && data.tool_call) {
    const call = data.tool_call;
    message.parts.push({ type: "tool", call_id: call.id, name: call.name, arguments: call.arguments, running: true });
    started.set(call.id, performance.now());
    return;
  }
  if (event === "tool_result" && data.tool_result) {
    const result = data.tool_result;
    let part = message.parts.find((p) => p.type === "tool" && p.call_id === result.call_id);
    if (!part) {
      part = { type: "tool", call_id: result.call_id };
      message.parts.push(part);
    }
    Object.assign(part, {
      name: result.name,
      arguments: result.arguments,
      output: result.output,
      is_error: result.is_error,
      attachments: result.attachments || [],
      session_restored: result.session_restored,
      running: false,
    });
    if (started.has(result.call_id)) part.duration_ms = Math.round(performance.now() - started.get(result.call_id));
    return;
  }
  if (data.error) {
    message.error = data.error.message || "the server ended the stream with an error";
    return;
  }
  if (data.usage) message.usage = data.usage;
  for (const choice of data.choices || []) {
    const delta = choice.delta || {};
    if (delta.reasoning_content) appendText(message, "reasoning", delta.reasoning_content);
    if (delta.content) appendText(message, "text", delta.content);
    if (choice.finish_reason) message.finish = choice.finish_reason;
  }
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").hidden = !busy;
  $("#new-chat").disabled = busy;
}

async function send() {
  if (state.controller) return;
  const text = $("#prompt").value.trim();
  if (!text && !state.pendingImages.length) return;
  const conversation = current();
  const options = readOptions();
  persistOptions();
  conversation.session_id = $("#session-id").value.trim() || conversation.session_id || store.newId("chat-");
  $("#session-id").value = conversation.session_id;
  conversation.messages.push({ role: "user", content: text, images: state.pendingImages.map((i) => i.url) });
  if (conversation.title === "New chat") conversation.title = (text || "Image").slice(0, 48);
  const message = { role: "assistant", parts: [], streaming: true };
  const body = buildRequest(conversation, options);
  conversation.messages.push(message);
  $("#prompt").value = "";
  state.pendingImages = [];
  renderPending();
  renderConversationList();
  renderMessages();
  save();
  const article = $("#messages").lastElementChild;
  const controller = (state.controller = new AbortController());
  setBusy(true);
  const started = new Map();
  try {
    const response = await api.stream("/v1/chat/completions", body, controller.signal);
    message.warning = response.headers.get("x-toolstudio-warning");
    for await (const { event, data } of api.events(response)) {
      apply(message, event, data, started);
      schedule(article, message);
    }
  } catch (error) {
    if (error.name === "AbortError") message.stopped = true;
    else message.error = error.message;
  } finally {
    for (const part of message.parts) {
      if (part.type === "tool" && part.running) {
        part.running = false;
        part.output = part.output || "(no result: the request ended first)";
        part.is_error = true;
      }
    }
    delete message.streaming;
    state.controller = null;
    setBusy(false);
    if (message.usage) conversation.context_used = message.usage.prompt_tokens + message.usage.completion_tokens;
    if (repaint) cancelAnimationFrame(repaint), (repaint = null);
    fillAssistant(article, message);
    $("#messages").scrollTop = $("#messages").scrollHeight;
    const note = save();
    if (note) message.warning = [message.warning, note].filter(Boolean).join(" · ");
    showContextUse();
    if (body.enable_tools) state.onSessionsChanged();
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

// -- images ---------------------------------------------------------------------------------

function addImages(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    if (file.size > MAX_IMAGE_BYTES) {
      alert(`${file.name} is over ${MAX_IMAGE_BYTES / 1024 / 1024} MB`);
      continue;
    }
    const reader = new FileReader();
    reader.onload = () => {
      state.pendingImages.push({ name: file.name || "pasted image", url: reader.result });
      renderPending();
    };
    reader.readAsDataURL(file);
  }
}

function renderPending() {
  $("#pending-images").replaceChildren(
    ...state.pendingImages.map((image, index) =>
      h(
        "figure",
        {},
        h("img", { src: image.url, alt: `to send: ${image.name}` }),
        h(
          "button",
          {
            type: "button",
            "aria-label": `Remove ${image.name}`,
            onclick: () => {
              state.pendingImages.splice(index, 1);
              renderPending();
            },
          },
          "×",
        ),
      ),
    ),
  );
}

// -- set-up ---------------------------------------------------------------------------------

export function setSessionId(sessionId) {
  current().session_id = sessionId;
  $("#session-id").value = sessionId;
  save();
}

export function setSessionChoices(ids) {
  $("#session-ids").replaceChildren(...ids.map((id) => h("option", { value: id })));
}

/** Wire the Chat view. `models`: GET /v1/models data; `tools`: GET /v1/tools data. */
export function init({ models, tools, onSessionsChanged }) {
  state.models = models;
  state.tools = tools;
  state.onSessionsChanged = onSessionsChanged;
  renderToolToggles();
  restoreOptions();
  state.conversations = store.loadConversations();
  if (!state.conversations.length) state.conversations.push(store.newConversation());
  const wanted = store.currentId();
  select(state.conversations.find((c) => c.id === wanted) || state.conversations[0]);

  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    } else if (event.key === "Escape") stop();
  });
  $("#prompt").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      event.preventDefault();
      addImages(files);
    }
  });
  $("#attach").addEventListener("change", (event) => {
    addImages([...event.target.files]);
    event.target.value = "";
  });
  $("#stop").addEventListener("click", stop);
  $("#new-chat").addEventListener("click", startNew);
  $("#export-chats").addEventListener("click", exportConversations);
  $("#import-chats").addEventListener("change", (event) => {
    if (event.target.files[0]) importConversations(event.target.files[0]);
    event.target.value = "";
  });
  $("#model").addEventListener("change", showContextUse);
  $("#session-id").addEventListener("change", () => {
    const value = $("#session-id").value.trim();
    if (value) setSessionId(value);
  });
  for (const id of ["#temperature", "#max-tokens", "#reasoning", "#system-prompt", "#tool-choice", "#max-tool-calls"]) {
    $(id).addEventListener("change", persistOptions);
  }
}
