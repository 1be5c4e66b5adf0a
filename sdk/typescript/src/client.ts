/**
 * The pull-worker protocol over HTTP: poll, heartbeat, record a journal
 * entry, complete (one, or many in one request), fail.
 *
 * Every report on a task is safe to send again (the gateway records a
 * result once per attempt), so network errors, 429 and 5xx answers are
 * retried with backoff, honouring `Retry-After`. A 409 (or 404) means the
 * attempt is no longer wanted; it is returned, never retried.
 */

import { type EntityAccess, entitiesAt } from "./entities.js";
import type { Usage, WireTask } from "./task.js";

const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);

/** The gateway refused a request for good (a 4xx other than 408/409/429). */
export class ProtocolError extends Error {
  override name = "ProtocolError";
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`${status}: ${detail}`);
  }
}

/** How the gateway took a report: `wanted` false means stop working on it. */
export interface Answer {
  wanted: boolean;
  detail?: string;
}

/** The most completions one request carries (the gateway refuses more). */
export const MAX_COMPLETIONS = 64;

interface CompletionResult {
  status?: string;
  problem?: { detail?: string };
}

function answerOf(result: CompletionResult | undefined): Answer {
  if (result?.status === "recorded" || result?.status === "recorded_before") {
    return { wanted: true };
  }
  return { wanted: false, detail: result?.problem?.detail ?? "no answer for this completion" };
}

interface Queued {
  token: string;
  output: unknown;
  usage: Usage | undefined;
  resolve: (answer: Answer) => void;
  reject: (error: unknown) => void;
}

/**
 * Completions on their way: whatever finishes while a batch is in flight
 * goes in the next one, so a quiet worker sends each result at once and a
 * busy one sends a request per batch rather than per task.
 */
export class Completions {
  private queue: Queued[] = [];
  private sending = false;

  constructor(private readonly client: Client) {}

  complete(token: string, output: unknown, usage?: Usage): Promise<Answer> {
    return new Promise((resolve, reject) => {
      this.queue.push({ token, output, usage, resolve, reject });
      void this.send();
    });
  }

  private async send(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, MAX_COMPLETIONS);
        try {
          const answers = await this.client.completeMany(
            batch.map(({ token, output, usage }) =>
              usage === undefined ? { token, output } : { token, output, usage },
            ),
          );
          batch.forEach((queued, i) => queued.resolve(answers[i] ?? { wanted: false }));
        } catch (e) {
          for (const queued of batch) queued.reject(e);
        }
      }
    } finally {
      this.sending = false;
    }
  }
}

async function detailOf(response: Response): Promise<string> {
  const text = await response.text();
  try {
    const body: unknown = JSON.parse(text);
    if (body !== null && typeof body === "object" && "detail" in body) {
      return String((body as { detail: unknown }).detail);
    }
  } catch {
    // Not JSON: the text says it.
  }
  return text;
}

/** Seconds to wait before trying again: `Retry-After`, or capped full jitter. */
export function backoff(response: Response | undefined, attempt: number): number {
  const header = response?.headers.get("retry-after");
  if (header !== undefined && header !== null && /^\d+$/.test(header)) {
    return Number(header);
  }
  return Math.random() * Math.min(10, 0.2 * 2 ** attempt);
}

export const sleep = (seconds: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });

/** How the gateway took a journal entry: the value that stands. */
export interface Recorded extends Answer {
  value?: unknown;
}

/** The body of `.../ask`. */
export function questionBody(
  name: string,
  question: string,
  options: { schema?: object; timeoutMs?: number },
): Record<string, unknown> {
  const body: Record<string, unknown> = { name, question };
  if (options.schema !== undefined) body["schema"] = options.schema;
  if (options.timeoutMs !== undefined) body["timeoutMs"] = options.timeoutMs;
  return body;
}

/** Where entry `name` of a task is recorded, below `base` (the task's
 * `/api/v1/tasks/<token>` or its callback URL). */
export function journalUrl(base: string, name: string): string {
  return `${base}/journal/${encodeURIComponent(name)}`;
}

/**
 * Sends a report on a task, again while it may be retried (every report
 * counts once however often it is sent); `once` for one not worth another
 * try. Resolves to the answer's JSON body when the report was taken.
 */
export async function send(
  url: string,
  init: { method: string; headers: Record<string, string>; body: unknown },
  attempts: number,
  once = false,
): Promise<Answer & { body?: Record<string, unknown> }> {
  let last: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    let response: Response | undefined;
    try {
      response = await fetch(url, {
        method: init.method,
        headers: { ...init.headers, "content-type": "application/json" },
        body: JSON.stringify(init.body),
      });
    } catch (e) {
      last = e;
    }
    if (response !== undefined) {
      if (response.status === 200) {
        const body = (await response.json()) as Record<string, unknown>;
        return { wanted: true, body };
      }
      const detail = await detailOf(response);
      if (response.status === 404 || response.status === 409) {
        return { wanted: false, detail };
      }
      if (!RETRYABLE.has(response.status)) {
        throw new ProtocolError(response.status, detail);
      }
      last = new ProtocolError(response.status, detail);
    }
    if (once) break;
    await sleep(backoff(response, attempt));
  }
  throw last instanceof Error ? last : new Error(String(last));
}

