/** A worker process whose agent runs a ten-turn model-and-tool loop through
 * `task.chat` and `task.tool` against the model stand-in. With a turn to die
 * at, its first attempt kills itself with SIGKILL right after that turn's
 * tool result is recorded, as a deploy or an OOM kill would.
 * Usage: tool-loop-worker.js <legato url> <agent> <model url> [die at turn] */

import { OpenAI } from "openai";
import type { ChatCompletionMessageParam, ChatCompletionTool } from "openai/resources/chat/completions";

import { FatalError, type Task, type ToolCall, Worker } from "../src/index.js";

const [url, agent, modelUrl, dieAt] = process.argv.slice(2) as [string, string, string, string | undefined];
const TURNS = 10;
const tools: ChatCompletionTool[] = [
  {
    type: "function",
    function: {
      name: "add",
      description: "Doubles n, with a side effect the stand-in counts.",
      parameters: { type: "object", properties: { n: { type: "integer" } }, required: ["n"] },
    },
  },
];
const client = new OpenAI({ baseURL: modelUrl, apiKey: "sk-standin", maxRetries: 0 });

async function add(task: Task, call: ToolCall): Promise<number> {
  const { n } = JSON.parse(call.arguments) as { n: number };
  const response = await fetch(`${modelUrl.replace(/\/v1$/, "")}/effects`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key: `${task.instanceId}/${call.id}` }),
  });
  if (!response.ok) throw new Error(`effects: ${response.status}`);
  return n * 2;
}

const worker = new Worker({
  url,
  concurrency: 1,
  agents: {
    [agent]: async (task) => {
      const messages: ChatCompletionMessageParam[] = [{ role: "user", content: `loop:${TURNS} for ${task.instanceId}` }];
      for (let turn = 1; turn <= TURNS; turn++) {
        const reply = await task.chat(messages, { model: "standin", tools, client });
        if (reply.toolCalls.length === 0) return { answer: reply.content, turns: turn };
        messages.push({
          role: "assistant",
          content: reply.content,
          tool_calls: reply.toolCalls.map((c) => ({
            id: c.id,
            type: "function" as const,
            function: { name: c.name, arguments: c.arguments },
          })),
        });
        for (const call of reply.toolCalls) {
          const result = await task.tool(call, () => add(task, call));
          messages.push({ role: "tool", tool_call_id: call.id, content: String(result) });
        }
        if (String(turn) === dieAt && task.attempt === 1) {
          process.stdout.write(`DYING ${task.instanceId} ${turn}\n`);
          process.kill(process.pid, "SIGKILL");
        }
      }
      throw new FatalError(`no answer in ${TURNS} turns`);
    },
  },
});
await worker.run();
