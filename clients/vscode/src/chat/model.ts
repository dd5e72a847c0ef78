// One thread as the chat view shows it, folded from the server's notifications. Pure, so
// streaming, queueing and de-duplication are unit-tested; the webview renders from it.
import type {
  Agent,
  ChatDeltaNotification,
  ChatTurnNotification,
  Message,
  Thread,
} from "../protocol";

export type TurnState = ChatTurnNotification["state"];

export interface ViewMessage extends Message {
  /** The reply is still arriving through `forkyard/chat/delta`. */
  streaming?: boolean;
}

/** What the chat shows of an agent now, beside its latest line in the thread. */
export interface AgentBrief {
  id: string;
  number: number;
  state: Agent["state"];
  progress: string | null;
}

export interface ChatState {
  thread: Thread | null;
  messages: ViewMessage[];
  turns: Record<string, { state: TurnState; error?: string | null }>;
  /** Agents by id, kept current from `forkyard/agent/changed`: their lines stay true. */
  agents?: Record<string, AgentBrief>;
}

export function emptyChat(): ChatState {
  return { thread: null, messages: [], turns: {} };
}

export function agentBrief(agent: Agent): AgentBrief {
  return { id: agent.id, number: agent.number, state: agent.state, progress: agent.progress?.message ?? null };
}

/** A thread read from the server (`forkyard/thread/read`). */
export function loadThread(thread: Thread, messages: Message[]): ChatState {
  return { thread, messages: messages.map((m) => ({ ...m })), turns: {} };
}

export function applyAgent(state: ChatState, agent: AgentBrief): ChatState {
  return { ...state, agents: { ...(state.agents ?? {}), [agent.id]: agent } };
}

/** The id of the newest event message of each agent: the one that shows its live state. */
export function latestAgentLines(state: ChatState): Set<string> {
  const seen = new Map<string, string>();
  for (const m of state.messages) if (m.role === "event" && m.agentId) seen.set(m.agentId, m.id);
  return new Set(seen.values());
}

/** States a finished run can be retried from (`forkyard/agent/retry`). */
export const RETRYABLE: ReadonlySet<string> = new Set(["failed", "interrupted", "cancelled"]);

export function applyMessage(state: ChatState, message: Message): ChatState {
  if (!state.thread || message.threadId !== state.thread.id) return state;
  const index = state.messages.findIndex((m) => m.id === message.id);
  const messages = state.messages.slice();
  if (index >= 0) messages[index] = { ...message };
  else messages.push({ ...message });
  return { ...state, messages };
}

export function applyDelta(state: ChatState, delta: ChatDeltaNotification): ChatState {
  if (!state.thread || delta.threadId !== state.thread.id) return state;
  const messages = state.messages.slice();
  const index = messages.findIndex((m) => m.id === delta.messageId);
  if (index >= 0) {
    const current = messages[index];
    // A delta arriving after the complete message (it never should) must not duplicate text.
    if (!current.streaming) return state;
    messages[index] = { ...current, text: current.text + delta.delta };
  } else {
    messages.push({
      id: delta.messageId,
      threadId: delta.threadId,
      turnId: delta.turnId,
      role: "assistant",
      text: delta.delta,
      createdAt: new Date().toISOString(),
      streaming: true,
    });
  }
  return { ...state, messages };
}

export function applyTurn(state: ChatState, turn: ChatTurnNotification): ChatState {
  if (!state.thread || turn.threadId !== state.thread.id) return state;
  const turns = { ...state.turns, [turn.turnId]: { state: turn.state, error: turn.error ?? null } };
  let messages = state.messages;
  if (turn.state !== "running" && turn.state !== "queued") {
    // The final `forkyard/chat/message` replaces the streamed text; if it never comes
    // (the server died), at least stop showing the reply as in progress.
    messages = messages.map((m) => (m.turnId === turn.turnId && m.streaming ? { ...m, streaming: false } : m));
  }
  return { ...state, turns, messages };
}

/** Whether a turn of this thread runs or waits: the view offers Stop then. */
export function isBusy(state: ChatState): boolean {
  return Object.values(state.turns).some((t) => t.state === "running" || t.state === "queued");
}

/** The state of the turn a user message started, for the "queued" badge. */
export function turnStateOf(state: ChatState, message: Message): TurnState | undefined {
  return message.turnId ? state.turns[message.turnId]?.state : undefined;
}

/** A notification for another thread may still create this one: see ChatHost's buffer. */
export type ChatEvent =
  | { kind: "agent"; agent: AgentBrief }
  | { kind: "message"; message: Message }
  | { kind: "delta"; delta: ChatDeltaNotification }
  | { kind: "turn"; turn: ChatTurnNotification };

export function threadOf(event: ChatEvent): string | undefined {
  switch (event.kind) {
    case "agent":
      return undefined;
    case "message":
      return event.message.threadId;
    case "delta":
      return event.delta.threadId;
    case "turn":
      return event.turn.threadId;
  }
}

export function applyEvent(state: ChatState, event: ChatEvent): ChatState {
  switch (event.kind) {
    case "agent":
      return applyAgent(state, event.agent);
    case "message":
      return applyMessage(state, event.message);
    case "delta":
      return applyDelta(state, event.delta);
    case "turn":
      return applyTurn(state, event.turn);
  }
}
