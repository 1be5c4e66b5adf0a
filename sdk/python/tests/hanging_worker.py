"""A worker process that takes one task of the agent it is given and then
never finishes it: the test kills it with SIGKILL mid-task."""

from __future__ import annotations

import asyncio
import sys

from legato_agent import Task, Worker


async def hang(task: Task) -> None:
    print(f"TAKEN {task.instance_id} {task.attempt}", flush=True)
    await asyncio.Event().wait()


async def main(url: str, agent: str) -> None:
    async with Worker(url=url, agents={agent: hang}, concurrency=1) as worker:
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
