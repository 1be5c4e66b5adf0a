/**
 * The pull worker: polls the gateway for tasks of its agents, runs them with
 * a concurrency cap, heartbeats while they run, reports each outcome, and
 * drains on SIGTERM.
 */

import { hostname } from "node:os";

import {
  type Answer,
  Client,
  Completions,
  ProtocolError,
  backoff,
  questionBody,
  sleep,
} from "./client.js";
import {
  type AskOptions,
  type Handler,
  type Outcome,
  RetryableError,
  type Task,
  type WireTask,
  runHandler,
  taskOf,
} from "./task.js";

/** Heartbeats per lease: one lost beat never costs the lease. */
const BEATS_PER_LEASE = 3;
/** The most tasks one poll may ask for (the gateway refuses more). */
export const MAX_TASKS_PER_POLL = 64;
const MAX_MESSAGE = 4096;

export interface WorkerOptions {
  /** The gateway, e.g. `http://127.0.0.1:8080`. */
  url: string;
  /** Agent name -> async function. */
  agents: Record<string, Handler>;
  /** A key with the `agent` role, when the gateway asks for one. */
  apiKey?: string;
  /** Tasks run at once (default 8). */
  concurrency?: number;
  /** For the gateway's logs (default host-pid). */
  workerId?: string;
  /** How long one poll waits for a task (default 20,000 ms). */
  pollWaitMs?: number;
  /** How long a stopping worker waits for running tasks (default 30,000 ms). */
  drainTimeoutMs?: number;
  /** Logs what the worker does; `console` by default. */
  logger?: Pick<Console, "info" | "warn" | "error">;
}

interface Running {
  token: string;
  task: Task;
  abort: AbortController;
  cancelled: boolean;
  done: Promise<void>;
}

export class Worker {
  private readonly client: Client;
  private readonly completions: Completions;
  private readonly agents: Record<string, Handler>;
  private readonly concurrency: number;
  private readonly workerId: string;
  private readonly pollWaitMs: number;
  private readonly drainTimeoutMs: number;
  private readonly log: Pick<Console, "info" | "warn" | "error">;
  private readonly running = new Map<string, Running>();
  private readonly stopping = new AbortController();

  constructor(options: WorkerOptions) {
    if (Object.keys(options.agents).length === 0) {
      throw new Error("agents: name at least one agent");
    }
    this.concurrency = options.concurrency ?? 8;
    if (this.concurrency < 1) {
      throw new Error("concurrency: at least 1");
    }
    this.agents = options.agents;
    this.client = new Client(options.url, options.apiKey);
    this.completions = new Completions(this.client);
    this.workerId = options.workerId ?? `${hostname()}-${process.pid}`;
    this.pollWaitMs = options.pollWaitMs ?? 20_000;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 30_000;
    this.log = options.logger ?? console;
  }

  /** Tasks running now. */
  get inFlight(): number {
    return this.running.size;
  }

  /** Stops taking tasks; `run` resolves once running ones are done. */
  stop(): void {
    this.stopping.abort();
  }

  /**
   * Polls and runs tasks until `stop()`, the `signal` aborts or (with
   * `handleSignals`, the default) SIGTERM/SIGINT; then waits up to
   * `drainTimeoutMs` for running tasks and hands back any still running.
   */
  async run(options: { signal?: AbortSignal; handleSignals?: boolean } = {}): Promise<void> {
    const onSignal = (): void => this.stop();
    options.signal?.addEventListener("abort", onSignal, { once: true });
    if (options.handleSignals ?? true) {
      process.once("SIGTERM", onSignal);
      process.once("SIGINT", onSignal);
    }
    try {
      await this.pollLoop();
      await this.drain();
    } finally {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      options.signal?.removeEventListener("abort", onSignal);
    }
  }

  private async pollLoop(): Promise<void> {
    const agents = Object.keys(this.agents).sort();
    let failures = 0;
    while (!this.stopping.signal.aborted) {
      if (this.running.size >= this.concurrency) {
        await Promise.race([...[...this.running.values()].map((r) => r.done), this.stopped()]);
        continue;
      }
      let tasks: WireTask[];
      try {
        tasks = await this.client.poll(
          agents,
          Math.min(this.concurrency - this.running.size, MAX_TASKS_PER_POLL),
          this.pollWaitMs,
          this.workerId,
          // Hanging up is safe: the gateway returns what this poll had not
          // yet taken to the queue.
          this.stopping.signal,
        );
        failures = 0;
      } catch (e) {
        if (this.stopping.signal.aborted) {
          break;
        }
        if (e instanceof ProtocolError) {
          throw e;
        }
        failures += 1;
        this.log.warn(`legato: poll failed (${String(e)}); trying again`);
        await sleep(backoff(undefined, Math.min(failures, 6)), this.stopping.signal);
        continue;
      }
      for (const wire of tasks) {
        this.start(wire);
      }
    }
  }

