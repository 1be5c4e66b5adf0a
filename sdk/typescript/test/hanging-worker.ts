/** A worker process that takes one task of the agent it is given and never
 * finishes it: the test kills it with SIGKILL mid-task. */

import { Worker } from "../src/index.js";

const [url, agent] = process.argv.slice(2) as [string, string];
const worker = new Worker({
  url,
  concurrency: 1,
  agents: {
    [agent]: async (task) => {
      process.stdout.write(`TAKEN ${task.instanceId} ${task.attempt}\n`);
      await new Promise(() => {});
    },
  },
});
await worker.run();