/**
 * Records a journal entry at `url`, retrying what may be retried:
 * recording a name twice keeps the first value, so a retry is safe.
 */
export async function putJournal(
  url: string,
  headers: Record<string, string>,
  value: unknown,
  attempts = 8,
): Promise<Recorded> {
  const answer = await send(url, { method: "PUT", headers, body: { value } }, attempts);
  return answer.wanted ? { wanted: true, value: answer.body?.["value"] ?? null } : answer;
}

/** A GET of `url`, once: its JSON body, or why not (404/409: not wanted). */
export async function getJson(
  url: string,
  headers: Record<string, string>,
): Promise<Answer & { body?: Record<string, unknown> }> {
  const response = await fetch(url, { headers });
  if (response.status === 200) {
    return { wanted: true, body: (await response.json()) as Record<string, unknown> };
  }
  const detail = await detailOf(response);
  if (response.status === 404 || response.status === 409) return { wanted: false, detail };
  if (RETRYABLE.has(response.status)) throw new Error(`${response.status}: ${detail}`);
  throw new ProtocolError(response.status, detail);
}

/** Sends one piece of output to `url` (a task's `.../output`), once. */
export async function postOutput(
  url: string,
  headers: Record<string, string>,
  call: string,
  seq: number,
  text: string,
): Promise<void> {
  const response = await fetch(url, {
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify({ call, seq, text }),
  });
  if (response.status !== 202) {
    throw new ProtocolError(response.status, await detailOf(response));
  }
}

export class Client {
  private readonly base: string;
  private readonly headers: Record<string, string>;

  constructor(
    url: string,
    apiKey: string | undefined,
    private readonly reportAttempts = 8,
  ) {
    this.base = url.replace(/\/+$/, "");
    this.headers = { "content-type": "application/json" };
    if (apiKey !== undefined) {
      this.headers["authorization"] = `Bearer ${apiKey}`;
    }
  }

  /** The durable entities of the task `token` names. */
  entities(token: string): EntityAccess {
    return entitiesAt(`${this.base}/api/v1/tasks/${token}`, this.headers, this.reportAttempts);
  }

  private post(path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
    const init: RequestInit = {
      method: "POST",
      headers: this.headers,
      body: JSON.stringify(body),
    };
    if (signal !== undefined) {
      init.signal = signal;
    }
    return fetch(`${this.base}${path}`, init);
  }

  /** Tasks for `agents` (none once the wait is over). */
  async poll(
    agents: string[],
    maxTasks: number,
    waitMs: number,
    workerId: string,
    signal: AbortSignal,
  ): Promise<WireTask[]> {
    const response = await this.post(
      "/api/v1/tasks/poll",
      { agents, maxTasks, waitMs, workerId },
      signal,
    );
    if (response.status !== 200) {
      const detail = await detailOf(response);
      if (RETRYABLE.has(response.status)) {
        throw new Error(`poll answered ${response.status}: ${detail}`);
      }
      throw new ProtocolError(response.status, detail);
    }
    const body = (await response.json()) as { tasks?: WireTask[] };
    return body.tasks ?? [];
  }

  /**
   * Sends completions together (at most {@link MAX_COMPLETIONS}), retrying
   * the batch as a whole while it may be retried; one answer per completion,
   * in order.
   */
  async completeMany(
    completions: { token: string; output: unknown; usage?: Usage }[],
  ): Promise<Answer[]> {
    let last: unknown;
    for (let attempt = 0; attempt < this.reportAttempts; attempt++) {
      let response: Response | undefined;
      try {
        response = await this.post("/api/v1/tasks/complete", { completions });
      } catch (e) {
        last = e;
      }
      if (response !== undefined) {
        if (response.status === 200) {
          const body = (await response.json()) as { results?: CompletionResult[] };
          return completions.map((_, i) => answerOf(body.results?.[i]));
        }
        const detail = await detailOf(response);
        if (!RETRYABLE.has(response.status)) {
          throw new ProtocolError(response.status, detail);
        }
        last = new ProtocolError(response.status, detail);
      }
      await sleep(backoff(response, attempt));
    }
    throw last instanceof Error ? last : new Error(String(last));
  }

  /** Records journal entry `name` of the task `token` names. */
  record(token: string, name: string, value: unknown): Promise<Recorded> {
    const url = journalUrl(`${this.base}/api/v1/tasks/${token}`, name);
    return putJournal(url, this.headers, value, this.reportAttempts);
  }

  /** Relays a piece of the task's output once (a piece lost is only missed by watchers). */
  output(token: string, call: string, seq: number, text: string): Promise<void> {
    return postOutput(`${this.base}/api/v1/tasks/${token}/output`, this.headers, call, seq, text);
  }

  /** Sends a heartbeat, completion, failure or question, retrying what may be retried. */
  async report(
    token: string,
    what: "heartbeat" | "complete" | "fail" | "ask",
    body: unknown,
  ): Promise<Answer> {
    const url = `${this.base}/api/v1/tasks/${token}/${what}`;
    // A heartbeat is not sent again: the next beat comes soon anyway.
    const once = what === "heartbeat";
    const answer = await send(url, { method: "POST", headers: this.headers, body }, this.reportAttempts, once);
    return answer.detail === undefined ? { wanted: answer.wanted } : { wanted: answer.wanted, detail: answer.detail };
  }
}
