/**
 * Write legato agents in TypeScript.
 *
 * An agent is an async function from a {@link Task} to its JSON output; a
 * {@link Worker} serves one or more of them from a legato gateway: it
 * long-polls for their tasks, runs them with a concurrency cap, heartbeats
 * while they run, reports each result, and drains on SIGTERM.
 *
 * ```ts
 * import { Worker } from "legato-agent";
 * const worker = new Worker({
 *   url: "http://127.0.0.1:8080",
 *   agents: { reviewer: async (task) => ({ approved: true }) },
 * });
 * await worker.run();
 * ```
 *
 * {@link createPushHandler} serves the same functions as push agents: a Node
 * `http` handler legato POSTs signed tasks to.
 */

export type { ChatMessage, ChatOptions, ChatReply, ToolCall } from "./chat.js";
export { ProtocolError } from "./client.js";
export { type Entity, EntityOperationError } from "./entities.js";
export { Output } from "./output.js";
export {
  type PushHandlerOptions,
  SignatureError,
  createPushHandler,
  verify,
} from "./push.js";
export {
  Asked,
  type AskOptions,
  FatalError,
  RetryableError,
  type Handler,
  type Task,
  type Usage,
} from "./task.js";
export { Worker, type WorkerOptions } from "./worker.js";
