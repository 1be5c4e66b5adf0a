/**
 * Durable entities from inside an agent (docs/entities.md): state keyed by
 * a type and an id, in the task's tenant, that outlives every run.
 */

import { type Answer, ProtocolError, getJson, send } from "./client.js";
import { FatalError, RetryableError } from "./errors.js";

/**
 * The entity refused the operation (an increment past its bounds, an
 * append to a string): it changed nothing, and would fail the same way
 * again, so the step fails unless the agent catches it.
 */
export class EntityOperationError extends FatalError {
  override name = "EntityOperationError";
}

/** One durable entity, as a task sees it (see `Task.entity`). */
export interface Entity {
  readonly type: string;
  readonly id: string;
  /**
   * The value at `path` (a JSON Pointer; empty: the whole state) as last
   * committed, `null` when absent. Not journaled: wrap it in `task.step`
   * to keep what the first attempt read.
   */
  read(path?: string): Promise<unknown>;
  /**
   * Applies `operation` (`{ op: "increment", by: 2 }`, as in a workflow's
   * entity step) once per task under `name`, however often the task is
   * tried, and resolves to what it answered (a later attempt gets the first
   * answer from the task's journal). Rejects with
   * {@link EntityOperationError} when the entity refused it.
   */
  call(name: string, operation: Record<string, unknown>): Promise<unknown>;
  /** As `call`, for an operation whose answer (or refusal) does not matter. */
  signal(name: string, operation: Record<string, unknown>): Promise<void>;
}

type Reply = Answer & { body?: Record<string, unknown> };

/** How a task reaches its entities (the pull protocol or a push callback). */
export interface EntityAccess {
  read(type: string, id: string, path: string): Promise<Reply>;
  call(type: string, id: string, name: string, operation: unknown): Promise<Reply>;
}

/** Entities below `base` (a task's `/api/v1/tasks/<token>` or its callback URL). */
export function entitiesAt(base: string, headers: Record<string, string>, attempts = 8): EntityAccess {
  const url = (type: string, id: string): string =>
    `${base}/entities/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  return {
    read: (type, id, path) =>
      getJson(path === "" ? url(type, id) : `${url(type, id)}?path=${encodeURIComponent(path)}`, headers),
    call: (type, id, name, operation) =>
      send(url(type, id), { method: "POST", headers, body: { name, operation } }, attempts),
  };
}

async function reach(what: string, request: () => Promise<Reply>): Promise<Record<string, unknown>> {
  let reply: Reply;
  try {
    reply = await request();
  } catch (e) {
    if (e instanceof ProtocolError) throw new FatalError(`${what}: ${e.detail}`);
    throw new RetryableError(`${what} could not be sent: ${String(e)}`);
  }
  if (!reply.wanted) {
    throw new RetryableError(`${what}: the attempt is no longer wanted: ${reply.detail ?? ""}`);
  }
  return reply.body ?? {};
}

/** The entity `type/id`, its calls kept in `journal` under `entity <name>`. */
export function entityOf(
  type: string,
  id: string,
  access: EntityAccess,
  journal: Readonly<Record<string, unknown>>,
  claim: (name: string) => void,
): Entity {
  const call = async (name: string, operation: Record<string, unknown>): Promise<unknown> => {
    const entry = `entity ${name}`;
    claim(entry);
    let kept = Object.prototype.hasOwnProperty.call(journal, entry)
      ? (journal[entry] as Record<string, unknown> | null)
      : undefined;
    if (kept === undefined || kept === null) {
      const body = await reach(`entity call "${name}"`, () => access.call(type, id, name, operation));
      kept = "error" in body ? { error: body["error"] } : { ok: body["answer"] ?? null };
    }
    if ("error" in kept) {
      throw new EntityOperationError(`${type}/${id} refused "${name}": ${String(kept["error"])}`);
    }
    return kept["ok"] ?? null;
  };
  return {
    type,
    id,
    read: async (path = "") => {
      const body = await reach(`read of ${type}/${id}`, () => access.read(type, id, path));
      return body["value"] ?? null;
    },
    call,
    signal: async (name, operation) => {
      try {
        await call(name, operation);
      } catch (e) {
        if (!(e instanceof EntityOperationError)) throw e;
      }
    },
  };
}
