// The chat page: conversations kept in this browser, replies streamed from /v1/chat/completions.
import { ApiError, apiKey, listModels, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  messages: $("messages"), input: $("input"), composer: $("composer"), send: $("send"), stop: $("stop"),
  list: $("conversations"), newChat: $("new-chat"), model: $("model"), status: $("status"), theme: $("theme"),
  system: $("system"), temperature: $("temperature"), temperatureValue: $("temperature-value"),
  maxTokens: $("max-tokens"), changeKey: $("change-key"), keyDialog: $("key-dialog"), keyForm: $("key-form"),
  keyInput: $("key-input"), toggleSidebar: $("toggle-sidebar"),
};

const state = {
  conversations: store.loadConversations(),
  currentId: store.loadCurrent(),
  settings: store.loadSettings(),
  model: null,
  streaming: null, // {controller, conversation, message, body} while a reply streams
};

// -- small helpers ---------------------------------------------------------------------------------------------

/** An element with text content only: whatever `text` holds is shown, never parsed as HTML. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, action, title) {
  const node = el("button", "quiet small", label);
  node.type = "button";
  node.dataset.action = action;
  if (title) node.title = title;
  return node;
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function persist() {
  if (!store.saveConversations(state.conversations)) setStatus("브라우저 저장 공간이 가득 차서 대화를 저장하지 못했습니다.", true);
  store.saveCurrent(state.currentId);
}

const current = () => state.conversations.find((c) => c.id === state.currentId) || null;

/** Enter pressed to end an IME composition (Hangul, kana, ...) is not a command: `isComposing`, or the 229 that
 * Safari and older browsers give keydown events that belong to the input method. */
const belongsToIme = (event) => event.isComposing || event.keyCode === 229;

// -- rendering -------------------------------------------------------------------------------------------------

/** Sanitised Markdown, with a copy button on each code block. */
function renderReply(text) {
  const fragment = renderMarkdown(text);
  for (const pre of fragment.querySelectorAll("pre")) {
    const wrap = el("div", "code");
    pre.replaceWith(wrap);
    wrap.append(button("복사", "copy-code", "코드 복사"), pre);
  }
  return fragment;
}

function statsText(message) {
  const s = message.stats;
  if (!s) return "";
  const parts = [];
  if (s.ttft != null) parts.push(`첫 토큰 ${s.ttft.toFixed(2)}초`);
  if (s.tps != null) parts.push(`${s.tps.toFixed(1)} 토큰/초`);
  if (s.tokens != null) parts.push(`${s.tokens} 토큰`);
  if (s.stopped) parts.push("중지됨");
  else if (s.finish === "length") parts.push("길이 제한에서 멈춤");
  return parts.join(" · ");
}

function messageView(message, index, isLast) {
  const article = el("article", `msg ${message.role}`);
  article.dataset.index = String(index);
  article.append(el("div", "role", message.role === "user" ? "나" : state.model || "모델"));
  const body = el("div", "body");
  if (message.role === "user") body.textContent = message.content;
  else body.append(renderReply(message.content));
  article.append(body);
  if (message.error) article.append(el("div", "error", message.error));
  const meta = el("div", "meta");
  const streaming = state.streaming && state.streaming.message === message;
  meta.append(el("span", "stats", streaming ? "생성 중…" : statsText(message)));
  const actions = el("span", "actions");
  actions.append(button("복사", "copy", "메시지 복사"));
  if (message.role === "user") actions.append(button("편집", "edit", "고쳐서 다시 보내기"));
  if (message.role === "assistant" && isLast) actions.append(button("다시 생성", "regenerate", "답을 다시 생성"));
  meta.append(actions);
  article.append(meta);
  return article;
}

