/** One attempt of one task, as an agent function sees it. */

import { type ChatMessage, type ChatOptions, type ChatReply, type ToolCall, streamReply } from "./chat.js";
import { ProtocolError } from "./client.js";
import { type Entity, type EntityAccess, entityOf } from "./entities.js";
import { Asked, FatalError, RetryableError } from "./errors.js";
import { Output, type SendOutput } from "./output.js";

export { Asked, FatalError, RetryableError };

/** The task as the gateway hands it out. */
export interface WireTask {
  token: string;
  agent: string;
  instanceId: string;
  tenant?: string;
  workflow: string;
  key: string;
  step: string;
  item?: number;
  iteration?: number;
  attempt: number;
  idempotencyKey: string;
  input: unknown;
  deadline?: string;
  leaseMs: number;
  /** What earlier attempts or deliveries recorded with `step`, by name. */
  journal?: Record<string, unknown>;
  /** Answers to the questions the task asked with `ask`, by name. */
  answers?: Record<string, unknown>;
}

/**
 * One attempt of one task. Delivery is at least once: the same attempt can
 * run twice (a worker lost mid-task), so key anything the agent changes
 * outside by `idempotencyKey`.
 */
export interface Task {
  readonly agent: string;
  readonly instanceId: string;
  readonly tenant: string | undefined;
  readonly workflow: string;
  readonly key: string;
  /** The workflow step this task does (`step` records a step of its own). */
  readonly stepId: string;
  readonly item: number | undefined;
  /** The loop iteration (1 for the first) of a step inside a loop. */
  readonly iteration: number | undefined;
  readonly attempt: number;
  readonly idempotencyKey: string;
  readonly input: unknown;
  /** When the orchestrator stops waiting for this attempt. */
  readonly deadline: Date | undefined;
  /** The worker heartbeats within it (the SDK does, every third). */
  readonly leaseMs: number;
  /**
   * Aborted when the orchestrator no longer wants this attempt (instance
   * terminated, step timed out, saga rolled back) or the worker stops: pass
   * it to `fetch` and the like.
   */
  readonly signal: AbortSignal;
  /** Tells the instance's watchers how the work goes; also renews the lease. */
  progress(message?: string, data?: unknown): Promise<void>;
  /** What earlier attempts or deliveries of this task recorded with `step`. */
  readonly journal: Readonly<Record<string, unknown>>;
  /**
   * Runs `fn` once per task, however often the task is tried: the first
   * time, its JSON result is recorded in the task's journal before `step`
   * resolves; a later attempt or redelivery resolves to the recorded value
   * without calling `fn`. A `fn` that throws is not recorded (it runs again
   * next time). Give each step of a task its own `name`. For model calls
   * and tool calls: a crash at turn seven does not pay for turns one to six
   * again.
   */
  step<T>(name: string, fn: () => Promise<T>): Promise<T>;
  /**
   * Counts what the attempt spent (model tokens, cost) into its result:
   * legato sums it per step and per instance against the instance's
   * budget, which suspends the instance when crossed. Spent inside a
   * `step`, it is counted once however often the task runs.
   */
  addUsage(spent: Usage): void;
  /** What `addUsage` counted so far; undefined when nothing. */
  readonly usage: Usage | undefined;
  /** Answers to the questions this task asked with `ask`, by name. */
  readonly answers: Readonly<Record<string, unknown>>;
  /**
   * Asks a person `question`, answered by the event `name` (its data must
   * fit the JSON Schema `schema`, which the dashboard renders). The first
   * time, the question is sent and the attempt ends here (throwing
   * {@link Asked}, which the worker takes care of): no worker is held while
   * the person thinks. Once answered, the task runs again and `ask`
   * resolves to the answer. Code before the question runs again; its `step`
   * calls do not. `timeoutMs`: no answer for this long fails the step.
   */
  ask(name: string, question: string, options?: AskOptions): Promise<unknown>;
  /**
   * Relays what the attempt writes as `call` (name it as the `step` that
   * records the whole text, such as `"chat 1"`, so a watcher who comes
   * later finds it there) to the instance's watchers as it comes: `output`
   * events on the stream, the hubs and the dashboard, never recorded.
   *
   * ```ts
   * const out = task.output("chat 1");
   * for await (const chunk of stream) out.push(chunk.choices[0]?.delta?.content ?? "");
   * await out.finish();
   * ```
   */
  output(call: string): Output;
  /**
   * A model call through the `openai` package (`options.client`, else one
   * from OPENAI_API_KEY and OPENAI_BASE_URL), streamed, journaled as the
   * step `chat N` (the N-th call of the attempt, so the same code asks for
   * the same entries on every attempt): a later attempt gets the recorded
   * reply without calling the model. Its text reaches the instance's
   * watchers as it is written, and its tokens are counted into the result
   * once. Run each tool call it asks for with `tool`.
   */
  chat(messages: ChatMessage[], options: ChatOptions): Promise<ChatReply>;
  /**
   * Runs the tool call `call` (from a `chat` reply) once per task, however
   * often the task is tried: journaled as the step `tool <call id>`, so a
   * resumed loop gets its result without running the tool again.
   */
  tool<T>(call: ToolCall, fn: () => Promise<T>): Promise<T>;
  /**
   * The durable entity `type`/`id` of the task's tenant (docs/entities.md):
   * read it, or call or signal an operation on it, applied once per task
   * under the name you give it.
   */
  entity(type: string, id: string): Entity;
}

export interface AskOptions {
  schema?: object;
  timeoutMs?: number;
}

/** Sends a question on. */
export type AskQuestion = (name: string, question: string, options: AskOptions) => Promise<void>;

/** What an attempt spent, as the protocol carries it. */
export interface Usage {
  inputTokens?: number;
  outputTokens?: number;
  /** In the currency your agents report cost in; legato adds it up. */
  cost?: number;
  model?: string;
}