  private stopped(): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopping.signal.aborted) {
        resolve();
      } else {
        this.stopping.signal.addEventListener("abort", () => resolve(), { once: true });
      }
    });
  }

  private start(wire: WireTask): void {
    const abort = new AbortController();
    const progress = async (message?: string, data?: unknown): Promise<void> => {
      const body: Record<string, unknown> = {};
      if (message !== undefined) body["message"] = message;
      if (data !== undefined) body["data"] = data;
      await this.beat(wire.token, body);
    };
    // A 404/409: the attempt is over; its function is cancelled.
    const wanted = <A extends Answer>(answer: A): A => {
      if (!answer.wanted) {
        const why = answer.detail ?? "no longer wanted";
        this.cancel(wire.token, why);
        throw new RetryableError(`the attempt is no longer wanted: ${why}`);
      }
      return answer;
    };
    const record = async (name: string, value: unknown): Promise<unknown> =>
      wanted(await this.client.record(wire.token, name, value)).value;
    const ask = async (name: string, question: string, options: AskOptions): Promise<void> => {
      wanted(await this.client.report(wire.token, "ask", questionBody(name, question, options)));
    };
    const output = (call: string, seq: number, text: string): Promise<void> =>
      this.client.output(wire.token, call, seq, text);
    const task = taskOf(wire, abort.signal, progress, record, ask, output, this.client.entities(wire.token));
    const entry: Running = {
      token: wire.token,
      task,
      abort,
      cancelled: false,
      done: Promise.resolve(),
    };
    this.running.set(wire.token, entry);
    entry.done = this.execute(entry).finally(() => {
      this.running.delete(wire.token);
    });
  }

  private async beat(token: string, body: Record<string, unknown>): Promise<void> {
    try {
      const answer = await this.client.report(token, "heartbeat", body);
      if (!answer.wanted) {
        this.cancel(token, answer.detail ?? "no longer wanted");
      }
    } catch (e) {
      this.log.warn(`legato: heartbeat not sent (${String(e)}); the next one may be`);
    }
  }

  private cancel(token: string, why: string): void {
    const entry = this.running.get(token);
    if (entry !== undefined && !entry.cancelled) {
      entry.cancelled = true;
      this.log.info(`legato: task ${entry.task.key}#${entry.task.attempt} cancelled: ${why}`);
      entry.abort.abort(new Error(why));
    }
  }

  private async execute(entry: Running): Promise<void> {
    const { task } = entry;
    const handler = this.agents[task.agent];
    if (handler === undefined) {
      await this.fail(entry, `this worker does not serve agent ${task.agent}`, true);
      return;
    }
    const every = Math.max(task.leaseMs / BEATS_PER_LEASE, 200);
    const beats = setInterval(() => void this.beat(entry.token, {}), every);
    // Cancellation ends the wait for the handler even if it ignores the signal.
    const aborted = new Promise<"aborted">((resolve) =>
      task.signal.addEventListener("abort", () => resolve("aborted"), { once: true }),
    );
    let outcome: Outcome | "aborted";
    try {
      outcome = await Promise.race([runHandler(handler, task), aborted]);
    } finally {
      clearInterval(beats);
    }
    if (outcome === "aborted" || entry.cancelled || "asked" in outcome) {
      // An asked question ended the attempt: the task comes again answered.
      return;
    }
    if ("output" in outcome) {
      const { output } = outcome;
      await this.settle(entry, "complete", () =>
        this.completions.complete(entry.token, output, entry.task.usage),
      );
    } else {
      await this.fail(entry, outcome.error, outcome.retryable);
    }
  }

  private fail(entry: Running, message: string, retryable: boolean): Promise<void> {
    const usage = entry.task.usage;
    const body = { message: message.slice(0, MAX_MESSAGE), retryable, ...(usage && { usage }) };
    return this.settle(entry, "fail", () => this.client.report(entry.token, "fail", body));
  }

  private async settle(
    entry: Running,
    what: "complete" | "fail",
    send: () => Promise<Answer>,
  ): Promise<void> {
    try {
      const answer = await send();
      if (!answer.wanted) {
        this.log.info(
          `legato: task ${entry.task.key}#${entry.task.attempt}: ${what} not recorded: ${answer.detail ?? ""}`,
        );
      }
    } catch (e) {
      // The lease runs out and the attempt is retried: nothing is lost.
      this.log.error(`legato: could not ${what} task ${entry.task.key}: ${String(e)}`);
    }
  }

  private async drain(): Promise<void> {
    const entries = [...this.running.values()];
    if (entries.length === 0) return;
    this.log.info(`legato: draining ${entries.length} running task(s)`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.drainTimeoutMs);
    });
    await Promise.race([Promise.all(entries.map((e) => e.done)), timeout]);
    clearTimeout(timer);
    // Handed back at once rather than left to their leases.
    const left = [...this.running.values()];
    await Promise.all(
      left.map(async (entry) => {
        entry.cancelled = true;
        entry.abort.abort(new Error("the worker is stopping"));
        await this.fail(entry, "the worker stopped before the task ended", true);
      }),
    );
  }
}
