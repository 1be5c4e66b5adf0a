"""The Python SDK against a real ``legato up``: agents written as async
functions serve workflow steps beside the built-in agents, at volume, across
a worker killed mid-task, through cancellation, and with progress live on the
instance's stream."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conftest import Legato

from legato_agent import FatalError, Task, Worker


@asynccontextmanager
async def serving(
    legato: Legato, agents: dict[str, Callable[[Task], Awaitable[Any]]], **options: Any
) -> AsyncIterator[Worker]:
    worker = Worker(url=legato.url, agents=agents, poll_wait_ms=2_000, **options)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        yield worker
    finally:
        worker.stop()
        await running
        await worker.__aexit__(None, None, None)


def step(id: str, agent: str, needs: list[str], input: Any, **extra: Any) -> dict[str, Any]:
    return {"id": id, "agent": agent, "needs": needs, "input": input, **extra}


async def test_a_python_agent_serves_a_step_between_built_in_agents(legato: Legato) -> None:
    await legato.put_agent("py-reviewer", leaseMs=5_000)
    await legato.register(
        {
            "name": "py-reviewed",
            "version": 1,
            "steps": [
                step("draft", "echo", [], {"value": "${{ input.text }}"}),
                step("review", "py-reviewer", ["draft"], {"draft": "${{ steps.draft.output }}"}),
                step("publish", "echo", ["review"], {"value": "${{ steps.review.output }}"}),
            ],
        }
    )

    async def review(task: Task) -> dict[str, Any]:
        text = task.input["draft"]["value"]
        return {"approved": "TODO" not in text, "attempt": task.attempt, "seen": text}

    async with serving(legato, {"py-reviewer": review}):
        instance = await legato.start("py-reviewed", {"text": "ship it"})
        done = await legato.wait_for(instance, "Completed")
    assert done["output"]["publish"]["value"] == {
        "approved": True,
        "attempt": 1,
        "seen": "ship it",
    }


async def test_five_hundred_tasks_over_four_workers_each_recorded_once(legato: Legato) -> None:
    await legato.put_agent("py-square")
    await legato.register(
        {
            "name": "py-squares",
            "version": 1,
            "steps": [
                {
                    "id": "squares",
                    "agent": "py-square",
                    "for_each": "${{ input.numbers }}",
                    "max_parallel": 64,
                    "input": {"n": "${{ item }}"},
                }
            ],
        }
    )
    runs: collections.Counter[str] = collections.Counter()

    def square_for(worker: str) -> Callable[[Task], Awaitable[Any]]:
        async def square(task: Task) -> int:
            runs[worker] += 1
            await asyncio.sleep(0.001)
            return int(task.input["n"]) ** 2

        return square

    async with (
        serving(legato, {"py-square": square_for("a")}, concurrency=8),
        serving(legato, {"py-square": square_for("b")}, concurrency=8),
        serving(legato, {"py-square": square_for("c")}, concurrency=8),
        # More slots than one poll may ask for: it asks for the most.
        serving(legato, {"py-square": square_for("d")}, concurrency=100),
    ):
        instance = await legato.start("py-squares", {"numbers": list(range(500))})
        done = await legato.wait_for(instance, "Completed", timeout_s=120)
    assert done["output"]["squares"] == [n * n for n in range(500)]
    assert sum(runs.values()) == 500, runs
    assert len(runs) == 4, f"every worker took tasks: {runs}"


async def test_a_worker_killed_mid_task_has_its_task_retried_elsewhere(legato: Legato) -> None:
    await legato.put_agent("py-fragile", leaseMs=1_500)
    await legato.register(
        {
            "name": "py-fragile",
            "version": 1,
            "steps": [
                step(
                    "work",
                    "py-fragile",
                    [],
                    {"n": 1},
                    retry={"max_attempts": 3, "initial_interval_ms": 50},
                )
            ],
        }
    )
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("hanging_worker.py")),
        legato.url,
        "py-fragile",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        instance = await legato.start("py-fragile", {})
        assert victim.stdout is not None
        line = (await asyncio.wait_for(victim.stdout.readline(), 30)).decode()
        assert line.split() == ["TAKEN", instance, "1"], line
    finally:
        victim.kill()
        await victim.wait()

    async def finish(task: Task) -> dict[str, int]:
        return {"attempt": task.attempt}

    async with serving(legato, {"py-fragile": finish}):
        done = await legato.wait_for(instance, "Completed", timeout_s=30)
    assert done["output"]["work"] == {"attempt": 2}
    retried = [
        p for h in done["history"] for p in h.get("progress", []) if p["kind"] == "step_retrying"
    ]
    assert "no heartbeat for 1500 ms" in retried[0]["message"], retried


async def test_a_terminated_instance_cancels_its_running_task(legato: Legato) -> None:
    await legato.put_agent("py-slow", leaseMs=1_500)
    await legato.register(
        {"name": "py-slow", "version": 1, "steps": [step("work", "py-slow", [], {})]}
    )
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(task: Task) -> None:
        started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            if task.cancelled:
                cancelled.set()
            raise

    async with serving(legato, {"py-slow": slow}) as worker:
        instance = await legato.start("py-slow", {})
        await asyncio.wait_for(started.wait(), 30)
        response = await legato.http.post(
            f"/api/v1/instances/{instance}/terminate", json={"reason": "enough"}
        )
        assert response.status_code == 202
        await asyncio.wait_for(cancelled.wait(), 10)
        for _ in range(100):
            if worker.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.in_flight == 0
    await legato.wait_for(instance, "Terminated")


async def test_errors_fail_or_retry_the_step(legato: Legato) -> None:
    await legato.put_agent("py-moody")
    await legato.register(
        {
            "name": "py-moody",
            "version": 1,
            "steps": [
                step(
                    "work",
                    "py-moody",
                    [],
                    {"mood": "${{ input.mood }}"},
                    retry={"max_attempts": 2, "initial_interval_ms": 10},
                )
            ],
        }
    )

    async def moody(task: Task) -> str:
        if task.input["mood"] == "fatal":
            raise FatalError("the input can never work")
        if task.attempt == 1:
            raise ConnectionError("flaky model endpoint")
        return "fine"

    async with serving(legato, {"py-moody": moody}):
        flaky = await legato.start("py-moody", {"mood": "flaky"})
        fatal = await legato.start("py-moody", {"mood": "fatal"})
        done = await legato.wait_for(flaky, "Completed")
        failed = await legato.wait_for(fatal, "Failed")
    assert done["output"]["work"] == "fine"
    assert "the input can never work" in failed["error"]
    assert "after 1 attempt" in failed["error"], "a fatal error is not retried"


async def test_progress_reaches_the_instance_stream(legato: Legato) -> None:
    await legato.put_agent("py-chatty")
    await legato.register(
        {"name": "py-chatty", "version": 1, "steps": [step("work", "py-chatty", [], {})]}
    )

    async def chatty(task: Task) -> str:
        await task.progress("halfway", {"percent": 50})
        return "done"

    async with serving(legato, {"py-chatty": chatty}):
        instance = await legato.start("py-chatty", {})
        seen: list[dict[str, Any]] = []
        async with legato.http.stream(
            "GET", f"/api/v1/instances/{instance}/stream", timeout=30
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    seen.append(event)
                    if event.get("kind") == "instance_completed":
                        break
    progress = [e for e in seen if e.get("kind") == "agent_progress"]
    assert progress, seen
    assert progress[0]["message"] == "halfway"
    assert progress[0]["data"] == {"percent": 50}


async def test_output_reaches_the_stream_as_it_is_written(legato: Legato) -> None:
    await legato.put_agent("py-writer")
    await legato.register(
        {
            "name": "py-writer",
            "version": 1,
            "steps": [
                {"id": "go", "wait_for_event": {"name": "go"}},
                step("write", "py-writer", ["go"], {}),
            ],
        }
    )
    pieces = ["Looks ", "fine, ", "ship ", "it."]

    async def writer(task: Task) -> str:
        async with task.output("chat 1") as out:
            for piece in pieces:
                out.push(piece)
                await asyncio.sleep(0.01)
        return "".join(pieces)

    async with serving(legato, {"py-writer": writer}):
        instance = await legato.start("py-writer", {})
        seen: list[tuple[str, dict[str, Any]]] = []
        async with legato.http.stream(
            "GET", f"/api/v1/instances/{instance}/stream", timeout=30
        ) as stream:
            name = "message"
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                seen.append((name, event))
                if event.get("kind") == "waiting_for_event":
                    raised = await legato.http.post(
                        f"/api/v1/instances/{instance}/events/go", json={}
                    )
                    assert raised.status_code == 202, raised.text
                if event.get("kind") == "instance_completed":
                    break
    output = [event for name, event in seen if name == "output"]
    assert "".join(o["text"] for o in output) == "".join(pieces), seen
    assert [o["seq"] for o in output] == list(range(1, len(output) + 1))
    assert {(o["step"], o["call"], o["attempt"]) for o in output} == {("write", "chat 1", 1)}
    last_piece = max(i for i, (name, _) in enumerate(seen) if name == "output")
    written = next(
        i
        for i, (_, e) in enumerate(seen)
        if e.get("kind") == "step_completed" and e.get("step") == "write"
    )
    assert last_piece < written, seen


async def test_sigterm_drains_the_running_task_then_exits(legato: Legato) -> None:
    await legato.put_agent("py-drain", leaseMs=30_000)
    await legato.register(
        {"name": "py-drain", "version": 1, "steps": [step("work", "py-drain", [], {})]}
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("draining_worker.py")),
        legato.url,
        "py-drain",
        stdout=asyncio.subprocess.PIPE,
    )
    assert worker.stdout is not None
    instance = await legato.start("py-drain", {})
    line = (await asyncio.wait_for(worker.stdout.readline(), 30)).decode()
    assert line.split() == ["TAKEN", instance], line
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    rest = (await worker.stdout.read()).decode()
    assert "DRAINED" in rest, rest
    done = await legato.wait_for(instance, "Completed", timeout_s=10)
    assert done["output"]["work"] == {"finished": True}


async def test_a_killed_workers_recorded_steps_are_not_run_again(legato: Legato) -> None:
    await legato.put_agent("py-looping", leaseMs=1_500)
    await legato.register(
        {
            "name": "py-looping",
            "version": 1,
            "steps": [
                step(
                    "loop",
                    "py-looping",
                    [],
                    {},
                    retry={"max_attempts": 3, "initial_interval_ms": 50},
                )
            ],
        }
    )
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("journaling_worker.py")),
        legato.url,
        "py-looping",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        instance = await legato.start("py-looping", {})
        assert victim.stdout is not None
        line = (await asyncio.wait_for(victim.stdout.readline(), 30)).decode()
        assert line.split() == ["RECORDED", instance, "1"], line
    finally:
        victim.kill()
        await victim.wait()

    ran: list[str] = []

    async def resume(task: Task) -> dict[str, Any]:
        said = []
        for turn in (1, 2, 3):

            async def model_call(turn: int = turn) -> dict[str, Any]:
                ran.append(f"model turn {turn}")
                return {"turn": turn, "by attempt": task.attempt}

            said.append(await task.step(f"model turn {turn}", model_call))
        return {"said": said, "journal": sorted(task.journal)}

    async with serving(legato, {"py-looping": resume}):
        done = await legato.wait_for(instance, "Completed", timeout_s=30)
    assert ran == ["model turn 3"], "the recorded turns were not done again"
    assert done["output"]["loop"] == {
        "said": [
            {"turn": 1, "by attempt": 1},
            {"turn": 2, "by attempt": 1},
            {"turn": 3, "by attempt": 2},
        ],
        "journal": ["model turn 1", "model turn 2"],
    }
    recorded = [
        p["data"]["name"]
        for h in done["history"]
        for p in h.get("progress", [])
        if p["kind"] == "journal_recorded"
    ]
    assert recorded == ["model turn 1", "model turn 2", "model turn 3"], recorded


async def test_a_step_name_twice_fails_the_step_for_good(legato: Legato) -> None:
    await legato.put_agent("py-twice")
    await legato.register(
        {
            "name": "py-twice",
            "version": 1,
            "steps": [step("s", "py-twice", [], {}, retry={"max_attempts": 3})],
        }
    )

    async def twice(task: Task) -> None:
        async def one() -> int:
            return 1

        await task.step("same", one)
        await task.step("same", one)

    async with serving(legato, {"py-twice": twice}):
        instance = await legato.start("py-twice", {})
        done = await legato.wait_for(instance, "Failed")
    assert "ran twice in one attempt" in done["error"], done["error"]


async def test_usage_is_counted_and_a_budget_holds_the_run(legato: Legato) -> None:
    await legato.put_agent("py-spender")
    await legato.register(
        {
            "name": "py-spender",
            "version": 1,
            "budget": {"tokens": 100},
            "steps": [
                step("a", "py-spender", [], {}),
                step("b", "py-spender", ["a"], {}),
                step("c", "echo", ["b"], {"value": 1}),
            ],
        }
    )

    async def spend(task: Task) -> str:
        async def model_call() -> str:
            task.add_usage(input_tokens=50, output_tokens=10, cost=0.25, model="gpt-test")
            return "said"

        return await task.step("model", model_call)

    async with serving(legato, {"py-spender": spend}):
        instance = await legato.start("py-spender", {})
        held = await legato.wait_for(instance, "Suspended")
        assert held["usage"] == {"inputTokens": 100, "outputTokens": 20, "cost": 0.5}
        assert held["steps"][1]["usage"]["inputTokens"] == 50
        refused = await legato.http.post(f"/api/v1/instances/{instance}/resume", json={})
        assert refused.status_code == 409, refused.text
        raised = await legato.http.post(
            f"/api/v1/instances/{instance}/resume", json={"budget": {"tokens": 1000}}
        )
        assert raised.status_code == 202, raised.text
        done = await legato.wait_for(instance, "Completed")
    assert done["budget"] == {"tokens": 1000}


async def test_a_task_asks_a_person_and_goes_on_with_the_answer(legato: Legato) -> None:
    await legato.put_agent("py-asker")
    await legato.register(
        {"name": "py-asker", "version": 1, "steps": [step("write", "py-asker", [], {})]}
    )
    planned: list[int] = []

    async def write(task: Task) -> dict[str, Any]:
        async def plan() -> str:
            planned.append(task.attempt)
            return "a plan"

        the_plan = await task.step("plan", plan)
        scope = await task.ask(
            "scope",
            "Which accounts?",
            schema={"type": "object", "required": ["accounts"]},
        )
        return {"plan": the_plan, "scope": scope, "attempt": task.attempt}

    async with serving(legato, {"py-asker": write}):
        instance = await legato.start("py-asker", {})
        for _ in range(300):
            current = await legato.status(instance)
            question = (current["steps"] or [{}])[0].get("question")
            if question:
                break
            await asyncio.sleep(0.05)
        assert question == {
            "name": "scope",
            "question": "Which accounts?",
            "schema": {"type": "object", "required": ["accounts"]},
        }
        answered = await legato.http.post(
            f"/api/v1/instances/{instance}/events/scope", json={"accounts": "billing"}
        )
        assert answered.status_code == 202, answered.text
        done = await legato.wait_for(instance, "Completed")
    assert done["output"]["write"] == {
        "plan": "a plan",
        "scope": {"accounts": "billing"},
        "attempt": 2,
    }
    assert planned == [1], "the journaled step before the question ran once"
