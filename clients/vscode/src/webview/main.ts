// The chat webview's script: renders the thread the host sends, streams replies in, and
// keeps the input usable at all times (a message sent while a reply streams is queued by
// the server and shown as queued here).
import { applyEvent, type ChatEvent, type ChatState, emptyChat, isBusy } from "../chat/model";
import type { FromWebview, ToWebview } from "../chat/messages";
import { acceptCompletion, completeSlash, type SlashCommand } from "../chat/slash";
import { escapeHtml, renderMessage } from "./render";

interface VsCodeApi {
  postMessage(message: FromWebview): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

const vscode = acquireVsCodeApi();
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const messagesEl = $<HTMLElement>("messages");
const input = $<HTMLTextAreaElement>("input");
const sendButton = $<HTMLButtonElement>("send");
const stopButton = $<HTMLButtonElement>("stop");
const completionsEl = $<HTMLElement>("completions");
const attachmentEl = $<HTMLElement>("attachment");
const titleEl = $<HTMLElement>("thread-title");

let state: ChatState = emptyChat();
let completions: SlashCommand[] = [];
let selected = 0;
let renderScheduled = false;
const dirty = new Set<string>();

function send(message: FromWebview): void {
  vscode.postMessage(message);
}

/** Set when the person sends: their message and the reply are what they look at next,
 * wherever they had scrolled to. */
let stickUntil = 0;

function nearBottom(): boolean {
  return Date.now() < stickUntil || messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 40;
}

function toBottom(): void {
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function renderAll(): void {
  const stick = nearBottom();
  titleEl.textContent = state.thread ? state.thread.title : "New chat";
  if (state.messages.length === 0) {
    messagesEl.innerHTML =
      '<div class="empty"><p>Ask Forkyard to do something, or run a command in the background:</p>' +
      "<p><code>/run npm test</code> · <code>/dispatch add type hints</code> · <code>/agents</code> · <code>/help</code></p></div>";
  } else {
    messagesEl.innerHTML = state.messages.map((m) => renderMessage(m, state)).join("");
  }
  dirty.clear();
  updateButtons();
  if (stick) messagesEl.scrollTop = messagesEl.scrollHeight;
}

/** Streaming: re-render only the messages that changed, once per frame. */
function scheduleRender(ids: string[]): void {
  ids.forEach((id) => dirty.add(id));
  if (renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(() => {
    renderScheduled = false;
    const stick = nearBottom();
    for (const id of dirty) {
      const message = state.messages.find((m) => m.id === id);
      const existing = messagesEl.querySelector(`[data-id="${CSS.escape(id)}"]`);
      if (!message) continue;
      const html = renderMessage(message, state);
      if (existing) existing.outerHTML = html;
      else if (messagesEl.querySelector(".empty")) {
        messagesEl.innerHTML = html;
      } else messagesEl.insertAdjacentHTML("beforeend", html);
    }
    dirty.clear();
    updateButtons();
    if (stick) messagesEl.scrollTop = messagesEl.scrollHeight;
  });
}

/** The messages an event changes: a turn's state shows on its user message and reply. */
function changedMessages(event: ChatEvent): string[] {
  switch (event.kind) {
    case "agent":
      return state.messages.filter((m) => m.role === "event" && m.agentId === event.agent.id).map((m) => m.id);
    case "turn":
      return state.messages.filter((m) => m.turnId === event.turn.turnId).map((m) => m.id);
    case "message":
      return [event.message.id];
    case "delta":
      return [event.delta.messageId];
  }
}

function updateButtons(): void {
  stopButton.hidden = !isBusy(state);
}

window.addEventListener("message", (event: MessageEvent<ToWebview>) => {
  const message = event.data;
  switch (message.type) {
    case "state":
      state = message.state;
      if (!input.value) input.value = message.draft;
      showAttachment(message.attachment);
      renderAll();
      break;
    case "event": {
      const before = state;
      state = applyEvent(state, message.event);
      if (state === before) break;
      scheduleRender(changedMessages(message.event));
      break;
    }
    case "attachment":
      showAttachment(message.attachment);
      break;
    case "threads":
      break;
    case "error":
      messagesEl.insertAdjacentHTML("beforeend", `<div class="message message-error">${escapeHtml(message.text)}</div>`);
      messagesEl.scrollTop = messagesEl.scrollHeight;
      break;
    case "focus":
      input.focus();
      break;
  }
});

function showAttachment(attachment: { label: string } | null): void {
  attachmentEl.hidden = !attachment;
  $<HTMLElement>("attachment-label").textContent = attachment ? `📎 ${attachment.label}` : "";
}

function submit(): void {
  const text = input.value.trim();
  if (!text) return;
  send({ type: "send", text });
  input.value = "";
  hideCompletions();
  stickUntil = Date.now() + 5000;
  toBottom();
}

function showCompletions(): void {
  completions = completeSlash(input.value);
  if (completions.length === 0) {
    hideCompletions();
    return;
  }
  selected = Math.min(selected, completions.length - 1);
  completionsEl.innerHTML = completions
    .map(
      (c, i) =>
        `<div class="completion${i === selected ? " selected" : ""}" role="option" data-index="${i}">` +
        `<span class="name">/${escapeHtml(c.name)}</span> <span class="usage">${escapeHtml(c.usage)}</span>` +
        `<span class="description">${escapeHtml(c.description)}</span></div>`,
    )
    .join("");
  completionsEl.hidden = false;
}

function hideCompletions(): void {
  completions = [];
  selected = 0;
  completionsEl.hidden = true;
}

function accept(index: number): void {
  const command = completions[index];
  if (!command) return;
  input.value = acceptCompletion(command);
  hideCompletions();
  input.focus();
}

let draftTimer: ReturnType<typeof setTimeout> | undefined;
input.addEventListener("input", () => {
  showCompletions();
  clearTimeout(draftTimer);
  draftTimer = setTimeout(() => send({ type: "draft", text: input.value }), 300);
});

input.addEventListener("keydown", (event) => {
  if (completions.length > 0) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const step = event.key === "ArrowDown" ? 1 : -1;
      selected = (selected + step + completions.length) % completions.length;
      showCompletions();
      event.preventDefault();
      return;
    }
    // Enter on a complete command without arguments (`/agents`) sends it; otherwise
    // Tab and Enter complete the name.
    const complete = input.value === acceptCompletion(completions[selected]);
    if (event.key === "Tab" || (event.key === "Enter" && !event.shiftKey && !complete)) {
      accept(selected);
      event.preventDefault();
      return;
    }
    if (event.key === "Escape") {
      hideCompletions();
      event.preventDefault();
      return;
    }
  }
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});

completionsEl.addEventListener("mousedown", (event) => {
  const item = (event.target as HTMLElement).closest<HTMLElement>(".completion");
  if (item) {
    event.preventDefault();
    accept(Number(item.dataset.index));
  }
});

sendButton.addEventListener("click", submit);
stopButton.addEventListener("click", () => send({ type: "stop" }));
$<HTMLButtonElement>("attach").addEventListener("click", () => send({ type: "attachSelection" }));
$<HTMLButtonElement>("clear-attachment").addEventListener("click", () => send({ type: "clearAttachment" }));

messagesEl.addEventListener("click", (event) => {
  const target = event.target as HTMLElement;
  const agentLink = target.closest<HTMLElement>(".agent-link");
  if (agentLink?.dataset.agent) {
    event.preventDefault();
    send({ type: "openAgent", agent: agentLink.dataset.agent });
    return;
  }
  const link = target.closest<HTMLElement>(".external-link");
  if (link?.dataset.href) {
    event.preventDefault();
    send({ type: "openLink", href: link.dataset.href });
    return;
  }
  const retry = target.closest<HTMLElement>(".retry-agent");
  if (retry?.dataset.agent) {
    event.preventDefault();
    send({ type: "retry", agent: retry.dataset.agent });
    return;
  }
  const setting = target.closest<HTMLElement>(".setting-link");
  if (setting?.dataset.setting) {
    event.preventDefault();
    send({ type: "openSetting", key: setting.dataset.setting });
    return;
  }
  const copy = target.closest<HTMLElement>(".copy-code");
  if (copy) {
    const code = copy.parentElement?.querySelector("code")?.textContent ?? "";
    send({ type: "copy", text: code });
  }
});

renderAll();
send({ type: "ready" });
