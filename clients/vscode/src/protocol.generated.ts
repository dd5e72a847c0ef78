// GENERATED from protocol/schema/forkyard.schema.json by scripts/gen-protocol.mjs.
// Do not edit: change the Python models, run `uv run forkyard schema`, then
// `npm run gen:protocol` in clients/vscode.
/* eslint-disable */

export const PROTOCOL_VERSION = 1;

export interface ForkyardProtocolObjects {
  Agent?: Agent;
  AgentApplyAllResult?: AgentApplyAllResult;
  AgentApplyParams?: AgentApplyParams;
  AgentApplyResult?: AgentApplyResult;
  AgentChangedNotification?: AgentChangedNotification;
  AgentCompareResult?: AgentCompareResult;
  AgentDiffResult?: AgentDiffResult;
  AgentDispatchParams?: AgentDispatchParams;
  AgentDispatchResult?: AgentDispatchResult;
  AgentFileParams?: AgentFileParams;
  AgentFileResult?: AgentFileResult;
  AgentIdsParams?: AgentIdsParams;
  AgentListResult?: AgentListResult;
  AgentMessageParams?: AgentMessageParams;
  AgentPlacement?: AgentPlacement;
  AgentReadResult?: AgentReadResult;
  AgentRebaseParams?: AgentRebaseParams;
  AgentRebaseResult?: AgentRebaseResult;
  AgentRef?: AgentRef;
  AgentResult?: AgentResult;
  BackendInfo?: BackendInfo;
  ChangeCounts?: ChangeCounts;
  ChatContext?: ChatContext;
  ChatDeltaNotification?: ChatDeltaNotification;
  ChatInterruptParams?: ChatInterruptParams;
  ChatMessageNotification?: ChatMessageNotification;
  ChatParams?: ChatParams;
  ChatResult?: ChatResult;
  ChatTurnNotification?: ChatTurnNotification;
  CheckResult?: CheckResult;
  CompareEntry?: CompareEntry;
  Conflict?: Conflict;
  Empty?: Empty;
  FileChange?: FileChange;
  ForkyardCapabilities?: ForkyardCapabilities;
  Hunk?: Hunk;
  LogEntry?: LogEntry;
  Message?: Message;
  ModelSummary?: ModelSummary;
  NoticeNotification?: NoticeNotification;
  Overlap?: Overlap;
  PairOverlap?: PairOverlap;
  Position?: Position;
  Progress?: Progress;
  Range?: Range;
  ServerStatsParams?: ServerStatsParams;
  ServerStatsResult?: ServerStatsResult;
  StatusParams?: StatusParams;
  StatusResult?: StatusResult;
  Thread?: Thread;
  ThreadListResult?: ThreadListResult;
  ThreadReadParams?: ThreadReadParams;
  ThreadReadResult?: ThreadReadResult;
  TrustResult?: TrustResult;
  Usage?: Usage;
  WorktreeDiskUse?: WorktreeDiskUse;
}
export interface Agent {
  backend: string;
  baseRef: string;
  branch?: string | null;
  budgetUsd?: number | null;
  changes?: ChangeCounts;
  check?: CheckResult | null;
  createdAt: string;
  error?: string | null;
  group?: string | null;
  id: string;
  maxTokens?: number | null;
  number: number;
  overlaps?: Overlap[];
  placement?: AgentPlacement;
  progress?: Progress | null;
  role: string;
  state:
    | "queued"
    | "starting"
    | "running"
    | "done"
    | "applied"
    | "discarded"
    | "failed"
    | "cancelled"
    | "interrupted";
  summary?: string | null;
  task: string;
  threadId?: string | null;
  title: string;
  updatedAt: string;
  usage?: Usage | null;
  worktree?: string | null;
}
export interface ChangeCounts {
  additions?: number;
  deletions?: number;
  files?: number;
}
/**
 * The role's `check` command, run in the agent's worktree when it finished (and
 * after a rebase): whether it passed, and the tail of its output.
 */
export interface CheckResult {
  passed: boolean;
  summary?: string;
}
/**
 * Another done agent whose changes touch the same lines as this one's, or lines next
 * to them ("Review across agents"): applying both needs a look.
 */
export interface Overlap {
  agentId: string;
  paths?: string[];
}
/**
 * Where the agent runs ("Cluster" in docs/protocol.md); `node` is the Ray node's
 * address once it is placed there, None while it waits or when it runs locally.
 */
export interface AgentPlacement {
  kind?: "local" | "cluster";
  node?: string | null;
}
export interface Progress {
  message: string;
  percentage?: number | null;
}
/**
 * Tokens a model's calls used and what they cost (docs/protocol.md, "Usage and
 * budgets"); `cost_usd` is None when the model's price is not known, so a client tells
 * "free" from "unknown".
 */
export interface Usage {
  cachedTokens?: number;
  costUsd?: number | null;
  inputTokens?: number;
  outputTokens?: number;
}
/**
 * One result per agent tried, in order; `stoppedAt` the agent whose conflicts
 * stopped the run (nothing of it applied), None when every one applied.
 */
