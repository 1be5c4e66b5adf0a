/** A worker process whose one task takes a while: the test sends it SIGTERM
 * mid-task and expects the task to finish and the process to exit cleanly. */

import { Worker } from "../src/index.js";

const [url, agent] = process.argv.slice(2) as [string, string];
const worker = new Worker({
  url,
  concurrency: 2,
  pollWaitMs: 2_000,
  agents: {
    [agent]: async (task) => {
      process.stdout.write(`TAKEN ${task.instanceId}\n`);
      await new Promise((r) => setTimeout(r, 1_500));
      return { finished: true };
    },
  },
});
await worker.run();
process.stdout.write("DRAINED\n");
