/**
 * Push agents in TypeScript: a Node `http` request handler legato POSTs tasks
 * to. Each request is a CloudEvent (binary mode) whose body is the task,
 * signed per Standard Webhooks with the gateway's `gateway.push.signing_secret`;
 * the handler refuses any request whose signature or timestamp does not hold
 * (401), runs the agent function and answers with its outcome: `200` with the
 * output, `422` for a `FatalError` (the step fails), `500` for any other error
 * (retried under the step's policy). With `respond: "callback"` it answers
 * `202` at once and reports later through the task's `callbackUrl`.
 */

import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import { journalUrl, postOutput, putJournal, questionBody } from "./client.js";
import { entitiesAt } from "./entities.js";
import {
  type AskOptions,
  type Handler,
  RetryableError,
  type Usage,
  type WireTask,
  runHandler,
  taskOf,
} from "./task.js";

/** How far a request's timestamp may be from now (the specification's five minutes). */
export const TOLERANCE_S = 5 * 60;
const MAX_BODY = 16 * 1024 * 1024;

/** The request is not signed by the gateway (or too old). */
export class SignatureError extends Error {
  override name = "SignatureError";
}

function keyOf(secret: string): Buffer {
  if (!secret.startsWith("whsec_")) {
    throw new Error("signingSecret must start with whsec_");
  }
  return Buffer.from(secret.slice("whsec_".length), "base64");
}

/** Checks a Standard Webhooks signature; throws `SignatureError`. */
export function verify(
  secret: string,
  headers: Record<string, string | string[] | undefined>,
  body: Buffer,
  nowSeconds = Date.now() / 1000,
): void {
  const header = (name: string): string => {
    const value = headers[name];
    if (typeof value !== "string") throw new SignatureError(`missing ${name}`);
    return value;
  };
  const id = header("webhook-id");
  const timestamp = Number(header("webhook-timestamp"));
  if (!Number.isInteger(timestamp)) throw new SignatureError("malformed webhook-timestamp");
  if (Math.abs(nowSeconds - timestamp) > TOLERANCE_S) {
    throw new SignatureError("timestamp too far from now");
  }
  const expected = createHmac("sha256", keyOf(secret))
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
  for (const candidate of header("webhook-signature").split(" ")) {
    const [version, signature] = candidate.split(",", 2);
    if (version !== "v1" || signature === undefined) continue;
    const given = Buffer.from(signature, "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected)) return;
  }
  throw new SignatureError("no valid signature");
}

export interface PushHandlerOptions {
  /** Agent name -> async function. */
  agents: Record<string, Handler>;
  /** The gateway's `gateway.push.signing_secret` (`whsec_…`). */
  signingSecret: string;
  /** `sync` (default): answer with the outcome; `callback`: 202, then report. */
  respond?: "sync" | "callback";
}

function answer(res: ServerResponse, status: number, body: unknown, usage?: Usage): void {
  const payload = JSON.stringify(body ?? null);
  const headers: Record<string, string | number> = {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(payload),
  };
  // What the attempt spent, which the gateway counts.
  if (usage !== undefined) headers["legato-usage"] = JSON.stringify(usage);
  res.writeHead(status, headers);
  res.end(payload);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > MAX_BODY) throw new Error("body too large");
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

async function callBack(url: string, what: string, body: unknown): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const response = await fetch(`${url}/${what}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      await response.body?.cancel();
      if (response.status < 500) return;
    } catch {
      // Sent again below.
    }
    await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
  }
}

/** A `(req, res)` handler for `http.createServer` serving `agents` as push agents. */
export function createPushHandler(
  options: PushHandlerOptions,
): (req: IncomingMessage, res: ServerResponse) => void {
  keyOf(options.signingSecret);
  const respond = options.respond ?? "sync";
  return (req, res) => {
    void (async () => {
      if (req.method !== "POST") return answer(res, 405, { detail: "POST tasks here" });
      let body: Buffer;
      try {
        body = await readBody(req);
        verify(options.signingSecret, req.headers, body);
      } catch (e) {
        return answer(res, 401, { detail: String(e) });
      }
      let wire: WireTask & { callbackUrl?: string };
      let handler: Handler | undefined;
      try {
        wire = JSON.parse(body.toString("utf8")) as WireTask & { callbackUrl?: string };
        handler = options.agents[wire.agent];
      } catch {
        return answer(res, 422, { detail: "not a task" });
      }
      if (handler === undefined) {
        return answer(res, 422, { detail: `agent ${wire.agent} is not served here` });
      }
      const callback = wire.callbackUrl ?? "";
      const abort = new AbortController();
      const progress = async (message?: string, data?: unknown): Promise<void> => {
        if (callback === "") return;
        const body: Record<string, unknown> = {};
        if (message !== undefined) body["message"] = message;
        if (data !== undefined) body["data"] = data;
        await callBack(callback, "heartbeat", body);
      };
      const record = async (name: string, value: unknown): Promise<unknown> => {
        if (callback === "") {
          throw new RetryableError("the task has no callbackUrl to record its steps at");
        }
        const answer = await putJournal(journalUrl(callback, name), {}, value);
        if (!answer.wanted) {
          throw new RetryableError(`the attempt is no longer wanted: ${answer.detail ?? ""}`);
        }
        return answer.value;
      };
      const ask = async (name: string, question: string, options: AskOptions): Promise<void> => {
        if (callback === "") {
          throw new RetryableError("the task has no callbackUrl to ask at");
        }
        const response = await fetch(`${callback}/ask`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(questionBody(name, question, options)),
        });
        if (response.status !== 200) {
          throw new RetryableError(`question "${name}": ${response.status} ${await response.text()}`);
        }
      };
      const output = async (call: string, seq: number, text: string): Promise<void> => {
        if (callback !== "") await postOutput(`${callback}/output`, {}, call, seq, text);
      };
      const task = taskOf(wire, abort.signal, progress, record, ask, output, entitiesAt(callback, {}));
      if (respond === "callback" && callback !== "") {
        answer(res, 202, { accepted: wire.idempotencyKey });
        const outcome = await runHandler(handler, task);
        const usage = task.usage;
        if ("asked" in outcome) return;
        if ("output" in outcome) {
          await callBack(callback, "complete", { output: outcome.output, ...(usage && { usage }) });
        } else {
          await callBack(callback, "fail", {
            message: outcome.error,
            retryable: outcome.retryable,
            ...(usage && { usage }),
          });
        }
        return;
      }
      res.once("close", () => abort.abort(new Error("the gateway hung up")));
      const outcome = await runHandler(handler, task);
      if ("asked" in outcome) return answer(res, 202, { asked: outcome.asked }, task.usage);
      return "output" in outcome
        ? answer(res, 200, outcome.output, task.usage)
        : answer(res, outcome.retryable ? 500 : 422, { detail: outcome.error }, task.usage);
    })().catch((e: unknown) => {
      if (!res.headersSent) answer(res, 500, { detail: String(e) });
    });
  };
}