export interface AgentApplyAllResult {
  results: AgentApplyResult[];
  stoppedAt?: string | null;
}
export interface AgentApplyResult {
  applied: boolean;
  conflicts: Conflict[];
  paths: string[];
}
export interface Conflict {
  path: string;
  reason: string;
}
export interface AgentApplyParams {
  agentId: string;
  hunkIds?: string[] | null;
  paths?: string[] | null;
}
export interface AgentChangedNotification {
  agent: Agent;
}
export interface AgentCompareResult {
  agents: CompareEntry[];
  overlaps: PairOverlap[];
}
export interface CompareEntry {
  additions: number;
  agentId: string;
  check?: CheckResult | null;
  deletions: number;
  files: number;
}
export interface PairOverlap {
  a: string;
  b: string;
  paths: string[];
}
export interface AgentDiffResult {
  agentId: string;
  baseRef: string;
  files: FileChange[];
  patch: string;
}
export interface FileChange {
  additions?: number;
  binary?: boolean;
  deletions?: number;
  hunks?: Hunk[];
  oldPath?: string | null;
  path: string;
  status: "added" | "modified" | "deleted" | "renamed";
  uri: string;
}
export interface Hunk {
  header: string;
  id: string;
  newLines: number;
  newStart: number;
  oldLines: number;
  oldStart: number;
  text: string;
}
export interface AgentDispatchParams {
  backend?: string | null;
  baseRef?: string;
  budgetUsd?: number | null;
  count?: number | null;
  includeUncommitted?: boolean;
  maxTokens?: number | null;
  paths?: string[] | null;
  placement?: ("local" | "cluster") | null;
  role?: string;
  task: string;
  threadId?: string | null;
  title?: string | null;
}
/**
 * `agent` is the first of the group; `agents` all of it (one without `count`).
 */
export interface AgentDispatchResult {
  agent: Agent;
  agents?: Agent[];
}
export interface AgentFileParams {
  agentId: string;
  path: string;
}
export interface AgentFileResult {
  text: string | null;
}
/**
 * Params of methods over several agents (`applyAll`, `compare`), in order: ids or
 * numbers as strings.
 */
export interface AgentIdsParams {
  /**
   * @maxItems 100
   */
  agentIds: string[];
}
export interface AgentListResult {
  agents: Agent[];
}
export interface AgentMessageParams {
  agentId: string;
  budgetUsd?: number | null;
  maxTokens?: number | null;
  text: string;
}
export interface AgentReadResult {
  agent: Agent;
  log: LogEntry[];
}
export interface LogEntry {
  kind: string;
  text: string;
  time: string;
}
export interface AgentRebaseParams {
  agentId: string;
  onto?: "HEAD";
}
/**
 * `conflicts`: paths left with conflict markers in the agent's worktree.
 */
export interface AgentRebaseResult {
  agent: Agent;
  conflicts?: string[];
}
/**
 * Params of every method that names one agent: its id, or its number as a string.
 */
export interface AgentRef {
  agentId: string;
}
export interface AgentResult {
  agent: Agent;
}
/**
 * One entry of `experimental.forkyard.backends`: an addition to PROTOCOL.md so that a
 * client can tell the user why a backend cannot be used.
 */
export interface BackendInfo {
  available: boolean;
  kind?: ("builtin" | "external" | "acp") | null;
  name: string;
  reason?: string | null;
}
export interface ChatContext {
  range?: Range | null;
  uri: string;
}
export interface Range {
  end: Position;
  start: Position;
}
export interface Position {
  character: number;
  line: number;
}
export interface ChatDeltaNotification {
  delta: string;
  messageId: string;
  threadId: string;
  turnId: string;
}
export interface ChatInterruptParams {
  threadId: string;
}
export interface ChatMessageNotification {
  message: Message;
}
export interface Message {
  agentId?: string | null;
  createdAt: string;
  id: string;
  role: "user" | "assistant" | "event";
  text: string;
  threadId: string;
  turnId?: string | null;
}
export interface ChatParams {
  context?: ChatContext | null;
  text: string;
  threadId?: string | null;
  workDoneToken?: string | number | null;
}
export interface ChatResult {
  messageId: string;
  threadId: string;
  turnId: string;
}
export interface ChatTurnNotification {
  error?: string | null;
  state: "queued" | "running" | "completed" | "failed" | "interrupted";
  threadId: string;
  turnId: string;
  usage?: Usage | null;
}
/**
 * `{}`: params of list methods and the result of interrupt.
 */
export interface Empty {}
export interface ForkyardCapabilities {
  backendDetails?: BackendInfo[];
  backends: string[];
  roles: string[];
  trusted?: boolean;
  version?: number;
}
/**
 * A configured model as clients may show it: never its key, only the key's name.
 */
