/**
 * Durable entities from a TypeScript agent against a real `legato up`: an
 * agent's memory of a customer outlives each run, and its calls apply once
 * per task however often the task is tried.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { EntityOperationError, RetryableError, type Task, Worker } from "../src/index.js";
import { Legato } from "./legato.js";

let legato: Legato;
const quiet = { info: () => {}, warn: () => {}, error: console.error };

before(async () => {
  legato = await Legato.start();
});
after(() => legato.stop());

async function remember(task: Task): Promise<unknown> {
  const input = task.input as { customer: string; request: string };
  const memory = task.entity("customer", input.customer);
  // A read is the state now; a step keeps what the first attempt read.
  const before = await task.step("before", () => memory.read("/requests"));
  const visit = await memory.call("visit", { op: "increment", path: "/visits" });
  await memory.signal("note", { op: "append", path: "/requests", value: input.request, cap: 5 });
  if (task.attempt === 1) throw new RetryableError("the line dropped after the visit was counted");
  let refused: string | null = null;
  try {
    await memory.call("overdraw", { op: "increment", path: "/credit", by: -1, min: 0 });
  } catch (e) {
    if (!(e instanceof EntityOperationError)) throw e;
    refused = e.message;
  }
  return { before, visit, refused };
}

test("an agent's memory outlives runs and its calls apply once per task", async () => {
  await legato.putAgent("ts-memory", { leaseMs: 5_000 });
  await legato.register({
    name: "ts-memory",
    version: 1,
    steps: [
      {
        id: "remember",
        agent: "ts-memory",
        input: "${{ input }}",
        retry: { max_attempts: 2, initial_interval_ms: 50 },
      },
    ],
    output: "${{ steps.remember.output }}",
  });
  const worker = new Worker({ url: legato.url, agents: { "ts-memory": remember }, pollWaitMs: 2_000, logger: quiet });
  const running = worker.run({ handleSignals: false });
  try {
    const customer = "ana@example.com";
    const first = await legato.start("ts-memory", { customer, request: "csv export" });
    let done = await legato.waitFor(first, "Completed");
    const output = done["output"] as { before: unknown; visit: unknown; refused: string };
    assert.equal(output.before, null);
    assert.equal(output.visit, 1, "counted once over two attempts");
    assert.match(output.refused, /below the minimum 0/);
    const second = await legato.start("ts-memory", { customer, request: "totals" });
    done = await legato.waitFor(second, "Completed");
    assert.deepEqual(done["output"], { before: ["csv export"], visit: 2, refused: output.refused });
    const { status, body } = await legato.call("GET", `/api/v1/entities/customer/${customer}`);
    assert.equal(status, 200);
    assert.deepEqual(body["state"], { visits: 2, requests: ["csv export", "totals"] });
  } finally {
    worker.stop();
    await running;
  }
});

/** Custom operation `remember` of type `ts-customer`: given the state and
 * the operation's input, the new state and the answer. */
async function keepMemory(task: Task): Promise<unknown> {
  const input = task.input as { state: { requests: string[]; remembered: number } | null; input: { request: string } };
  const state = input.state ?? { requests: [], remembered: 0 };
  const remembered = state.remembered + 1;
  return {
    state: { requests: [...state.requests, input.input.request].slice(-3), remembered },
    answer: remembered,
  };
}

/** An agent that calls the custom operation itself, once per task. */
async function callRemember(task: Task): Promise<unknown> {
  const input = task.input as { customer: string; request: string };
  return task.entity("ts-customer", input.customer).call("remember", { op: "remember", input: { request: input.request } });
}

test("a TypeScript agent is an entity type's logic, called by other agents one operation at a time", async () => {
  for (const name of ["ts-keeper", "ts-caller"]) await legato.putAgent(name, { leaseMs: 5_000 });
  await legato.register({
    name: "ts-remember-op",
    version: 1,
    steps: [{ id: "keep", agent: "ts-keeper", input: "${{ input }}" }],
    output: "${{ steps.keep.output }}",
  });
  const put = await legato.call("PUT", "/api/v1/entity-types/ts-customer", {
    operations: { remember: { workflow: "ts-remember-op" } },
  });
  assert.equal(put.status, 201, JSON.stringify(put.body));
  await legato.register({
    name: "ts-caller",
    version: 1,
    steps: [{ id: "call", agent: "ts-caller", input: "${{ input }}" }],
    output: "${{ steps.call.output }}",
  });
  const worker = new Worker({
    url: legato.url,
    agents: { "ts-keeper": keepMemory, "ts-caller": callRemember },
    pollWaitMs: 2_000,
    logger: quiet,
  });
  const running = worker.run({ handleSignals: false });
  try {
    const runs: string[] = [];
    for (let n = 0; n < 6; n++) runs.push(await legato.start("ts-caller", { customer: "lee", request: `r${n}` }));
    const answers: number[] = [];
    for (const run of runs) answers.push((await legato.waitFor(run, "Completed"))["output"] as number);
    answers.sort((a, b) => a - b);
    assert.deepEqual(answers, [1, 2, 3, 4, 5, 6], "each saw the state the one before left");
    const { body } = await legato.call("GET", "/api/v1/entities/ts-customer/lee");
    const state = body["state"] as { requests: string[]; remembered: number };
    assert.equal(state.remembered, 6);
    assert.equal(state.requests.length, 3, "the type's logic keeps the last three");
  } finally {
    worker.stop();
    await running;
  }
});
