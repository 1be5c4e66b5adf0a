/** A worker process that records two steps of the task it takes, says so,
 * and never finishes: the test kills it with SIGKILL, as a crash at turn
 * three of an agent's loop would. */

import { Worker } from "../src/index.js";

const [url, agent] = process.argv.slice(2) as [string, string];
const worker = new Worker({
  url,
  concurrency: 1,
  agents: {
    [agent]: async (task) => {
      for (const turn of [1, 2]) {
        await task.step(`model turn ${turn}`, async () => ({ turn, byAttempt: task.attempt }));
      }
      process.stdout.write(`RECORDED ${task.instanceId} ${task.attempt}\n`);
      await new Promise(() => {});
    },
  },
});
await worker.run();
