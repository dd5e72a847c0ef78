// The chat commands the server understands without a model (PROTOCOL.md, "Chat
// commands"), and the completion the input offers for them.

export interface SlashCommand {
  name: string;
  /** What follows the name, as shown in the completion list. */
  usage: string;
  description: string;
}

export const SLASH_COMMANDS: readonly SlashCommand[] = [
  { name: "run", usage: "<shell command>", description: "run a command in a background worktree" },
  { name: "dispatch", usage: "[--role R] <task>", description: "dispatch an agent" },
  { name: "agents", usage: "", description: "list the agents" },
  { name: "status", usage: "<n>", description: "an agent's state, summary and log" },
  { name: "diff", usage: "<n>", description: "an agent's diff" },
  { name: "apply", usage: "<n>", description: "apply an agent's changes" },
  { name: "discard", usage: "<n>", description: "discard an agent's worktree" },
  { name: "cancel", usage: "<n>", description: "cancel a running agent" },
  { name: "help", usage: "", description: "the commands" },
];

/** Commands matching what is typed, while the input is a slash and a partial name. */
export function completeSlash(input: string): SlashCommand[] {
  const match = /^\/([a-z]*)$/.exec(input);
  if (!match) return [];
  const typed = match[1];
  return SLASH_COMMANDS.filter((c) => c.name.startsWith(typed));
}

/** The input after accepting a completion: the name and a space when arguments follow. */
export function acceptCompletion(command: SlashCommand): string {
  return `/${command.name}${command.usage ? " " : ""}`;
}