function renderMessages() {
  const conversation = current();
  const messages = conversation ? conversation.messages : [];
  if (!messages.length) {
    const empty = el("div", "empty");
    empty.append(el("p", "hello", "무엇이든 물어보세요."),
      el("p", "hint", "Enter로 보내고 Shift+Enter로 줄을 바꿉니다. 한글 입력 중의 Enter는 글자를 완성할 뿐 보내지 않습니다."));
    ui.messages.replaceChildren(empty);
    return;
  }
  ui.messages.replaceChildren(...messages.map((m, i) => messageView(m, i, i === messages.length - 1)));
  const live = state.streaming;
  if (live && live.conversation === conversation) {
    const article = ui.messages.lastElementChild;
    article.classList.add("streaming");
    live.body = article.querySelector(".body");
    caretHost(live.body).append(el("span", "caret"));
  }
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function renderList() {
  const sorted = [...state.conversations].sort((a, b) => (b.updated || b.created) - (a.updated || a.created));
  ui.list.replaceChildren(...sorted.map((conversation) => {
    const item = el("li");
    const open = el("button", "open", store.titleOf(conversation));
    open.type = "button";
    open.dataset.id = conversation.id;
    if (conversation.id === state.currentId) open.setAttribute("aria-current", "true");
    const remove = el("button", "delete", "×");
    remove.type = "button";
    remove.dataset.remove = conversation.id;
    remove.title = "대화 삭제";
    remove.setAttribute("aria-label", "대화 삭제");
    item.append(open, remove);
    return item;
  }));
}

function select(id) {
  state.currentId = id;
  store.saveCurrent(id);
  renderList();
  renderMessages();
  document.body.classList.remove("sidebar-open");
}

/** Where the blinking caret of a streaming reply goes: the end of its last line of text. */
function caretHost(body) {
  let node = body.lastElementChild;
  while (node && /^(UL|OL|BLOCKQUOTE)$/.test(node.tagName) && node.lastElementChild) node = node.lastElementChild;
  return node && /^(P|LI|H[1-6])$/.test(node.tagName) ? node : body;
}

const BOUNDARY = /^ {0,3}(?:```|~~~)|\n\n/gm;

/** Where the finished blocks of a streaming reply end: after its last blank line outside a code fence (0: none),
 * counting only blank lines before `limit`. */
function stableEnd(text, limit = text.length) {
  let end = 0;
  let fenced = false;
  for (const match of text.matchAll(BOUNDARY)) {
    if (match.index >= limit) break;
    if (match[0] !== "\n\n") fenced = !fenced;
    else if (!fenced) end = match.index + 2;
  }
  return end;
}

const STEP = 8000; // at most this much finished text is rendered in one frame (a burst is spread over several)

/**
 * Paints a streaming reply incrementally: blocks that are finished (up to the last blank line outside a code
 * fence) are rendered once and kept; only the block still growing is rendered again, at most once a frame, and
 * less often when that takes long (after a paint of t ms the next waits 3t), so a long reply costs no more per
 * frame than a short one and typing, scrolling and the stop button stay responsive. When the reply ends it is
 * rendered once whole, so the final page is exactly the Markdown of the whole text.
 */
function livePainter() {
  let frame = 0;
  let text = "";
  let nextAt = 0;
  let view = null; // {body, done, growing, upto}: the reply's element, its finished and its growing part
  /** Paint `value`; false while finished blocks are still waiting to be rendered. */
  const draw = (value, streaming) => {
    const body = state.streaming && state.streaming.body;
    if (!body || !body.isConnected) return true;
    const box = ui.messages;
    const pinned = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
    if (!streaming) {
      body.replaceChildren(renderReply(value));
      view = null;
    } else {
      if (!view || view.body !== body) { // the first paint, or the conversation was shown again
        view = { body, done: el("div", "done"), growing: el("div", "growing"), upto: 0 };
        body.replaceChildren(view.done, view.growing);
      }
      const end = stableEnd(value);
      const upto = end - view.upto > STEP ? stableEnd(value, view.upto + STEP) || end : end;
      if (upto > view.upto) {
        const chunk = el("div", "chunk");
        chunk.append(renderReply(value.slice(view.upto, upto)));
        view.done.append(chunk);
        view.upto = upto;
      }
      if (upto < end) {
        if (pinned) box.scrollTop = box.scrollHeight;
        return false; // the growing block waits until the finished ones are all painted
      }
      view.growing.replaceChildren(renderReply(value.slice(view.upto)));
      caretHost(view.growing.lastElementChild ? view.growing : view.done).append(el("span", "caret"));
    }
    if (pinned) box.scrollTop = box.scrollHeight;
    return true;
  };
  const paint = (now) => {
    frame = 0;
    if (now < nextAt) {
      frame = requestAnimationFrame(paint);
      return;
    }
    const started = performance.now();
    const caughtUp = draw(text, true);
    nextAt = now + 3 * (performance.now() - started);
    if (!caughtUp) frame = requestAnimationFrame(paint);
  };
  return {
    update(value) {
      text = value;
      if (!frame) frame = requestAnimationFrame(paint);
    },
    finish(value) {
      cancelAnimationFrame(frame);
      frame = 0;
      draw(value, false);
    },
  };
}

// -- talking to the server -------------------------------------------------------------------------------------

let keyPrompt = null;

/** Ask for the API key (once, however many requests were refused): true when one was saved, false if the
 * dialog was dismissed (Esc). */
function askKey() {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      let saved = false;
      const submit = (event) => {
        event.preventDefault();
        apiKey.set(ui.keyInput.value.trim());
        saved = true;
        ui.keyDialog.close();
      };
      ui.keyForm.addEventListener("submit", submit);
      ui.keyDialog.addEventListener("close", () => {
        ui.keyForm.removeEventListener("submit", submit);
        keyPrompt = null;
        resolve(saved);
      }, { once: true });
      ui.keyInput.value = apiKey.get();
      ui.keyDialog.showModal();
    });
  }
  return keyPrompt;
}

async function connect() {
  for (;;) {
    try {
      const models = await listModels();
      state.model = models[0] || null;
      ui.model.textContent = state.model || "모델 없음";
      setStatus("");
      renderMessages(); // the replies' labels name the model
      return;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        setStatus("API 키가 필요합니다.", true);
        if (await askKey()) continue;
        return;
      }
      setStatus(`서버에 연결할 수 없습니다: ${error.message}`, true);
      return;
    }
  }
}

function requestMessages(conversation) {
  const history = conversation.messages.filter((m) => m.content).map(({ role, content }) => ({ role, content }));
  const system = state.settings.system.trim();
  return system ? [{ role: "system", content: system }, ...history] : history;
}

function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
}

/** Stream the model's reply to `conversation` (whose last message is the user's). */
async function generate(conversation) {
  if (!state.model) await connect();
  if (!state.model) return;
  const messages = requestMessages(conversation);
  const message = { role: "assistant", content: "" };
  conversation.messages.push(message);
  conversation.updated = Date.now();
  const controller = new AbortController();
  state.streaming = { controller, conversation, message, body: null };
  setBusy(true);
  setStatus("");
  renderList();
  renderMessages();
  const painter = livePainter();
  const started = performance.now();
  let first = null;
  let savedAt = started;
  let retry = false;
  let failed = null; // the server's reason, when it refused before any text
  try {
    const result = await streamChat({
      model: state.model,
      messages,
      temperature: state.settings.temperature,
      maxTokens: state.settings.maxTokens,
      signal: controller.signal,
      onText(piece) {
        const now = performance.now();
        if (first === null) first = now;
        message.content += piece;
        painter.update(message.content);
        // saved every second while that is cheap (a very long reply takes a long time to store: it is then saved
        // when the page is left, and at the end)
        if (now - savedAt > 1000 && message.content.length < 20000) {
          savedAt = now;
          persist();
        }
      },
    });
    const end = performance.now();
    const tokens = result.usage ? result.usage.completion_tokens : null;
    message.stats = {
      ttft: first === null ? null : (first - started) / 1000,
      tps: tokens > 1 && end > first ? (tokens - 1) / ((end - first) / 1000) : null,
      tokens,
      finish: result.finishReason,
    };
  } catch (error) {
    if (error.name === "AbortError") {
      message.stats = { ttft: first === null ? null : (first - started) / 1000, stopped: true };
    } else if (error instanceof ApiError && error.status === 401) {
      retry = true;
    } else if (message.content) {
      message.error = `오류: ${error.message}`;
    } else {
      failed = error.message;
    }
  } finally {
    painter.finish(message.content);
    state.streaming = null;
    if (retry || failed !== null || (!message.content && message.stats && message.stats.stopped)) {
      conversation.messages.splice(conversation.messages.indexOf(message), 1);
    }
    const last = conversation.messages.at(-1);
    if (failed !== null && last && last.role === "user") {
      // refused before any text (too long for the context, an option the server does not allow, ...): the question
      // goes back to the message box, so that the conversation keeps taking turns
      conversation.messages.pop();
      if (!ui.input.value) ui.input.value = last.content;
      fitInput();
    }
    setBusy(false);
    persist();
    if (conversation === current()) {
      renderList();
      renderMessages();
    }
    if (failed !== null) setStatus(`오류: ${failed}`, true);
  }
  if (retry) {
    setStatus("API 키가 필요합니다.", true);
    if (await askKey()) await generate(conversation);
  }
}

function submit() {
  const text = ui.input.value;
  if (!text.trim() || state.streaming) return;
  let conversation = current();
  if (!conversation) {
    conversation = store.newConversation();
    state.conversations.push(conversation);
    state.currentId = conversation.id;
  }
  conversation.messages.push({ role: "user", content: text });
  ui.input.value = "";
  fitInput();
  persist();
  generate(conversation);
}

// -- actions on messages ---------------------------------------------------------------------------------------

async function copy(text, source) {
  try {
    await navigator.clipboard.writeText(text);
    const label = source.textContent;
    source.textContent = "복사됨";
    setTimeout(() => { source.textContent = label; }, 1200);
  } catch {
    setStatus("클립보드에 복사하지 못했습니다.", true);
  }
}

function edit(article, index) {
  const conversation = current();
  const body = article.querySelector(".body");
  const field = el("textarea", "edit");
  field.value = conversation.messages[index].content;
  field.rows = Math.min(12, field.value.split("\n").length + 1);
  const save = el("button", "primary small", "보내기");
  const cancel = el("button", "quiet small", "취소");
  save.type = cancel.type = "button";
  const resend = () => {
    if (!field.value.trim() || state.streaming) return;
    conversation.messages.splice(index); // this message and everything after it
    conversation.messages.push({ role: "user", content: field.value });
    persist();
    generate(conversation);
  };
  save.addEventListener("click", resend);
  cancel.addEventListener("click", renderMessages);
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !belongsToIme(event)) {
      event.preventDefault();
      resend();
    } else if (event.key === "Escape") {
      renderMessages();
    }
  });
  const row = el("div", "row");
  row.append(cancel, save);
  body.replaceChildren(field, row);
  field.focus();
}

ui.messages.addEventListener("click", (event) => {
  const target = event.target.closest("button[data-action]");
  if (!target) return;
  const article = target.closest("article");
  const index = Number(article.dataset.index);
  const conversation = current();
  const message = conversation && conversation.messages[index];
  if (!message) return;
  switch (target.dataset.action) {
    case "copy":
      copy(message.content, target);
      break;
    case "copy-code":
      copy(target.parentElement.querySelector("pre").textContent, target);
      break;
    case "edit":
      if (!state.streaming) edit(article, index);
      break;
    case "regenerate":
      if (!state.streaming && index === conversation.messages.length - 1) {
        conversation.messages.pop();
        generate(conversation);
      }
      break;
  }
});

// -- the rest of the page --------------------------------------------------------------------------------------

/** The message box grows with its text, up to 240 px; then it scrolls. */
function fitInput() {
  ui.input.style.height = "auto";
  const height = ui.input.scrollHeight + ui.input.offsetHeight - ui.input.clientHeight;
  ui.input.style.height = `${Math.min(height, 240)}px`;
  ui.input.style.overflowY = height > 240 ? "auto" : "hidden";
}

ui.input.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey || belongsToIme(event)) return; // Shift+Enter: a new line
  event.preventDefault();
  submit();
});
ui.input.addEventListener("input", fitInput);
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
ui.stop.addEventListener("click", () => state.streaming && state.streaming.controller.abort());

ui.newChat.addEventListener("click", () => {
  const existing = current();
  if (existing && !existing.messages.length) {
    ui.input.focus();
    return;
  }
  const conversation = store.newConversation();
  state.conversations.push(conversation);
  select(conversation.id);
  persist();
  ui.input.focus();
});

ui.list.addEventListener("click", (event) => {
  const open = event.target.closest("button[data-id]");
  if (open) {
    select(open.dataset.id);
    return;
  }
  const remove = event.target.closest("button[data-remove]");
  if (!remove) return;
  const id = remove.dataset.remove;
  if (state.streaming && state.streaming.conversation.id === id) state.streaming.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = null;
  persist();
  renderList();
  renderMessages();
});

function showSettings() {
  ui.system.value = state.settings.system;
  ui.temperature.value = String(state.settings.temperature);
  ui.temperatureValue.textContent = Number(state.settings.temperature).toFixed(2);
  ui.maxTokens.value = String(state.settings.maxTokens);
}

function readSettings() {
  const temperature = Number(ui.temperature.value);
  const maxTokens = Math.round(Number(ui.maxTokens.value));
  state.settings = {
    system: ui.system.value,
    temperature: Number.isFinite(temperature) ? temperature : store.DEFAULT_SETTINGS.temperature,
    maxTokens: Number.isFinite(maxTokens) && maxTokens >= 1 ? maxTokens : store.DEFAULT_SETTINGS.maxTokens,
  };
  ui.temperatureValue.textContent = state.settings.temperature.toFixed(2);
  store.saveSettings(state.settings);
}

for (const field of [ui.system, ui.temperature, ui.maxTokens]) field.addEventListener("input", readSettings);
ui.changeKey.addEventListener("click", async () => {
  if (await askKey()) await connect();
});

ui.theme.addEventListener("click", () => {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  try {
    localStorage.setItem("synatra.theme", root.dataset.theme);
  } catch {
    // storage disabled: the choice lasts until the page is closed
  }
});

ui.toggleSidebar.addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
window.addEventListener("pagehide", () => state.streaming && persist()); // a reload mid-reply keeps what arrived

showSettings();
fitInput();
if (!current()) state.currentId = state.conversations.length ? state.conversations.at(-1).id : null;
renderList();
renderMessages();
connect();
