"""A worker process serving one agent that upper-cases ``input.text``: the
TypeScript SDK's tests run it beside a TypeScript agent in one workflow."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from legato_agent import Task, Worker


async def upper(task: Task) -> dict[str, Any]:
    return {"text": str(task.input["text"]).upper(), "by": "python"}


async def main(url: str, agent: str) -> None:
    print("READY", flush=True)
    async with Worker(url=url, agents={agent: upper}, poll_wait_ms=2_000) as worker:
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
