// Names the extension uses on top of the generated protocol types.
import type { Agent, ForkyardNotifications, ForkyardRequests } from "./protocol.generated";

export * from "./protocol.generated";

export type AgentState = Agent["state"];
export type RequestMethod = keyof ForkyardRequests;
export type NotificationMethod = keyof ForkyardNotifications;
export type ParamsOf<M extends RequestMethod> = ForkyardRequests[M]["params"];
export type ResultOf<M extends RequestMethod> = ForkyardRequests[M]["result"];

/** States in which an agent holds one of the server's `maxParallelAgents` slots: the
 * same set as `ACTIVE_STATES` of `forkyard_protocol.models` (a queued agent holds none). */
export const ACTIVE_STATES: ReadonlySet<AgentState> = new Set(["starting", "running"]);

/** States an agent leaves only when someone acts on it (apply, discard, a follow-up): the
 * same set as `FINAL_STATES` of `forkyard_protocol.models`. */
export const FINAL_STATES: ReadonlySet<AgentState> = new Set([
  "done",
  "applied",
  "discarded",
  "failed",
  "cancelled",
  "interrupted",
]);

/** States in which an agent still changes by itself, so it can be cancelled: queued or
 * active. */
export const CANCELLABLE_STATES: ReadonlySet<AgentState> = new Set(["queued", ...ACTIVE_STATES]);
