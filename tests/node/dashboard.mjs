// The dashboard in a real browser (Debian's chromium through
// playwright-core; nothing downloads a browser) against a running `legato
// up` that asks for API keys: sign in, list instances, start a
// feature-request from the API and watch its plan and parallel work appear
// live without a reload, approve it and see it complete, see another
// complete although its progress messages are lost, reject another and
// see it roll back and fail, see a loop drawn with its iterations, follow a child workflow run and back, see a run held by its budget and
// resume it with a higher one, answer a task's question, see an agent's text appear as it writes it and a model loop's journal, look at the workflows, pause, resume and
// trigger a schedule and open the run it started, look at an entity and send it an operation. A screenshot of each
// page is written to the output directory.
// Usage: node dashboard.mjs <base url> <admin api key> <output dir> <read-only api key>
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, key, out, reader] = process.argv.slice(2);
if (!base || !key || !out || !reader) {
  console.error("usage: node dashboard.mjs <base url> <api key> <output dir> <read-only api key>");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 30_000;
const shots = [];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function start(id) {
  const response = await fetch(`${base}/api/v1/workflows/feature-request/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: id, input: { request: "add CSV export to billing and check last month totals" } }),
  });
  check(response.status === 202, `start ${id}: ${response.status} ${await response.text()}`);
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("dialog", (dialog) => dialog.accept());
  // The instance page of `id`, connected: the page before it shows a live
  // indicator of its own until this one is drawn.
  const opened = (id) =>
    page.waitForFunction((id) => {
      const title = document.querySelector("h1");
      return title?.textContent.startsWith(`${id} `) && title.querySelector("#live.live:not(.off)") !== null;
    }, id);
  // Waits for the instance page to show `status`; on a timeout, says what
  // the page and the API showed instead.
  const shows = async (id, status) => {
    try {
      await page.waitForSelector(`h1 [data-status="${status}"]`);
    } catch (error) {
      const title = await page.evaluate(() => document.querySelector("h1")?.textContent);
      const response = await fetch(`${base}/api/v1/instances/${id}`, { headers: { authorization: `Bearer ${key}` } });
      const api = response.ok ? (await response.json()).runtimeStatus : response.status;
      throw new Error(`${id} was not shown ${status} (the page: ${JSON.stringify(title)}, the API: ${api}): ${error.message}`);
    }
  };
  const shot = async (name) => {
    const path = join(out, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    shots.push(path);
  };

  // Not signed in: the sign-in page, not an error.
  await page.goto(`${base}/`);
  await page.waitForSelector("#sign-in");
  await shot("sign-in");
  await page.fill("#token", "not-a-key");
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("#sign-in >> text=unknown API key");
  await page.fill("#token", key);
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("#instances");
  await shot("instances");

  // The list is live: a run started elsewhere appears without a reload,
  // and its status changes in place.
  await page.evaluate(() => (window.__listNotReloaded = true));
  await start("dash-live");
  await page.waitForSelector('#instances [data-id="dash-live"] [data-status="Running"]');
  const terminated = await fetch(`${base}/api/v1/instances/dash-live/terminate`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ reason: "the list test is done with it" }),
  });
  check(terminated.status === 202, `terminate: ${terminated.status}`);
  await page.waitForSelector('#instances [data-id="dash-live"] [data-status="Terminated"]');
  check(await page.evaluate(() => window.__listNotReloaded === true), "the list page reloaded");

  // Approve: the plan and the parallel work appear live, then completion.
  await start("dash-yes");
  await page.evaluate(() => (location.hash = "#/instances/dash-yes"));
  await opened("dash-yes");
  await page.evaluate(() => (window.__notReloaded = true));
  await page.waitForSelector('[data-step="plan"][data-status="Completed"]');
  await page.waitForSelector('[data-step="work"] [data-items="2/2"]');
  await page.waitForSelector('[data-waiting="approval"]');
  await shot("instance-waiting");
  await page.click("#approve");
  await shows("dash-yes", "Completed");
  await page.waitForSelector('[data-step="finalize"][data-status="Completed"]');
  check(await page.evaluate(() => window.__notReloaded === true), "the page reloaded");
  await shot("instance-completed");

  // Messages lost on the way (Azure SignalR does not resend them): with
  // every progress message of one run dropped once it waits for approval,
  // the page still comes to show how the run ended, without a reload, by
  // reading the instance again when nothing has come for a while.
  let dropping = false;
  let dropped = 0;
  await page.routeWebSocket(/\/hubs\/progress/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => server.send(message));
    server.onMessage((message) => {
      if (!dropping || typeof message !== "string") return ws.send(message);
      const frames = message.split("\x1e").filter((frame) => frame !== "");
      const kept = frames.filter((frame) => !frame.includes('"dash-lost"'));
      dropped += frames.length - kept.length;
      if (kept.length) ws.send(kept.map((frame) => `${frame}\x1e`).join(""));
    });
  });
  await start("dash-lost");
  await page.evaluate(() => (location.hash = "#/instances/dash-lost"));
  await opened("dash-lost");
  await page.waitForSelector('[data-waiting="approval"]');
  await page.evaluate(() => (window.__notReloaded = true));
  dropping = true;
  const approved = await fetch(`${base}/api/v1/instances/dash-lost/events/approval`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ approved: true, by: "the gap test" }),
  });
  check(approved.status === 202, `approve dash-lost: ${approved.status}`);
  await shows("dash-lost", "Completed");
  check(dropped > 0, "no progress message of dash-lost was dropped: the test proves nothing");
  check(await page.evaluate(() => window.__notReloaded === true), "the page reloaded");
  dropping = false;

  // Reject: the saga rolls back and the instance fails with the reason.
  await start("dash-no");
  await page.evaluate(() => (location.hash = "#/instances/dash-no"));
  await page.waitForSelector('[data-waiting="approval"]');
  await page.fill("#reason", "not this quarter");
  await page.click("#reject");
  await page.waitForSelector('h1 [data-status="Failed"]');
  await page.waitForSelector("#error >> text=not this quarter");
  await page.waitForSelector("#history >> text=compensation");
  await shot("instance-rolled-back");

  // A loop: drawn with its iteration count, its body inside it.
  const looped = await fetch(`${base}/api/v1/workflows/pattern-evaluator-optimizer/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: "dash-loop", input: { task: "add CSV export", require: ["tests", "docs"] } }),
  });
  check(looped.status === 202, `start dash-loop: ${looped.status}`);
  await page.evaluate(() => (location.hash = "#/instances/dash-loop"));
  await shows("dash-loop", "Completed");
  await page.waitForSelector('[data-step="draft"] [data-iteration="3/5"]');
  await page.waitForSelector('[data-step="draft"] .graph.body [data-step="review"][data-status="Completed"]');
  check((await page.$('#graph > .level > [data-step="review"]')) === null, "a loop's body step was drawn outside the loop");
  await shot("instance-loop");

  // Child workflows: the parent's step links each child run, whose page
  // links back to the parent.
  const parts = await fetch(`${base}/api/v1/workflows/feature-by-parts/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: "dash-kin", input: { request: "add CSV export to billing" } }),
  });
  check(parts.status === 202, `start dash-kin: ${parts.status}`);
  await page.evaluate(() => (location.hash = "#/instances/dash-kin"));
  await shows("dash-kin", "Completed");
  const titled = (id) => page.waitForFunction((id) => document.querySelector("h1")?.textContent.startsWith(`${id} `), id);
  await page.click('[data-step="parts"] a.child[data-child="dash-kin::parts.0.a1"]');
  await titled("dash-kin::parts.0.a1");
  await shows("dash-kin::parts.0.a1", "Completed");
  await page.waitForSelector("#parent >> text=step parts");
  await shot("instance-child");
  await page.click("#parent a");
  await titled("dash-kin");
  await shows("dash-kin", "Completed");

  // A budget: a run that spends past it is held, shows what it spent,
  // and resumes from the page with a higher budget.
  const spend = (id, needs) => ({ id, needs, agent: "echo", input: { value: id, usage: { input_tokens: 40, output_tokens: 20, cost: 0.5 } } });
  const registered = await fetch(`${base}/api/v1/workflows/dash-spender`, {
    method: "PUT",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ name: "dash-spender", version: 1, budget: { tokens: 100 }, steps: [spend("a", []), spend("b", ["a"]), spend("c", ["b"])] }),
  });
  check(registered.status === 201 || registered.status === 200, `register dash-spender: ${registered.status} ${await registered.text()}`);
  const spender = await fetch(`${base}/api/v1/workflows/dash-spender/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: "dash-budget", input: {} }),
  });
  check(spender.status === 202, `start dash-budget: ${spender.status}`);
  await page.evaluate(() => (location.hash = "#/instances/dash-budget"));
  await shows("dash-budget", "Suspended");
  await page.waitForSelector('#usage[data-tokens="120"] >> text=budget 100 tokens');
  await page.waitForSelector('[data-step="a"] [data-usage="60"]');
  await page.waitForSelector("#over-budget");
  await shot("instance-budget");
  await page.fill("#budget-tokens", "1000");
  await page.click("#resume");
  await shows("dash-budget", "Completed");
  await page.waitForSelector('#usage[data-tokens="180"] >> text=budget 1,000 tokens');

  // A question from inside a task: shown with its answer box; answered
  // from the page, the task goes on with the answer.
  const asker = await fetch(`${base}/api/v1/workflows/dash-asker`, {
    method: "PUT",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ name: "dash-asker", version: 1, steps: [{ id: "write", agent: "echo",
      input: { value: 1, ask: { name: "scope", question: "Which accounts?", schema: { type: "object", required: ["accounts"] } } } }] }),
  });
  check(asker.status === 201 || asker.status === 200, `register dash-asker: ${asker.status}`);
  const asked = await fetch(`${base}/api/v1/workflows/dash-asker/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: "dash-ask", input: {} }),
  });
  check(asked.status === 202, `start dash-ask: ${asked.status}`);
  await page.evaluate(() => (location.hash = "#/instances/dash-ask"));
  await page.waitForSelector('[data-question="scope"] >> text=Which accounts?');
  await shot("instance-question");
  await page.fill('[data-answer="scope"]', '{"accounts": "billing"}');
  await page.click('[data-question="scope"] button');
  await shows("dash-ask", "Completed");

  // What an agent writes shows in its step's card as it is written.
  const writer = await fetch(`${base}/api/v1/workflows/dash-writer`, {
    method: "PUT",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ name: "dash-writer", version: 1, steps: [
      { id: "go", wait_for_event: { name: "go" } },
      { id: "write", needs: ["go"], agent: "echo", input: { value: 1, output: ["Looks ", "fine, ", "ship it."], sleep_ms: 2000 } }] }),
  });
  check(writer.status === 201 || writer.status === 200, `register dash-writer: ${writer.status}`);
  const writing = await fetch(`${base}/api/v1/workflows/dash-writer/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: "dash-write", input: {} }),
  });
  check(writing.status === 202, `start dash-write: ${writing.status}`);
  await page.evaluate(() => (location.hash = "#/instances/dash-write"));
  await page.waitForSelector('[data-step="go"][data-status="Waiting"]');
  await page.waitForSelector("#live:not(.off)");
  const go = await fetch(`${base}/api/v1/instances/dash-write/events/go`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: "{}",
  });
  check(go.status === 202, `raise go: ${go.status}`);
  await page.waitForSelector('[data-step="write"][data-status="Running"] [data-output="write"] >> text=Looks fine, ship it.');
  await shot("instance-output");
  await shows("dash-write", "Completed");

  // The catalogue's model-and-tool loop: each turn and tool call is in the
  // step's journal, listed on its card.
  const dataRun = await fetch(`${base}/api/v1/workflows/ask-the-data/instances`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId: "dash-data", input: { question: "last month's totals" } }),
  });
  check(dataRun.status === 202, `start dash-data: ${dataRun.status}`);
  await page.evaluate(() => (location.hash = "#/instances/dash-data"));
  await shows("dash-data", "Completed");
  await page.waitForSelector('[data-journal="answer"] >> text=tool call_2');
  await shot("instance-journal");

  // The list shows both; the workflows and one definition's source.
  await page.evaluate(() => (location.hash = "#/"));
  await page.waitForSelector('#instances [data-id="dash-no"]');
  await page.selectOption("#filter-status", "Failed");
  await page.waitForSelector('#instances [data-id="dash-no"]');
  check((await page.$('#instances [data-id="dash-yes"]')) === null, "the status filter let a Completed instance through");
  await shot("instances-failed");
  await page.evaluate(() => (location.hash = "#/workflows"));
  await page.waitForSelector('#workflows [data-name="feature-request"]');
  await shot("workflows");
  await page.click('#workflows [data-name="feature-request"]');
  await page.waitForSelector("#source >> text=wait_for_event");
  await shot("workflow-source");

  // A schedule (made through the API): listed, paused with a note,
  // resumed, triggered; its run is linked from the recent runs.
  const put = await fetch(`${base}/api/v1/schedules/nightly`, {
    method: "PUT",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ workflow: "fan-out-fan-in", cron: "0 2 * * *", timeZone: "Europe/Paris", input: { value: 1 } }),
  });
  check(put.status === 201, `put schedule: ${put.status} ${await put.text()}`);
  await page.evaluate(() => (location.hash = "#/schedules"));
  await page.waitForSelector('#schedules [data-name="nightly"]');
  await shot("schedules");
  await page.click('#schedules [data-name="nightly"]');
  await page.waitForSelector("#next-runs li");
  await page.fill("#note", "billing freeze");
  await page.click("#pause");
  await page.waitForSelector("#schedule-note >> text=billing freeze");
  check((await page.textContent("#schedule-state")) === "paused", "the schedule is not shown paused");
  await page.click("#resume");
  await page.waitForSelector("#schedule-state >> text=active");
  await page.click("#trigger");
  await page.waitForSelector("#banner >> text=Triggered");
  const deadline = Date.now() + TIMEOUT;
  while (!(await page.$("#recent-runs a"))) {
    check(Date.now() < deadline, "the triggered run never appeared");
    await new Promise((r) => setTimeout(r, 300));
    await page.evaluate(() => window.dispatchEvent(new HashChangeEvent("hashchange")));
  }
  await shot("schedule");
  await page.click("#recent-runs a");
  await page.waitForSelector("#live");
  check((await page.textContent("h1")).startsWith("nightly:"), "the run's page is not the run's");

  // The agents page: the built-in agents and a pull agent registered
  // through the API, with how to serve it.
  const agent = await fetch(`${base}/api/v1/agents/reviewer`, {
    method: "PUT",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ kind: "pull", leaseMs: 30000, description: "reviews drafts (Python)" }),
  });
  check(agent.status === 201, `put agent: ${agent.status} ${await agent.text()}`);
  await page.evaluate(() => (location.hash = "#/agents"));
  await page.waitForSelector('#agents [data-name="reviewer"]');
  await page.waitForSelector('#agents [data-name="echo"] >> text=builtin');
  // The echo agent's figures, once reported (every 5 s): the runs above.
  let completed = "0";
  for (let i = 0; i < 40 && !(Number(completed) > 0); i++) {
    await page.evaluate(() => (location.hash = `#/agents?at=${Date.now()}`));
    await page.waitForSelector('#agents [data-name="echo"] [data-figure="completed"]');
    completed = await page.textContent('#agents [data-name="echo"] [data-figure="completed"]');
    if (!(Number(completed) > 0)) await new Promise((resolve) => setTimeout(resolve, 250));
  }
  check(Number(completed) > 0, `echo's completed tasks are not shown: ${completed}`);
  await shot("agents");
  await page.click('#agents [data-name="reviewer"]');
  await page.waitForSelector("#agent-howto >> text=legato_agent");
  check((await page.textContent("#agent-kind")) === "pull", "the agent is not shown as a pull agent");
  await page.waitForSelector("#agent-figures >> text=0 running");
  await page.waitForSelector("#agent-workers >> text=no worker polled");

  // The entities page: one made through the API, its state and latest
  // operations, and an operation sent from the page.
  const signal = await fetch(`${base}/api/v1/entities/counter/dash-visits/operations`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ op: "increment", by: 2 }),
  });
  check(signal.status === 202, `signal an entity: ${signal.status} ${await signal.text()}`);
  for (let i = 0; i < 40; i++) {
    await page.evaluate(() => (location.hash = `#/entities?type=counter&at=${Date.now()}`));
    await page.waitForSelector("#entities");
    if (await page.$('#entities [data-entity="counter/dash-visits"]')) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await page.click('#entities [data-entity="counter/dash-visits"]');
  await page.waitForSelector("#entity-count >> text=1 operations");
  await page.fill("#entity-operation", '{"op": "increment", "by": 3}');
  await page.click("#send-operation");
  await page.waitForSelector("#entity-count >> text=2 operations");
  check((await page.textContent("#entity-state")).trim() === "5", "the entity's state is not 5");
  await page.waitForSelector('#entity-operations [data-seq="2"] >> text=5');
  await shot("entity");

  // An entity busy with a custom operation (its run waits for an event)
  // says so, linking the run, with the operations waiting behind it.
  const putJson = (path, body, type) =>
    fetch(`${base}${path}`, {
      method: "PUT",
      headers: { "content-type": type, authorization: `Bearer ${key}` },
      body,
    });
  const heldOp = await putJson(
    "/api/v1/workflows/dash-held-op",
    JSON.stringify({
      name: "dash-held-op", version: 1,
      steps: [{ id: "go", wait_for_event: { name: "go" } }],
      output: { answer: "done" },
    }),
    "application/json",
  );
  check(heldOp.status === 201 || heldOp.status === 200, `register dash-held-op: ${heldOp.status}`);
  const visitor = await putJson(
    "/api/v1/entity-types/dash-visitor",
    JSON.stringify({ operations: { visit: { workflow: "dash-held-op" } } }),
    "application/json",
  );
  check(visitor.status === 201 || visitor.status === 200, `register dash-visitor: ${visitor.status} ${await visitor.text()}`);
  for (const op of [{ op: "visit" }, { op: "set", value: 1 }]) {
    const sent = await fetch(`${base}/api/v1/entities/dash-visitor/ann/operations`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
      body: JSON.stringify(op),
    });
    check(sent.status === 202, `send ${op.op}: ${sent.status} ${await sent.text()}`);
  }
  for (let i = 0; i < 40; i++) {
    await page.evaluate((at) => (location.hash = `#/entities/dash-visitor/ann?at=${at}`), Date.now());
    await page.waitForSelector("#entity-state");
    if (await page.$("#entity-busy >> text=1 operations wait")) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await page.waitForSelector("#entity-busy >> text=custom operation visit");
  await shot("entity-busy");

  // Purge from the instance page, confirmed.
  await page.evaluate(() => (location.hash = "#/instances/dash-no"));
  await page.click("#purge");
  await page.waitForSelector("#instances");
  check((await page.$('#instances [data-id="dash-no"]')) === null, "the purged instance is still listed");

  // A reader sees, and is told plainly what it may not do.
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in");
  await page.fill("#token", reader);
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector('#instances [data-id="dash-yes"]');
  await page.evaluate(() => (location.hash = "#/instances/dash-yes"));
  await page.click("#restart");
  await page.waitForSelector("#not-allowed >> text=Operate");
  await shot("not-allowed");

  check(errors.length === 0, `errors in the page: ${errors.join("; ")}`);
  console.log(JSON.stringify({ screenshots: shots }));
} finally {
  await browser.close();
}
