"""A worker process that records two steps of the task it takes, says so, and
then never finishes: the test kills it with SIGKILL, as a crash at turn three
of an agent's loop would."""

from __future__ import annotations

import asyncio
import sys

from legato_agent import Task, Worker


async def work(task: Task) -> None:
    for turn in (1, 2):

        async def model_call(turn: int = turn) -> dict[str, object]:
            return {"turn": turn, "by attempt": task.attempt}

        await task.step(f"model turn {turn}", model_call)
    print(f"RECORDED {task.instance_id} {task.attempt}", flush=True)
    await asyncio.Event().wait()


async def main(url: str, agent: str) -> None:
    async with Worker(url=url, agents={agent: work}, concurrency=1) as worker:
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
