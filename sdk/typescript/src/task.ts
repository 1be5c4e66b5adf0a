/** One attempt of one task, as an agent function sees it. */

/** Fails the step at once: no retry will mend it. */
export class FatalError extends Error {
  override name = "FatalError";
}

/** Retried under the step's retry policy. Any other error counts as this. */
export class RetryableError extends Error {
  override name = "RetryableError";
}

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
  readonly step: string;
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
}

/** An agent: an async function from a task to its JSON output. */
export type Handler = (task: Task) => Promise<unknown>;

/** How an agent function's run ended: its output, or a failure. */
export type Outcome = { output: unknown } | { error: string; retryable: boolean };

/**
 * Runs `handler` on `task` and classifies the end: a `FatalError` or an
 * output that is not JSON fails for good, any other error is retryable.
 */
export async function runHandler(handler: Handler, task: Task): Promise<Outcome> {
  let output: unknown;
  try {
    output = await handler(task);
  } catch (e) {
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

export function taskOf(
  wire: WireTask,
  signal: AbortSignal,
  progress: (message?: string, data?: unknown) => Promise<void>,
): Task {
  return {
    agent: wire.agent,
    instanceId: wire.instanceId,
    tenant: wire.tenant,
    workflow: wire.workflow,
    key: wire.key,
    step: wire.step,
    item: wire.item,
    iteration: wire.iteration,
    attempt: wire.attempt,
    idempotencyKey: wire.idempotencyKey,
    input: wire.input,
    deadline: wire.deadline === undefined ? undefined : new Date(wire.deadline),
    leaseMs: wire.leaseMs,
    signal,
    progress,
  };
}
