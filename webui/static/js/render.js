// Markdown (marked), sanitising (DOMPurify) and code highlighting (highlight.js), all fetched
// from the npm registry by `make webui` into /ui/vendor/. Without them, text is shown as it is:
// the page degrades to plain text and never breaks.

let lib = null;

/** Load the vendor modules once; resolves to true when Markdown rendering is available. */
export async function loadRenderers() {
  try {
    const [markedModule, purifyModule] = await Promise.all([
      import("/ui/vendor/marked.js"),
      import("/ui/vendor/purify.js"),
    ]);
    let hljs = null;
    try {
      hljs = (await import("/ui/vendor/highlight.js")).default;
    } catch {
      hljs = null; // Markdown without colours
    }
    const purify = purifyModule.default;
    // Images in a model's text may only be inline data: a Markdown image pointing elsewhere
    // would make the browser fetch it (a request off this origin). The CSP blocks it too.
    purify.addHook("uponSanitizeAttribute", (node, data) => {
      if (node.nodeName === "IMG" && data.attrName === "src" && !/^(data:image\/|blob:)/i.test(data.attrValue)) {
        data.keepAttr = false;
      }
    });
    purify.addHook("afterSanitizeAttributes", (node) => {
      if (node.nodeName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    lib = { marked: markedModule.marked, purify, hljs };
  } catch (error) {
    console.warn("Markdown rendering unavailable (run `make webui`); showing plain text.", error);
    lib = null;
  }
  document.documentElement.dataset.markdown = lib ? "on" : "off";
  return lib !== null;
}

const SANITIZE = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
  FORBID_ATTR: ["style", "srcset"],
};

/** Render `text` as Markdown into `element` (plain text without the vendor modules). */
export function renderMarkdown(element, text) {
  if (!lib) {
    element.classList.add("plain");
    element.textContent = text;
    return;
  }
  element.classList.remove("plain");
  const html = lib.marked.parse(text, { gfm: true, async: false });
  element.innerHTML = lib.purify.sanitize(html, SANITIZE);
  for (const image of element.querySelectorAll("img:not([src])")) {
    image.replaceWith(`[image: ${image.getAttribute("alt") || "not shown"}]`); // its remote source was dropped
  }
  if (lib.hljs) {
    for (const block of element.querySelectorAll("pre code")) lib.hljs.highlightElement(block);
  }
}

/** Show `source` as a code block in `language` (highlighted when possible). */
export function renderCode(element, source, language) {
  element.textContent = source;
  element.className = ""; // drop an earlier highlighting's classes and marker
  delete element.dataset.highlighted;
  if (lib && lib.hljs) {
    if (language && lib.hljs.getLanguage(language)) element.classList.add(`language-${language}`);
    lib.hljs.highlightElement(element);
  }
}

/** Sanitised HTML from a tool (e.g. a DataFrame table), or null when it cannot be made safe. */
export function safeHtml(html) {
  if (!lib) return null;
  return lib.purify.sanitize(html, SANITIZE);
}
