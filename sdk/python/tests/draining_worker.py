"""A worker process whose one task takes a while: the test sends it SIGTERM
mid-task and expects the task to finish and the process to exit cleanly."""

from __future__ import annotations

import asyncio
import sys

from legato_agent import Task, Worker


async def slow(task: Task) -> dict[str, object]:
    print(f"TAKEN {task.instance_id}", flush=True)
    await asyncio.sleep(1.5)
    return {"finished": True}


async def main(url: str, agent: str) -> None:
    async with Worker(url=url, agents={agent: slow}, concurrency=2, poll_wait_ms=2_000) as worker:
        await worker.run()
    print("DRAINED", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
