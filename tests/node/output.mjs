// The stock @microsoft/signalr client sees what an agent writes as it
// writes it: a workflow waits for an event, then its echo step relays
// pieces of output; the client subscribes, raises the event, and checks
// that the `output` invocations came in order, whole, and before the step
// completed, with no `progress` event missing around them. Usage:
// node output.mjs http://127.0.0.1:PORT
import * as signalR from "@microsoft/signalr";

const base = process.argv[2];
if (!base) {
  console.error("usage: node output.mjs <legato base url>");
  process.exit(2);
}
const id = `output-${process.pid}-${Date.now()}`;
const pieces = ["Looks ", "fine, ", "ship ", "it."];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function call(method, path, body, expected) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  check(expected.includes(response.status), `${method} ${path}: ${response.status} ${text}`);
}

await call("PUT", "/api/v1/workflows/live-output", {
  name: "live-output",
  version: 1,
  steps: [
    { id: "go", wait_for_event: { name: "go" } },
    { id: "write", needs: ["go"], agent: "echo", input: { value: "done", output: pieces } },
  ],
  output: "${{ steps.write.output.value }}",
}, [200, 201]);

const seen = [];
const connection = new signalR.HubConnectionBuilder()
  .withUrl(`${base}/api/v1`)
  .configureLogging(signalR.LogLevel.Warning)
  .build();
const finished = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`not finished within 60 s; saw ${JSON.stringify(seen)}`)), 60_000);
  connection.on("output", (piece) => seen.push({ output: piece }));
  connection.on("progress", (event) => {
    seen.push({ progress: event });
    if (event.kind === "waiting_for_event") {
      call("POST", `/api/v1/instances/${id}/events/go`, {}, [202]).catch(reject);
    }
    if (event.kind === "instance_completed") {
      clearTimeout(timer);
      resolve();
    }
  });
});
await connection.start();
await call("POST", "/api/v1/workflows/live-output/instances", { instanceId: id, input: {} }, [202]);
await connection.invoke("Subscribe", id);
await finished;
await connection.stop();

const output = seen.filter((s) => s.output).map((s) => s.output);
check(output.length > 0, `no output came: ${JSON.stringify(seen)}`);
check(output.map((o) => o.text).join("") === pieces.join(""), `output ${JSON.stringify(output)}`);
output.forEach((o, n) => {
  check(o.instanceId === id && o.step === "write" && o.call === "echo" && o.attempt === 1, `piece ${JSON.stringify(o)}`);
  check(o.seq === n + 1, `piece ${n} has seq ${o.seq}`);
});
const lastPiece = seen.findLastIndex((s) => s.output);
const written = seen.findIndex((s) => s.progress?.kind === "step_completed" && s.progress.step === "write");
check(lastPiece < written, `the step completed before its output: ${JSON.stringify(seen)}`);
const positions = seen.filter((s) => s.progress).map((s) => s.progress.position);
positions.forEach((p, n) => check(n === 0 || p === positions[n - 1] + 1, `positions ${positions}`));
console.log(JSON.stringify({ instance: id, pieces: output.length, events: positions.length }));
