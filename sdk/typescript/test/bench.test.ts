/**
 * `legato bench --agent pull|push` with this SDK's bench scripts (the echo
 * worker and the echo push endpoint): each prints its run beside the
 * built-in one. Figures are the bench's to print, not this test's to judge.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";
import { promisify } from "node:util";

import { REPO, binary } from "./legato.js";

const run = promisify(execFile);

for (const [agent, extra] of [
  ["pull", ["--agent-workers", "2"]],
  ["push", []],
] as const) {
  test(`legato bench --agent ${agent} prints its run beside the built-in one`, async () => {
    const { stdout } = await run(
      binary(),
      ["bench", "--instances", "30", "--concurrency", "4", "--agent", agent, ...extra],
      { cwd: REPO, env: { ...process.env, LEGATO__TELEMETRY__LOG: "warn" }, timeout: 120_000 },
    );
    assert.match(stdout, new RegExp(`bench-${agent}: the same workflow on a ${agent} agent`));
    assert.match(stdout, /30 completed, 0 failed in [\d.]+ s = [\d.]+ instances\/s \(\d+% of built-in/);
    assert.match(stdout, /ms p50 per task on the 2-task path/);
  });
}
