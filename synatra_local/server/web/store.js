// Conversations and settings kept in this browser (localStorage), so that a reload or a closed tab loses nothing.

const CONVERSATIONS = "synatra.conversations.v1";
const CURRENT = "synatra.current";
const SETTINGS = "synatra.settings";
export const DEFAULT_SETTINGS = { system: "", temperature: 0.7, maxTokens: 512 };

function read(item, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(item));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

/** Save; false (and nothing thrown) where storage is full or disabled. */
function write(item, value) {
  try {
    localStorage.setItem(item, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

const valid = (c) =>
  c && typeof c.id === "string" && Array.isArray(c.messages) &&
  c.messages.every((m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string");

export function loadConversations() {
  const list = read(CONVERSATIONS, []);
  return Array.isArray(list) ? list.filter(valid) : [];
}

export const saveConversations = (list) => write(CONVERSATIONS, list);
export const loadCurrent = () => read(CURRENT, null);
export const saveCurrent = (id) => write(CURRENT, id);
export const loadSettings = () => ({ ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) });
export const saveSettings = (settings) => write(SETTINGS, settings);

export function newConversation() {
  const id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  return { id, title: "", created: Date.now(), messages: [] };
}

export function titleOf(conversation) {
  const first = conversation.messages.find((m) => m.role === "user");
  const text = (conversation.title || (first && first.content) || "새 대화").replace(/\s+/g, " ").trim();
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}
