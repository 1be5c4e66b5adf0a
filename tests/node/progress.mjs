// The stock @microsoft/signalr client against a running `legato up`:
// connects through the gateway's negotiate (which redirects to the local
// hub), starts a feature-request, subscribes to it, approves it when the
// approval request arrives, and checks that every progress event came, in
// order, ending in Completed. Usage: node progress.mjs http://127.0.0.1:PORT
// [API key]: with a key, every call and the hub connection authenticate
// with it (the client's accessTokenFactory, as a dashboard would).
import * as signalR from "@microsoft/signalr";

const base = process.argv[2];
const key = process.argv[3];
const auth = key ? { authorization: `Bearer ${key}` } : {};
if (!base) {
  console.error("usage: node progress.mjs <legato base url>");
  process.exit(2);
}
const id = `node-${process.pid}-${Date.now()}`;
const FINAL = ["instance_completed", "instance_failed", "instance_terminated"];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function post(path, body) {
  const response = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...auth },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  check(response.status === 202, `POST ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

const events = [];
const connection = new signalR.HubConnectionBuilder()
  .withUrl(`${base}/api/v1`, key ? { accessTokenFactory: () => key } : {})
  .configureLogging(signalR.LogLevel.Warning)
  .build();

let approved = false;
const finished = new Promise((resolve, reject) => {
  const timer = setTimeout(
    () => reject(new Error(`no final event within 60 s; saw ${events.map((e) => e.kind).join(", ")}`)),
    60_000,
  );
  connection.on("progress", (event) => {
    events.push(event);
    if (event.kind === "approval_requested" && !approved) {
      approved = true;
      post(`/api/v1/instances/${id}/events/${event.data.event}`, { approved: true, by: "node" }).catch(reject);
    }
    if (FINAL.includes(event.kind)) {
      clearTimeout(timer);
      resolve();
    }
  });
});

await connection.start();
check(connection.state === signalR.HubConnectionState.Connected, `state ${connection.state}`);
await post("/api/v1/workflows/feature-request/instances", {
  instanceId: id,
  input: { request: "add CSV export to billing and check last month totals" },
});
const snapshot = await connection.invoke("Subscribe", id);
check(snapshot.instanceId === id, `Subscribe answered ${JSON.stringify(snapshot)}`);
await finished;
await connection.stop();

const kinds = events.map((e) => e.kind);
check(events.every((e) => e.instanceId === id), "an event of another instance arrived");
check(kinds[0] === "instance_started", `first event ${kinds[0]}`);
check(kinds.at(-1) === "instance_completed", `last event ${kinds.at(-1)}`);
check(events.at(-1).status === "Completed", `final status ${events.at(-1).status}`);
check(kinds.filter((k) => FINAL.includes(k)).length === 1, "more than one final event");
for (let i = 1; i < events.length; i++) {
  check(events[i].seq >= events[i - 1].seq, `out of order at ${i}: ${events[i - 1].seq} then ${events[i].seq}`);
}
const completedSteps = events.filter((e) => e.kind === "step_completed").map((e) => e.step);
for (const step of ["plan", "work", "ask", "approve", "verdict", "finalize"]) {
  check(completedSteps.includes(step), `no step_completed for ${step}: ${completedSteps}`);
}
check(kinds.indexOf("approval_requested") < kinds.indexOf("event_received"), "approval arrived before it was asked for");

// Nothing was missed: the last event is the last entry of the history.
const status = await (await fetch(`${base}/api/v1/instances/${id}?history=true`, { headers: auth })).json();
check(status.runtimeStatus === "Completed", `instance is ${status.runtimeStatus}`);
check(status.history.at(-1).seq === events.at(-1).seq, `history ends at ${status.history.at(-1).seq}, events at ${events.at(-1).seq}`);
console.log(JSON.stringify({ instance: id, events: events.length, kinds }));
