/**
 * The echo agent as a pull worker, for `legato bench --agent pull`: it
 * answers each task with `{value: input.value}`, as the built-in echo agent
 * does, so the bench measures what the HTTP path adds.
 *
 *   node dist/bench/echo-worker.js <gateway> <agent> <concurrency>
 */

import { Worker } from "../src/index.js";

const [url, agent, concurrency] = process.argv.slice(2) as [string, string, string];
const worker = new Worker({
  url,
  concurrency: Number(concurrency),
  pollWaitMs: 5_000,
  agents: {
    [agent]: async (task) => ({ value: (task.input as { value?: unknown } | null)?.value ?? null }),
  },
  logger: { info: () => {}, warn: console.warn, error: console.error },
});
process.stdout.write("READY\n");
await worker.run();
