"""A ten-turn model-and-tool loop through ``task.chat`` and ``task.tool``
against the OpenAI-compatible stand-in, its worker killed with SIGKILL at
turn seven: after a new worker takes the task, no model call and no tool
side effect happened twice, and the result is an uninterrupted run's."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
from conftest import Legato

WORKER = str(Path(__file__).with_name("tool_loop_worker.py"))


async def worker(legato: Legato, model_url: str, *die_at: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        WORKER,
        legato.url,
        "py-tool-loop",
        model_url,
        *die_at,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_a_loop_killed_at_turn_seven_repeats_no_model_call_or_tool(
    legato: Legato, model_url: str
) -> None:
    await legato.put_agent("py-tool-loop", leaseMs=1_500)
    await legato.register(
        {
            "name": "py-tool-loop",
            "version": 1,
            "steps": [
                {
                    "id": "loop",
                    "agent": "py-tool-loop",
                    "input": {},
                    "retry": {"max_attempts": 3, "initial_interval_ms": 50},
                }
            ],
        }
    )
    dying = await worker(legato, model_url, "7")
    killed = await legato.start("py-tool-loop", {})
    assert dying.stdout is not None
    line = (await asyncio.wait_for(dying.stdout.readline(), 60)).decode()
    assert line.split() == ["DYING", killed, "7"], line
    assert await asyncio.wait_for(dying.wait(), 30) == -9

    healthy = await worker(legato, model_url)
    try:
        resumed = await legato.wait_for(killed, "Completed", timeout_s=60)
        whole = await legato.wait_for(
            await legato.start("py-tool-loop", {}), "Completed", timeout_s=60
        )
    finally:
        healthy.terminate()
        await healthy.wait()

    base = model_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=base) as http:
        calls: dict[str, dict[str, int]] = (await http.get("/calls")).json()
        effects: dict[str, int] = (await http.get("/effects")).json()
    turns = calls[f"loop:10 for {killed}"]
    assert turns == {str(t): 1 for t in range(1, 11)}, turns
    done = {k: v for k, v in effects.items() if k.startswith(f"{killed}/")}
    assert done == {f"{killed}/call_{t}": 1 for t in range(1, 10)}, done

    def result(status: dict[str, Any]) -> Any:
        return status["output"]["loop"]

    assert (
        result(resumed)
        == result(whole)
        == {
            "answer": "done after 10 turns: " + ", ".join(str(2 * t) for t in range(1, 10)),
            "turns": 10,
        }
    )
    assert [s["attempts"] for s in resumed["steps"]] == [2]
    # Tokens travel with results: the uninterrupted run counts all ten
    # calls; the resumed one the calls its completing attempt made (the
    # killed attempt reported none; docs/agents.md, "Usage and budgets").
    assert whole["usage"]["inputTokens"] > resumed["usage"]["inputTokens"] > 0
