/**
 * The TypeScript SDK against a real `legato up`: a workflow mixing a built-in,
 * a Python and a TypeScript agent; 500 tasks over 4 workers; a worker killed
 * mid-task; cancellation; progress and output on the instance's stream.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { FatalError, type Handler, type Task, Worker } from "../src/index.js";
import { type Doc, type Json, Legato, modelStandIn, REPO, step } from "./legato.js";

let legato: Legato;
const quiet = { info: () => {}, warn: () => {}, error: console.error };

before(async () => {
  legato = await Legato.start();
});
after(() => legato.stop());

async function serving<T>(
  agents: Record<string, Handler>,
  body: (worker: Worker) => Promise<T>,
  concurrency = 8,
): Promise<T> {
  const worker = new Worker({ url: legato.url, agents, concurrency, pollWaitMs: 2_000, logger: quiet });
  const running = worker.run({ handleSignals: false });
  try {
    return await body(worker);
  } finally {
    worker.stop();
    await running;
  }
}

function firstLine(stream: NodeJS.ReadableStream): Promise<string> {
  const lines = createInterface({ input: stream });
  return new Promise((resolve) => lines.once("line", resolve));
}

test("a workflow mixes a built-in, a Python and a TypeScript agent", async () => {
  await legato.putAgent("py-upper");
  await legato.putAgent("ts-count");
  await legato.register({
    name: "mixed",
    version: 1,
    steps: [
      step("draft", "echo", [], { value: "${{ input.text }}" }),
      step("shout", "py-upper", ["draft"], { text: "${{ steps.draft.output.value }}" }),
      step("count", "ts-count", ["shout"], { text: "${{ steps.shout.output.text }}" }),
    ],
  });
  const python = process.env["LEGATO_PYTHON"] ?? "python3";
  const script = join(REPO, "sdk/python/tests/upper_worker.py");
  const child = spawn(python, [script, legato.url, "py-upper"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    assert.equal(await firstLine(child.stdout!), "READY");
    const done = await serving(
      {
        "ts-count": async (task) => {
          const text = (task.input as { text: string }).text;
          return { text, letters: text.replace(/[^A-Z]/g, "").length, by: "typescript" };
        },
      },
      async () => legato.waitFor(await legato.start("mixed", { text: "ship it" }), "Completed"),
    );
    const output = done["output"] as Doc;
    assert.deepEqual(output["count"], { text: "SHIP IT", letters: 6, by: "typescript" });
  } finally {
    child.kill("SIGKILL");
  }
});

test("500 tasks over 4 workers, each run once", async () => {
  await legato.putAgent("ts-square");
  await legato.register({
    name: "ts-squares",
    version: 1,
    steps: [
      {
        id: "squares",
        agent: "ts-square",
        for_each: "${{ input.numbers }}",
        max_parallel: 64,
        input: { n: "${{ item }}" },
      },
    ],
  });
  const runs = [0, 0, 0, 0];
  const square = (worker: number): Handler => async (task) => {
    runs[worker] = (runs[worker] ?? 0) + 1;
    return (task.input as { n: number }).n ** 2;
  };
  const numbers = Array.from({ length: 500 }, (_, i) => i);
  const done = await serving({ "ts-square": square(0) }, () =>
    serving({ "ts-square": square(1) }, () =>
      serving({ "ts-square": square(2) }, () =>
        // More slots than one poll may ask for: it asks for the most.
        serving(
          { "ts-square": square(3) },
          async () => legato.waitFor(await legato.start("ts-squares", { numbers }), "Completed", 120_000),
          100,
        ),
      ),
    ),
  );
  assert.deepEqual((done["output"] as Doc)["squares"], numbers.map((n) => n * n));
  assert.equal(runs.reduce((a, b) => a + b, 0), 500);
  assert.ok(runs.every((n) => n > 0), `every worker took tasks: ${runs.join(",")}`);
});

test("a worker killed mid-task has its task retried by another", async () => {
  await legato.putAgent("ts-fragile", { leaseMs: 1500 });
  await legato.register({
    name: "ts-fragile",
    version: 1,
    steps: [step("work", "ts-fragile", [], {}, { retry: { max_attempts: 3, initial_interval_ms: 50 } })],
  });
  const script = fileURLToPath(new URL("./hanging-worker.js", import.meta.url));
  const victim = spawn(process.execPath, [script, legato.url, "ts-fragile"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const id = await legato.start("ts-fragile", {});
  try {
    assert.equal(await firstLine(victim.stdout!), `TAKEN ${id} 1`);
  } finally {
    victim.kill("SIGKILL");
    await once(victim, "exit");
  }
  const done = await serving({ "ts-fragile": async (task) => ({ attempt: task.attempt }) }, () =>
    legato.waitFor(id, "Completed", 30_000),
  );
  assert.deepEqual((done["output"] as Doc)["work"], { attempt: 2 });
  const history = done["history"] as Doc[];
  const retried = history.flatMap((h) => (h["progress"] as Doc[] | undefined) ?? [])
    .filter((p) => p["kind"] === "step_retrying");
  assert.match(String(retried[0]?.["message"]), /no heartbeat for 1500 ms/);
});

test("a killed worker's recorded steps are not run again", async () => {
  await legato.putAgent("ts-looping", { leaseMs: 1500 });
  await legato.register({
    name: "ts-looping",
    version: 1,
    steps: [step("loop", "ts-looping", [], {}, { retry: { max_attempts: 3, initial_interval_ms: 50 } })],
  });
  const script = fileURLToPath(new URL("./journaling-worker.js", import.meta.url));
  const victim = spawn(process.execPath, [script, legato.url, "ts-looping"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const id = await legato.start("ts-looping", {});
  try {
    assert.equal(await firstLine(victim.stdout!), `RECORDED ${id} 1`);
  } finally {
    victim.kill("SIGKILL");
    await once(victim, "exit");
  }
  const ran: string[] = [];
  const resume: Handler = async (task) => {
    const said: unknown[] = [];
    for (const turn of [1, 2, 3]) {
      said.push(
        await task.step(`model turn ${turn}`, async () => {
          ran.push(`model turn ${turn}`);
          task.addUsage({ inputTokens: 30, outputTokens: 12, cost: 0.5, model: "m" });
          return { turn, byAttempt: task.attempt };
        }),
      );
    }
    return { said, journal: Object.keys(task.journal).sort() };
  };
  const done = await serving({ "ts-looping": resume }, () => legato.waitFor(id, "Completed", 30_000));
  assert.deepEqual(ran, ["model turn 3"], "the recorded turns were not done again");
  // Only the turn that ran in this attempt reported spending.
  assert.deepEqual(done["usage"], { inputTokens: 30, outputTokens: 12, cost: 0.5 });
  assert.deepEqual((done["output"] as Doc)["loop"], {
    said: [
      { turn: 1, byAttempt: 1 },
      { turn: 2, byAttempt: 1 },
      { turn: 3, byAttempt: 2 },
    ],
    journal: ["model turn 1", "model turn 2"],
  });
  const recorded = (done["history"] as Doc[])
    .flatMap((h) => (h["progress"] as Doc[] | undefined) ?? [])
    .filter((p) => p["kind"] === "journal_recorded")
    .map((p) => (p["data"] as Doc)["name"]);
  assert.deepEqual(recorded, ["model turn 1", "model turn 2", "model turn 3"]);
});

test("a ten-turn tool loop killed at turn seven repeats no model call or tool", async () => {
  const model = await modelStandIn();
  try {
    await legato.putAgent("ts-tool-loop", { leaseMs: 1500 });
    await legato.register({
      name: "ts-tool-loop",
      version: 1,
      steps: [step("loop", "ts-tool-loop", [], {}, { retry: { max_attempts: 3, initial_interval_ms: 50 } })],
    });
    const script = fileURLToPath(new URL("./tool-loop-worker.js", import.meta.url));
    const dying = spawn(process.execPath, [script, legato.url, "ts-tool-loop", model.url, "7"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const killed = await legato.start("ts-tool-loop", {});
    assert.equal(await firstLine(dying.stdout!), `DYING ${killed} 7`);
    const [, signal] = (await once(dying, "exit")) as [number | null, string | null];
    assert.equal(signal, "SIGKILL");

    const healthy = spawn(process.execPath, [script, legato.url, "ts-tool-loop", model.url], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    let resumed: Doc;
    let whole: Doc;
    try {
      resumed = await legato.waitFor(killed, "Completed", 60_000);
      whole = await legato.waitFor(await legato.start("ts-tool-loop", {}), "Completed", 60_000);
    } finally {
      healthy.kill("SIGKILL");
      await once(healthy, "exit");
    }
    const base = model.url.replace(/\/v1$/, "");
    const calls = (await (await fetch(`${base}/calls`)).json()) as Record<string, Record<string, number>>;
    const effects = (await (await fetch(`${base}/effects`)).json()) as Record<string, number>;
    const turns = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [String(i + 1), 1]));
    assert.deepEqual(calls[`loop:10 for ${killed}`], turns);
    const done = Object.fromEntries(Object.entries(effects).filter(([key]) => key.startsWith(`${killed}/`)));
    assert.deepEqual(done, Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`${killed}/call_${i + 1}`, 1])));
    const expected = { answer: `done after 10 turns: ${Array.from({ length: 9 }, (_, i) => 2 * (i + 1)).join(", ")}`, turns: 10 };
    assert.deepEqual((resumed["output"] as Doc)["loop"], expected);
    assert.deepEqual((whole["output"] as Doc)["loop"], expected);
  } finally {
    model.stop();
  }
});

test("a task asks a person and goes on with the answer", async () => {
  await legato.putAgent("ts-asker");
  await legato.register({ name: "ts-asker", version: 1, steps: [step("write", "ts-asker", [], {})] });
  const planned: number[] = [];
  const write: Handler = async (task) => {
    const plan = await task.step("plan", async () => {
      planned.push(task.attempt);
      return "a plan";
    });
    const scope = await task.ask("scope", "Which accounts?", { schema: { type: "object" } });
    return { plan, scope, attempt: task.attempt };
  };
  const done = await serving({ "ts-asker": write }, async () => {
    const id = await legato.start("ts-asker", {});
    for (let i = 0; i < 300; i++) {
      const current = await legato.call("GET", `/api/v1/instances/${id}`);
      const steps = (current.body["steps"] as Doc[] | undefined) ?? [];
      if (steps[0]?.["question"] !== undefined) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const answered = await legato.call("POST", `/api/v1/instances/${id}/events/scope`, { accounts: "billing" });
    assert.equal(answered.status, 202);
    return legato.waitFor(id, "Completed", 30_000);
  });
  assert.deepEqual((done["output"] as Doc)["write"], {
    plan: "a plan",
    scope: { accounts: "billing" },
    attempt: 2,
  });
  assert.deepEqual(planned, [1], "the journaled step before the question ran once");
});

test("a terminated instance aborts its running task's signal", async () => {
  await legato.putAgent("ts-slow", { leaseMs: 1500 });
  await legato.register({ name: "ts-slow", version: 1, steps: [step("work", "ts-slow", [], {})] });
  let started!: () => void;
  const startedP = new Promise<void>((r) => (started = r));
  let aborted!: (why: unknown) => void;
  const abortedP = new Promise<unknown>((r) => (aborted = r));
  await serving(
    {
      "ts-slow": (task: Task) =>
        new Promise((_, reject) => {
          started();
          task.signal.addEventListener("abort", () => {
            aborted(task.signal.reason);
            reject(task.signal.reason as Error);
          });
        }),
    },
    async (worker) => {
      const id = await legato.start("ts-slow", {});
      await startedP;
      const { status } = await legato.call("POST", `/api/v1/instances/${id}/terminate`, {
        reason: "enough",
      });
      assert.equal(status, 202);
      const why = await abortedP;
      assert.match(String(why), /Terminated/);
      for (let i = 0; i < 100 && worker.inFlight > 0; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(worker.inFlight, 0);
      await legato.waitFor(id, "Terminated");
    },
  );
});

test("errors fail or retry the step", async () => {
  await legato.putAgent("ts-moody");
  await legato.register({
    name: "ts-moody",
    version: 1,
    steps: [
      step("work", "ts-moody", [], { mood: "${{ input.mood }}" }, {
        retry: { max_attempts: 2, initial_interval_ms: 10 },
      }),
    ],
  });
  await serving(
    {
      "ts-moody": async (task) => {
        if ((task.input as { mood: string }).mood === "fatal") {
          throw new FatalError("the input can never work");
        }
        if (task.attempt === 1) throw new Error("flaky model endpoint");
        return "fine";
      },
    },
    async () => {
      const flaky = await legato.start("ts-moody", { mood: "flaky" });
      const fatal = await legato.start("ts-moody", { mood: "fatal" });
      const done = await legato.waitFor(flaky, "Completed");
      const failed = await legato.waitFor(fatal, "Failed");
      assert.equal((done["output"] as Doc)["work"], "fine");
      assert.match(String(failed["error"]), /the input can never work.*after 1 attempt/);
    },
  );
});

test("progress reaches the instance's stream", async () => {
  await legato.putAgent("ts-chatty");
  await legato.register({ name: "ts-chatty", version: 1, steps: [step("work", "ts-chatty", [], {})] });
  const seen: Doc[] = await serving(
    {
      "ts-chatty": async (task) => {
        await task.progress("halfway", { percent: 50 });
        // A report sent just before the result can be overtaken by it in
        // the orchestrator (it applies an instance's messages side by
        // side), and news of a finished attempt is dropped: give the
        // report its head start.
        await new Promise((resolve) => setTimeout(resolve, 300));
        return "done";
      },
    },
    async () => {
      const id = await legato.start("ts-chatty", {});
      const response = await fetch(`${legato.url}/api/v1/instances/${id}/stream`);
      const events: Doc[] = [];
      const lines = createInterface({ input: (await import("node:stream")).Readable.fromWeb(response.body! as import("node:stream/web").ReadableStream) });
      for await (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const event = JSON.parse(line.slice(5)) as Doc;
        events.push(event);
        if (event["kind"] === "instance_completed") break;
      }
      lines.close();
      return events;
    },
  );
  const progress = seen.filter((e) => e["kind"] === "agent_progress");
  assert.equal(progress[0]?.["message"], "halfway");
  assert.deepEqual(progress[0]?.["data"] as Json, { percent: 50 });
});

test("output reaches the instance's stream as it is written", async () => {
  await legato.putAgent("ts-writer");
  await legato.register({
    name: "ts-writer",
    version: 1,
    steps: [{ id: "go", wait_for_event: { name: "go" } }, step("write", "ts-writer", ["go"], {})],
  });
  const pieces = ["Looks ", "fine, ", "ship ", "it."];
  const seen: [string, Doc][] = await serving(
    {
      "ts-writer": async (task) => {
        const out = task.output("chat 1");
        for (const piece of pieces) {
          out.push(piece);
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        await out.finish();
        return pieces.join("");
      },
    },
    async () => {
      const id = await legato.start("ts-writer", {});
      const response = await fetch(`${legato.url}/api/v1/instances/${id}/stream`);
      const events: [string, Doc][] = [];
      const lines = createInterface({ input: (await import("node:stream")).Readable.fromWeb(response.body! as import("node:stream/web").ReadableStream) });
      let name = "message";
      for await (const line of lines) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        if (!line.startsWith("data:")) continue;
        const event = JSON.parse(line.slice(5)) as Doc;
        events.push([name, event]);
        if (event["kind"] === "waiting_for_event") {
          const raised = await fetch(`${legato.url}/api/v1/instances/${id}/events/go`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: "{}",
          });
          assert.equal(raised.status, 202);
        }
        if (event["kind"] === "instance_completed") break;
      }
      lines.close();
      return events;
    },
  );
  const output = seen.filter(([name]) => name === "output").map(([, event]) => event);
  assert.equal(output.map((o) => o["text"]).join(""), pieces.join(""));
  assert.deepEqual(
    output.map((o) => o["seq"]),
    output.map((_, n) => n + 1),
  );
  assert.ok(output.every((o) => o["step"] === "write" && o["call"] === "chat 1" && o["attempt"] === 1));
  const lastPiece = seen.map(([name]) => name).lastIndexOf("output");
  const written = seen.findIndex(([, e]) => e["kind"] === "step_completed" && e["step"] === "write");
  assert.ok(lastPiece < written, JSON.stringify(seen));
});

test("SIGTERM drains the running task, then the worker exits", async () => {
  await legato.putAgent("ts-drain", { leaseMs: 30_000 });
  await legato.register({ name: "ts-drain", version: 1, steps: [step("work", "ts-drain", [], {})] });
  const script = fileURLToPath(new URL("./draining-worker.js", import.meta.url));
  const worker = spawn(process.execPath, [script, legato.url, "ts-drain"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: worker.stdout! });
  const seen: string[] = [];
  const taken = new Promise<void>((resolve) =>
    lines.on("line", (line) => {
      seen.push(line);
      if (line.startsWith("TAKEN")) resolve();
    }),
  );
  const id = await legato.start("ts-drain", {});
  await taken;
  assert.equal(seen[0], `TAKEN ${id}`);
  worker.kill("SIGTERM");
  const [code] = (await once(worker, "exit")) as [number];
  assert.equal(code, 0);
  assert.ok(seen.includes("DRAINED"), seen.join("|"));
  const done = await legato.waitFor(id, "Completed", 10_000);
  assert.deepEqual((done["output"] as Doc)["work"], { finished: true });
});