/** Records a journal entry; resolves to the value that stands. */
export type RecordStep = (name: string, value: unknown) => Promise<unknown>;

/** An agent: an async function from a task to its JSON output. */
export type Handler = (task: Task) => Promise<unknown>;

/** How an agent function's run ended: its output, a failure, or a question. */
export type Outcome = { output: unknown } | { error: string; retryable: boolean } | { asked: string };

/**
 * Runs `handler` on `task` and classifies the end: a `FatalError` or an
 * output that is not JSON fails for good, any other error is retryable.
 */
export async function runHandler(handler: Handler, task: Task): Promise<Outcome> {
  let output: unknown;
  try {
    output = await handler(task);
  } catch (e) {
    if (e instanceof Asked) return { asked: e.message };
    if (e instanceof FatalError) return { error: e.message || e.name, retryable: false };
    const error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return { error, retryable: true };
  }
  try {
    JSON.stringify(output ?? null);
  } catch (e) {
    // No retry makes this function return JSON.
    return { error: `the output is not JSON: ${String(e)}`, retryable: false };
  }
  return { output: output ?? null };
}

/** Takes `name` for one step of the attempt; a name twice is a bug. */
function claimer(): (name: string) => void {
  const used = new Set<string>();
  return (name: string): void => {
    if (used.has(name)) {
      throw new FatalError(
        `step "${name}" ran twice in one attempt: give each step of a task its own name`,
      );
    }
    used.add(name);
  };
}

function stepper(
  journal: Readonly<Record<string, unknown>>,
  record: RecordStep,
  claim: (name: string) => void,
): <T>(name: string, fn: () => Promise<T>) => Promise<T> {
  return async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    claim(name);
    if (Object.prototype.hasOwnProperty.call(journal, name)) return journal[name] as T;
    const value = (await fn()) ?? null;
    try {
      JSON.stringify(value);
    } catch (e) {
      throw new FatalError(`step "${name}": its value is not JSON: ${String(e)}`);
    }
    try {
      return (await record(name, value)) as T;
    } catch (e) {
      if (e instanceof ProtocolError) throw new FatalError(`step "${name}": ${e.detail}`);
      if (e instanceof FatalError || e instanceof RetryableError) throw e;
      throw new RetryableError(`step "${name}" could not be recorded: ${String(e)}`);
    }
  };
}

/** Sums what `addUsage` is told; a sum of several models names none. */
class Spending {
  total: Usage | undefined;

  add(spent: Usage): void {
    const counts = [spent.inputTokens ?? 0, spent.outputTokens ?? 0, spent.cost ?? 0];
    if (counts.some((n) => !Number.isFinite(n) || n < 0)) {
      throw new RangeError("usage is counted up: tokens and cost must be at least 0");
    }
    const before = this.total;
    const sum: Usage = {
      inputTokens: (before?.inputTokens ?? 0) + (spent.inputTokens ?? 0),
      outputTokens: (before?.outputTokens ?? 0) + (spent.outputTokens ?? 0),
      cost: (before?.cost ?? 0) + (spent.cost ?? 0),
    };
    const model = before === undefined ? spent.model : before.model === spent.model ? spent.model : undefined;
    if (model !== undefined) sum.model = model;
    this.total = sum;
  }
}

export function taskOf(
  wire: WireTask,
  signal: AbortSignal,
  progress: (message?: string, data?: unknown) => Promise<void>,
  record: RecordStep,
  askQuestion: AskQuestion,
  sendOutput: SendOutput,
  entities: EntityAccess,
): Task {
  const journal = wire.journal ?? {};
  const answers = wire.answers ?? {};
  const spending = new Spending();
  const claim = claimer();
  const step = stepper(journal, record, claim);
  const output = (call: string): Output => new Output(call, sendOutput);
  let chats = 0;
  return {
    agent: wire.agent,
    instanceId: wire.instanceId,
    tenant: wire.tenant,
    workflow: wire.workflow,
    key: wire.key,
    stepId: wire.step,
    item: wire.item,
    iteration: wire.iteration,
    attempt: wire.attempt,
    idempotencyKey: wire.idempotencyKey,
    input: wire.input,
    deadline: wire.deadline === undefined ? undefined : new Date(wire.deadline),
    leaseMs: wire.leaseMs,
    signal,
    progress,
    journal,
    step,
    addUsage: (spent: Usage) => spending.add(spent),
    answers,
    ask: async (name: string, question: string, options: AskOptions = {}): Promise<unknown> => {
      if (Object.prototype.hasOwnProperty.call(answers, name)) return answers[name];
      try {
        await askQuestion(name, question, options);
      } catch (e) {
        if (e instanceof ProtocolError) throw new FatalError(`question "${name}": ${e.detail}`);
        if (e instanceof FatalError || e instanceof RetryableError) throw e;
        throw new RetryableError(`question "${name}" could not be asked: ${String(e)}`);
      }
      throw new Asked(name);
    },
    output,
    chat: (messages: ChatMessage[], options: ChatOptions): Promise<ChatReply> => {
      chats += 1;
      const name = `chat ${chats}`;
      return step(name, async () => {
        const reply = await streamReply(name, messages, options, output(name));
        const spent: Usage = { inputTokens: reply.inputTokens, outputTokens: reply.outputTokens };
        if (reply.model !== null) spent.model = reply.model;
        spending.add(spent);
        return reply;
      });
    },
    tool: <T>(call: ToolCall, fn: () => Promise<T>): Promise<T> => step(`tool ${call.id}`, fn),
    entity: (type: string, id: string): Entity => entityOf(type, id, entities, journal, claim),
    get usage() {
      return spending.total;
    },
  };
}
