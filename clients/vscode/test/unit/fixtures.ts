import type { Agent } from "../../src/protocol";

let counter = 0;

/** An agent as the server sends it, with only what a test cares about given. */
export function agent(fields: Partial<Agent> & Pick<Agent, "state">): Agent {
  counter += 1;
  const number = fields.number ?? counter;
  return {
    id: `agent-${number}`,
    number,
    title: `task ${number}`,
    task: `echo ${number}`,
    role: "worker",
    backend: "command",
    baseRef: "0123456789abcdef",
    createdAt: "2025-01-01T00:00:00Z",
    updatedAt: "2025-01-01T00:00:00Z",
    changes: { files: 0, additions: 0, deletions: 0 },
    ...fields,
  };
}
