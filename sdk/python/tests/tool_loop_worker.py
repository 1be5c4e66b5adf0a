"""A worker process whose agent runs a ten-turn model-and-tool loop through
``task.chat`` and ``task.tool`` against the model stand-in. With a turn to
die at, its first attempt kills itself with SIGKILL right after that turn's
tool result is recorded, as a deploy or an OOM kill would. Usage:
tool_loop_worker.py <legato url> <agent> <model url> [die at turn]"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import httpx
from openai import AsyncOpenAI

from legato_agent import FatalError, Task, ToolCall, Worker

TURNS = 10
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Doubles n, with a side effect the stand-in counts.",
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "required": ["n"],
            },
        },
    }
]


def agent(model_url: str, die_at: int | None) -> Any:
    model = AsyncOpenAI(base_url=model_url, api_key="sk-standin", max_retries=0)
    effects = httpx.AsyncClient(base_url=model_url.removesuffix("/v1"))

    async def add(task: Task, call: ToolCall) -> int:
        n = int(json.loads(call["arguments"])["n"])
        response = await effects.post("/effects", json={"key": f"{task.instance_id}/{call['id']}"})
        response.raise_for_status()
        return n * 2

    async def loop(task: Task) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": f"loop:{TURNS} for {task.instance_id}"}
        ]
        for turn in range(1, TURNS + 1):
            reply = await task.chat(messages, model="standin", tools=TOOLS, client=model)
            if not reply["tool_calls"]:
                return {"answer": reply["content"], "turns": turn}
            messages.append(
                {
                    "role": "assistant",
                    "content": reply["content"],
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for c in reply["tool_calls"]
                    ],
                }
            )
            for call in reply["tool_calls"]:

                async def run(call: ToolCall = call) -> int:
                    return await add(task, call)

                result = await task.tool(call, run)
                answer = {"role": "tool", "tool_call_id": call["id"], "content": str(result)}
                messages.append(answer)
            if turn == die_at and task.attempt == 1:
                print(f"DYING {task.instance_id} {turn}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        raise FatalError(f"no answer in {TURNS} turns")

    return loop


async def main(url: str, name: str, model_url: str, die_at: int | None) -> None:
    async with Worker(url=url, agents={name: agent(model_url, die_at)}, concurrency=1) as worker:
        await worker.run()


if __name__ == "__main__":
    die = int(sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], die))
