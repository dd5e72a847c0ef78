// Names the extension uses on top of the generated protocol types.
import type { Agent, ForkyardNotifications, ForkyardRequests } from "./protocol.generated";

export * from "./protocol.generated";

export type AgentState = Agent["state"];
export type RequestMethod = keyof ForkyardRequests;
export type NotificationMethod = keyof ForkyardNotifications;
export type ParamsOf<M extends RequestMethod> = ForkyardRequests[M]["params"];
export type ResultOf<M extends RequestMethod> = ForkyardRequests[M]["result"];

/** States in which an agent will still change by itself. */
export const ACTIVE_STATES: ReadonlySet<AgentState> = new Set(["queued", "starting", "running"]);

/** What the server's `experimental.forkyard` capability holds (see lifecycle.py). */
export interface ServerCapabilities {
  version: number;
  roles: string[];
  backends: string[];
  backendDetails?: { name: string; available: boolean; reason?: string | null }[];
}