export interface ModelSummary {
  apiKeyEnv?: string | null;
  baseUrl?: string | null;
  model: string;
  provider: string;
}
/**
 * An addition to PROTOCOL.md (`forkyard/notice`): an agent's notice as data, sent
 * instead of `window/showMessage` to a client that opts in with
 * `experimental.forkyard.structuredNotices`, so that it recognises a done agent by
 * `kind` and `agentId` rather than by the wording of a message meant for people.
 */
export interface NoticeNotification {
  actions?: ("Show diff" | "Apply" | "Discard")[];
  agent?: Agent | null;
  agentId?: string | null;
  kind: "agentDone" | "agentFailed" | "agentCancelled" | "other";
  level: "info" | "warning" | "error";
  message: string;
}
export interface ServerStatsParams {
  reset?: boolean;
}
/**
 * An addition to PROTOCOL.md: health figures, for benchmarks and `:checkhealth`.
 */
export interface ServerStatsResult {
  agentsQueued: number;
  agentsRunning: number;
  maxLoopStallMs: number;
  models?: {
    [k: string]: ModelSummary;
  };
  uptimeSeconds: number;
  version: string;
}
export interface StatusParams {
  disk?: boolean;
}
/**
 * An addition to PROTOCOL.md (`forkyard/status`): worktrees and the disk they use.
 */
export interface StatusResult {
  ignoredKeys?: string[];
  poolError?: string | null;
  poolReady: number;
  poolSize: number;
  totalDiskBytes: number;
  trustFile?: string | null;
  trusted?: boolean;
  worktreeMode?: ("overlay" | "full") | null;
  worktreeModeReason?: string | null;
  worktrees: WorktreeDiskUse[];
}
/**
 * One folder of Forkyard's worktrees: an agent's, a warm pool's, or one no agent
 * owns ("orphan"), and the disk it takes (its files and git's record of it).
 */
export interface WorktreeDiskUse {
  agentId?: string | null;
  diskBytes: number;
  exists?: boolean;
  kind: "agent" | "pool" | "orphan";
  number?: number | null;
  path: string;
  state?:
    | (
        | "queued"
        | "starting"
        | "running"
        | "done"
        | "applied"
        | "discarded"
        | "failed"
        | "cancelled"
        | "interrupted"
      )
    | null;
}
export interface Thread {
  createdAt: string;
  id: string;
  title: string;
  updatedAt: string;
}
export interface ThreadListResult {
  threads: Thread[];
}
export interface ThreadReadParams {
  threadId: string;
}
export interface ThreadReadResult {
  messages: Message[];
  thread: Thread;
}
/**
 * The result of the `forkyard.trust` command (an addition to PROTOCOL.md).
 */
export interface TrustResult {
  ignoredKeys?: string[];
  root: string;
  trustFile: string;
  trusted: boolean;
}

/** Every request of the protocol: method -> params and result. */
export interface ForkyardRequests {
  "forkyard/agent/apply": { params: AgentApplyParams; result: AgentApplyResult };
  "forkyard/agent/applyAll": { params: AgentIdsParams; result: AgentApplyAllResult };
  "forkyard/agent/cancel": { params: AgentRef; result: AgentResult };
  "forkyard/agent/compare": { params: AgentIdsParams; result: AgentCompareResult };
  "forkyard/agent/diff": { params: AgentRef; result: AgentDiffResult };
  "forkyard/agent/discard": { params: AgentRef; result: AgentResult };
  "forkyard/agent/dispatch": { params: AgentDispatchParams; result: AgentDispatchResult };
  "forkyard/agent/file": { params: AgentFileParams; result: AgentFileResult };
  "forkyard/agent/list": { params: Empty; result: AgentListResult };
  "forkyard/agent/materialize": { params: AgentRef; result: AgentResult };
  "forkyard/agent/message": { params: AgentMessageParams; result: AgentResult };
  "forkyard/agent/read": { params: AgentRef; result: AgentReadResult };
  "forkyard/agent/rebase": { params: AgentRebaseParams; result: AgentRebaseResult };
  "forkyard/agent/retry": { params: AgentRef; result: AgentResult };
  "forkyard/chat": { params: ChatParams; result: ChatResult };
  "forkyard/chat/interrupt": { params: ChatInterruptParams; result: Empty };
  "forkyard/server/stats": { params: ServerStatsParams; result: ServerStatsResult };
  "forkyard/status": { params: StatusParams; result: StatusResult };
  "forkyard/thread/list": { params: Empty; result: ThreadListResult };
  "forkyard/thread/read": { params: ThreadReadParams; result: ThreadReadResult };
}

/** Every server-to-client notification of the protocol: method -> params. */
export interface ForkyardNotifications {
  "forkyard/agent/changed": AgentChangedNotification;
  "forkyard/chat/delta": ChatDeltaNotification;
  "forkyard/chat/message": ChatMessageNotification;
  "forkyard/chat/turn": ChatTurnNotification;
  "forkyard/notice": NoticeNotification;
}
