// Messages to HTML for the chat webview: markdown with highlighted code, agent references
// as links, and nothing a message could use to run script or load a remote resource
// (raw HTML is escaped, images become links, only http(s) links are kept). Pure: the
// webview and the unit tests use the same functions.
import { Marked, type Tokens } from "marked";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import go from "highlight.js/lib/languages/go";
import ini from "highlight.js/lib/languages/ini";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdown from "highlight.js/lib/languages/markdown";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import type { ChatState, ViewMessage } from "../chat/model";
import { latestAgentLines, RETRYABLE, turnStateOf } from "../chat/model";

const LANGUAGES = {
  bash, c, cpp, css, diff, go, ini, java, javascript, json, markdown, python, rust, sql,
  typescript, xml, yaml,
};
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);
hljs.registerAliases(["sh", "shell", "console", "zsh"], { languageName: "bash" });
hljs.registerAliases(["py"], { languageName: "python" });
hljs.registerAliases(["ts", "tsx"], { languageName: "typescript" });
hljs.registerAliases(["js", "jsx", "mjs"], { languageName: "javascript" });
hljs.registerAliases(["toml"], { languageName: "ini" });
hljs.registerAliases(["html", "svg"], { languageName: "xml" });
hljs.registerAliases(["patch"], { languageName: "diff" });
hljs.registerAliases(["yml"], { languageName: "yaml" });
hljs.registerAliases(["rs"], { languageName: "rust" });

export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

export function highlight(code: string, lang: string | undefined): string {
  const name = (lang ?? "").trim().split(/\s+/, 1)[0].toLowerCase();
  if (name && hljs.getLanguage(name)) {
    return hljs.highlight(code, { language: name, ignoreIllegals: true }).value;
  }
  return escapeHtml(code);
}

function safeHref(href: string): string | null {
  return /^https?:\/\//i.test(href) ? href : null;
}

/** `#3` or `agent #3` in prose: a link that opens the agent (numbers are agent ids too). */
const agentReference = {
  name: "agentRef",
  level: "inline" as const,
  start(src: string): number | undefined {
    const index = src.search(/(^|[\s(])#\d/);
    if (index < 0) return undefined;
    return src[index] === "#" ? index : index + 1;
  },
  tokenizer(src: string): Tokens.Generic | undefined {
    const match = /^#(\d+)\b/.exec(src);
    if (!match) return undefined;
    return { type: "agentRef", raw: match[0], number: match[1] };
  },
  renderer(token: Tokens.Generic): string {
    const n = String(token.number);
    return `<a href="#" class="agent-link" data-agent="${n}" title="Open agent #${n}">#${n}</a>`;
  },
};

const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  extensions: [agentReference],
  renderer: {
    html({ text }: Tokens.HTML | Tokens.Tag): string {
      return escapeHtml(text);
    },
    code({ text, lang }: Tokens.Code): string {
      const language = (lang ?? "").trim().split(/\s+/, 1)[0];
      const label = language ? `<span class="code-lang">${escapeHtml(language)}</span>` : "";
      return (
        `<div class="code-block">${label}<button class="copy-code" title="Copy">Copy</button>` +
        `<pre><code class="hljs${language ? ` language-${escapeHtml(language)}` : ""}">` +
        `${highlight(text, language)}</code></pre></div>`
      );
    },
    link({ href, title, tokens }: Tokens.Link): string {
      const text = this.parser.parseInline(tokens);
      const safe = safeHref(href);
      if (!safe) return text;
      const titleAttribute = title ? ` title="${escapeHtml(title)}"` : "";
      return `<a href="#" class="external-link" data-href="${escapeHtml(safe)}"${titleAttribute}>${text}</a>`;
    },
    codespan({ text }: Tokens.Codespan): string {
      // One of our settings, named in a reply (how to set up a model): a button that
      // opens it. Everything else verbatim: the CSS keeps its spaces.
      if (/^forkyard\.[A-Za-z][A-Za-z.]*$/.test(text)) {
        return `<a href="#" class="setting-link" role="button" data-setting="${escapeHtml(text)}" title="Open this setting">${escapeHtml(text)}</a>`;
      }
      return `<code>${escapeHtml(text)}</code>`;
    },
    image({ href, text }: Tokens.Image): string {
      const safe = safeHref(href);
      const label = escapeHtml(text || href);
      return safe ? `<a href="#" class="external-link" data-href="${escapeHtml(safe)}">${label}</a>` : label;
    },
  },
});

export function renderMarkdown(text: string): string {
  return marked.parse(text, { async: false }) as string;
}

const ROLE_LABELS: Record<ViewMessage["role"], string> = {
  user: "You",
  assistant: "Forkyard",
  event: "Agent",
};

/** One message as the chat view shows it. */
export function renderMessage(message: ViewMessage, state: ChatState): string {
  const classes = ["message", `message-${message.role}`];
  const badges: string[] = [];
  if (message.streaming) {
    classes.push("streaming");
  }
  if (message.role === "user") {
    const turn = turnStateOf(state, message);
    if (turn === "queued") {
      classes.push("queued");
      badges.push('<span class="badge">queued</span>');
    }
    if (turn === "interrupted") badges.push('<span class="badge">stopped</span>');
  }
  if (message.role === "assistant" && message.turnId) {
    const turn = state.turns[message.turnId];
    if (turn?.state === "interrupted") badges.push('<span class="badge">interrupted</span>');
    if (turn?.state === "failed") badges.push('<span class="badge error">failed</span>');
  }
  const id = escapeHtml(message.id);
  if (message.role === "event") {
    const agent = message.agentId ? escapeHtml(message.agentId) : "";
    const open = agent
      ? ` <a href="#" class="agent-link open-agent" data-agent="${agent}" title="Open the agent">Open</a>`
      : "";
    // The agent's newest line says where it is now (a line written "is running" before
    // the server stopped reads "interrupted" then), with Retry when it can be.
    const brief = message.agentId ? state.agents?.[message.agentId] : undefined;
    let live = "";
    if (brief && latestAgentLines(state).has(message.id)) {
      const progress = brief.progress && (brief.state === "running" || brief.state === "starting") ? ` · ${escapeHtml(brief.progress)}` : "";
      live = ` <span class="badge agent-state state-${escapeHtml(brief.state)}">${escapeHtml(brief.state)}${progress}</span>`;
      if (RETRYABLE.has(brief.state)) {
        live += ` <a href="#" class="retry-agent" data-agent="${agent}" role="button" title="Run its task again">Retry</a>`;
      }
      classes.push("live");
    }
    return (
      `<div class="${classes.join(" ")}" data-id="${id}" data-agent-id="${agent}"><span class="event-icon">●</span>` +
      `<div class="event-text">${renderMarkdown(message.text)}</div>${live}${open}</div>`
    );
  }
  const body = message.text ? renderMarkdown(message.text) : '<p class="thinking">…</p>';
  return (
    `<div class="${classes.join(" ")}" data-id="${id}">` +
    `<div class="message-header"><span class="author">${ROLE_LABELS[message.role]}</span>${badges.join("")}</div>` +
    `<div class="message-body">${body}</div></div>`
  );
}

export function renderMessages(state: ChatState): string {
  return state.messages.map((m) => renderMessage(m, state)).join("");
}
