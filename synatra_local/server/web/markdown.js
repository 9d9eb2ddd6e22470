// Model output is untrusted. Markdown is rendered by marked with raw HTML shown as text and images as their
// alt text, then the result goes through DOMPurify with an allow-list: text formatting, lists, tables, code and
// links (http, https, mailto only; opened in a new tab without a referrer). Nothing rendered can run script,
// load anything, or take the page's own look (no class, id, style, form or media element survives).
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({ gfm: true, breaks: true });
marked.use({
  renderer: {
    // raw HTML is shown as the text it is; a block of it keeps its own lines
    html: ({ text, block }) => (block ? `<p>${escapeHtml(text.trimEnd()).replace(/\n/g, "<br>")}</p>` : escapeHtml(text)),
    image: ({ text }) => escapeHtml(text ? `[${text}]` : "[image]"),
  },
});

const SANITIZE = {
  ALLOWED_TAGS: [
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "li", "ol",
    "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "start", "align"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** A sanitised DocumentFragment for `text` (Markdown). */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text), SANITIZE);
}
