// A real HTTP server on 127.0.0.1 speaking the OpenAI chat completions streaming format,
// scripted by the test: the chat view's streaming, queueing and Stop are tested against
// the server's real model client, with no model and no network.
import * as http from "node:http";
import type { AddressInfo } from "node:net";

export interface Reply {
  /** Sent as separate deltas. */
  chunks: string[];
  /** Keep the stream open after the chunks until `release()` or the client leaves. */
  hold?: boolean;
}

export interface FakeModel {
  baseUrl: string;
  script(...replies: Reply[]): void;
  /** The last user message of each request, in order. */
  requests: string[];
  /** Each request's whole JSON body, in order. */
  bodies: string[];
  /** Resolves when the held reply has sent its chunks. */
  holding(): Promise<void>;
  release(): void;
  close(): Promise<void>;
}

function chunk(delta: Record<string, unknown>, finish: string | null = null): string {
  const body = {
    id: "chatcmpl-fake",
    object: "chat.completion.chunk",
    created: 0,
    model: "fake",
    choices: [{ index: 0, delta, finish_reason: finish }],
  };
  return `data: ${JSON.stringify(body)}\n\n`;
}

export async function startFakeModel(): Promise<FakeModel> {
  const replies: Reply[] = [];
  const requests: string[] = [];
  const bodies: string[] = [];
  let release: (() => void) | undefined;
  let held: () => void = () => undefined;
  let holdingPromise = new Promise<void>((resolve) => (held = resolve));

  const server = http.createServer((request, response) => {
    let body = "";
    request.on("data", (data: Buffer) => (body += data.toString()));
    request.on("end", () => {
      if (!request.url?.endsWith("/chat/completions")) {
        response.writeHead(404).end();
        return;
      }
      bodies.push(body);
      const messages = (JSON.parse(body) as { messages: { role: string; content: unknown }[] }).messages;
      const users = messages.filter((m) => m.role === "user");
      requests.push(String(users[users.length - 1]?.content ?? ""));
      const reply = replies.shift() ?? { chunks: ["(no scripted reply)"] };
      response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      response.write(chunk({ role: "assistant", content: "" }));
      for (const text of reply.chunks) response.write(chunk({ content: text }));
      const finish = () => {
        if (response.writableEnded || response.destroyed) return;
        response.write(chunk({}, "stop"));
        response.write(
          `data: ${JSON.stringify({ id: "chatcmpl-fake", object: "chat.completion.chunk", created: 0, model: "fake", choices: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } })}\n\n`,
        );
        response.end("data: [DONE]\n\n");
      };
      if (reply.hold) {
        release = finish;
        response.on("close", () => (release = undefined));
        held();
      } else {
        finish();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    bodies,
    script: (...more) => replies.push(...more),
    holding: () => holdingPromise,
    release: () => {
      release?.();
      release = undefined;
      holdingPromise = new Promise<void>((resolve) => (held = resolve));
    },
    close: () =>
      new Promise<void>((resolve) => {
        release?.();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
