// The messages between the chat webview and the extension host.
import type { Thread } from "../protocol";
import type { ChatEvent, ChatState } from "./model";

export interface Attachment {
  label: string;
}

export type ToWebview =
  | { type: "state"; state: ChatState; attachment: Attachment | null; draft: string }
  | { type: "event"; event: ChatEvent }
  | { type: "attachment"; attachment: Attachment | null }
  | { type: "threads"; threads: Thread[]; currentId: string | null }
  | { type: "error"; text: string }
  | { type: "focus" };

export type FromWebview =
  | { type: "ready" }
  | { type: "send"; text: string }
  | { type: "draft"; text: string }
  | { type: "stop" }
  | { type: "newThread" }
  | { type: "listThreads" }
  | { type: "openThread"; threadId: string }
  | { type: "openAgent"; agent: string }
  | { type: "openLink"; href: string }
  | { type: "attachSelection" }
  | { type: "clearAttachment" }
  | { type: "copy"; text: string }
  | { type: "retry"; agent: string }
  | { type: "openSetting"; key: string };
