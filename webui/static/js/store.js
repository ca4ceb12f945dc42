// Conversations and options, kept in this browser's localStorage (never on the server).
//
// A conversation: {id, title, created, session_id, context_used, messages: [message]}.
// A user message: {role: "user", content: text, images: [data URI]}.
// An assistant message: {role: "assistant", parts: [part], usage, finish, error, warning,
// stopped}, where a part is {type: "text"|"reasoning", text} or {type: "tool", call_id, name,
// arguments, output, is_error, attachments, duration_ms, running}: in the order they streamed.

const CONVERSATIONS = "toolstudio.conversations";
const CURRENT = "toolstudio.current";
const OPTIONS = "toolstudio.options";

function read(name, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(name));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

export function newId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function newConversation() {
  return { id: newId("c-"), title: "New chat", created: Date.now(), session_id: newId("chat-"), messages: [] };
}

export function loadConversations() {
  const list = read(CONVERSATIONS, []);
  return Array.isArray(list) ? list.filter((c) => c && Array.isArray(c.messages)) : [];
}

/**
 * Save every conversation. localStorage holds about 5 MB: when it is full, the images of the
 * oldest messages are dropped (their text stays) until it fits. Returns a note when that
 * happened, else null.
 */
export function saveConversations(list) {
  let dropped = 0;
  for (;;) {
    try {
      localStorage.setItem(CONVERSATIONS, JSON.stringify(list));
      return dropped ? `storage full: images of ${dropped} older messages were not kept` : null;
    } catch (error) {
      if (!dropOldestImages(list)) {
        console.error("cannot save conversations", error);
        return "storage full: conversations could not be saved (export and delete some)";
      }
      dropped += 1;
    }
  }
}

function dropOldestImages(list) {
  for (const conversation of [...list].sort((a, b) => a.created - b.created)) {
    for (const message of conversation.messages) {
      if (message.images && message.images.length) {
        message.images = [];
        message.images_dropped = true;
        return true;
      }
      for (const part of message.parts || []) {
        if (part.type === "tool" && part.attachments && part.attachments.length) {
          part.attachments = [];
          part.attachments_dropped = true;
          return true;
        }
      }
    }
  }
  return false;
}

export function currentId() {
  return localStorage.getItem(CURRENT);
}

export function setCurrentId(id) {
  localStorage.setItem(CURRENT, id);
}

export function loadOptions() {
  return read(OPTIONS, {});
}

export function saveOptions(options) {
  localStorage.setItem(OPTIONS, JSON.stringify(options));
}

/** The text an assistant message said (its text parts, without reasoning or tool runs). */
export function answerText(message) {
  return (message.parts || [])
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");
}
