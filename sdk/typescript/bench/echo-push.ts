/**
 * The echo agent as a push endpoint, for `legato bench --agent push`: it
 * verifies each signed task and answers `{value: input.value}` at once, as
 * the built-in echo agent does, so the bench measures what the push path
 * adds. Listens on a free loopback port and prints `READY <port>`.
 *
 *   node dist/bench/echo-push.js <agent> <signing secret>
 */

import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

import { createPushHandler } from "../src/index.js";

const [agent, signingSecret] = process.argv.slice(2) as [string, string];
const server = createServer(
  createPushHandler({
    signingSecret,
    agents: {
      [agent]: async (task) => ({ value: (task.input as { value?: unknown } | null)?.value ?? null }),
    },
  }),
);
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`);
});
