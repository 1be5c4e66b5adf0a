/** How an agent function says an attempt failed, or ended by asking. */

/** Fails the step at once: no retry will mend it. */
export class FatalError extends Error {
  override name = "FatalError";
}

/** Retried under the step's retry policy. Any other error counts as this. */
export class RetryableError extends Error {
  override name = "RetryableError";
}

/**
 * Thrown by `task.ask` once the question is sent: the attempt ends there,
 * holding no worker, and the task comes again with the answer. Let it pass
 * (rethrow it if you catch errors around `ask`).
 */
export class Asked extends Error {
  override name = "Asked";
}
