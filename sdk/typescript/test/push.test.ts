/**
 * Push agents in TypeScript: the SDK's handler behind `http.createServer`,
 * receiving tasks a real `legato up` POSTs (signed per Standard Webhooks),
 * answering at once or calling back; and its signature check against the
 * reference implementation (the `standardwebhooks` package).
 */

import assert from "node:assert/strict";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import { Webhook } from "standardwebhooks";

import { FatalError, type Handler, SignatureError, createPushHandler, verify } from "../src/index.js";
import { type Doc, Legato, SIGNING_SECRET } from "./legato.js";

let legato: Legato;

before(async () => {
  legato = await Legato.start();
});
after(() => legato.stop());

const review: Handler = async (task) => {
  const text = String((task.input as { text: string }).text);
  if (text === "") throw new FatalError("nothing to review");
  await task.progress("reading", { chars: text.length });
  task.addUsage({ inputTokens: text.length, outputTokens: 2, cost: 0.01, model: "m" });
  return { approved: !text.includes("TODO"), by: "push" };
};

async function run(agent: string, respond: "sync" | "callback", text: string): Promise<Doc> {
  const server: Server = createServer(
    createPushHandler({ agents: { [agent]: review }, signingSecret: SIGNING_SECRET, respond }),
  );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  try {
    await legato.putAgent(agent, { kind: "push", url: `http://127.0.0.1:${port}/`, concurrency: 4 });
    await legato.register({
      name: agent,
      version: 1,
      steps: [{ id: "review", agent, input: { text: "${{ input.text }}" } }],
    });
    return await legato.waitForEnd(await legato.start(agent, { text }));
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

test("a push handler answers tasks at once", async () => {
  const done = await run("ts-push", "sync", "ship it");
  assert.equal(done["runtimeStatus"], "Completed");
  assert.deepEqual((done["output"] as Doc)["review"], { approved: true, by: "push" });
  // What the answer's legato-usage header said it spent is counted.
  assert.deepEqual(done["usage"], { inputTokens: 7, outputTokens: 2, cost: 0.01 });
});

test("a fatal error fails the step", async () => {
  const done = await run("ts-push-fatal", "sync", "");
  assert.equal(done["runtimeStatus"], "Failed");
  assert.match(String(done["error"]), /nothing to review/);
});

test("a push handler calls back, with progress", async () => {
  const done = await run("ts-push-later", "callback", "a TODO left");
  assert.equal(done["runtimeStatus"], "Completed");
  assert.deepEqual((done["output"] as Doc)["review"], { approved: false, by: "push" });
  assert.deepEqual(done["usage"], { inputTokens: 11, outputTokens: 2, cost: 0.01 });
  const told = (done["history"] as Doc[])
    .flatMap((h) => (h["progress"] as Doc[] | undefined) ?? [])
    .filter((p) => p["kind"] === "agent_progress");
  assert.equal(told[0]?.["message"], "reading");
});

test("signatures match the reference implementation", () => {
  const body = Buffer.from(JSON.stringify({ agent: "a", input: { n: 1 } }));
  const now = Math.floor(Date.now() / 1000);
  const signature = new Webhook(SIGNING_SECRET).sign("msg_1", new Date(now * 1000), body.toString());
  const headers = { "webhook-id": "msg_1", "webhook-timestamp": String(now), "webhook-signature": signature };
  verify(SIGNING_SECRET, headers, body);
  assert.throws(() => verify(SIGNING_SECRET, headers, Buffer.concat([body, Buffer.from(" ")])), SignatureError);
  assert.throws(() => verify(SIGNING_SECRET, headers, body, now + 600), SignatureError);
  assert.throws(
    () => verify(SIGNING_SECRET, { ...headers, "webhook-signature": "v1,AAAA" }, body),
    SignatureError,
  );
});
