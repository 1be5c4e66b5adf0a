"""Push agents in Python: the SDK's ASGI app behind uvicorn, receiving tasks a
real ``legato up`` POSTs (signed per Standard Webhooks), answering at once or
calling back; and its signature check against the reference implementation
(the ``standardwebhooks`` package)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
import uvicorn
from conftest import SIGNING_SECRET, Legato
from standardwebhooks.webhooks import Webhook

from legato_agent import FatalError, PushApp, SignatureError, Task, verify


@asynccontextmanager
async def pushed_to(app: PushApp) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await serving


async def review(task: Task) -> dict[str, Any]:
    text = str(task.input["text"])
    if not text:
        raise FatalError("nothing to review")
    await task.progress("reading", {"chars": len(text)})
    task.add_usage(input_tokens=len(text), output_tokens=2, cost=0.01, model="m")
    return {"approved": "TODO" not in text, "by": "push"}


async def run(
    legato: Legato, agent: str, respond: Literal["sync", "callback"], text: str
) -> dict[str, Any]:
    app = PushApp(agents={agent: review}, signing_secret=SIGNING_SECRET, respond=respond)
    async with pushed_to(app) as url:
        await legato.put_agent(agent, kind="push", url=url, concurrency=4)
        await legato.register(
            {
                "name": agent,
                "version": 1,
                "steps": [{"id": "review", "agent": agent, "input": {"text": "${{ input.text }}"}}],
            }
        )
        instance = await legato.start(agent, {"text": text})
        done = await legato.wait_for_end(instance)
    return done


async def test_a_push_app_answers_tasks_at_once(legato: Legato) -> None:
    done = await run(legato, "py-push", "sync", "ship it")
    assert done["runtimeStatus"] == "Completed"
    assert done["output"]["review"] == {"approved": True, "by": "push"}
    # What the answer's legato-usage header said it spent is counted.
    assert done["usage"] == {"inputTokens": 7, "outputTokens": 2, "cost": 0.01}


async def test_a_fatal_error_fails_the_step(legato: Legato) -> None:
    done = await run(legato, "py-push-fatal", "sync", "")
    assert done["runtimeStatus"] == "Failed"
    assert "nothing to review" in done["error"]


async def test_a_push_app_calls_back_with_progress(legato: Legato) -> None:
    done = await run(legato, "py-push-later", "callback", "a TODO left")
    assert done["runtimeStatus"] == "Completed"
    assert done["output"]["review"] == {"approved": False, "by": "push"}
    assert done["usage"] == {"inputTokens": 11, "outputTokens": 2, "cost": 0.01}
    told = [
        p for h in done["history"] for p in h.get("progress", []) if p["kind"] == "agent_progress"
    ]
    assert told, done
    assert told[0]["message"] == "reading"


async def test_a_push_apps_recorded_step_is_not_run_again_on_retry(legato: Legato) -> None:
    ran: list[int] = []

    async def looping(task: Task) -> dict[str, Any]:
        async def model_call() -> dict[str, int]:
            ran.append(task.attempt)
            return {"by attempt": task.attempt}

        turn = await task.step("model turn 1", model_call)
        if task.attempt == 1:
            raise RuntimeError("the tool's service was down")
        return {"turn": turn, "journal": sorted(task.journal)}

    app = PushApp(agents={"py-push-loop": looping}, signing_secret=SIGNING_SECRET)
    async with pushed_to(app) as url:
        await legato.put_agent("py-push-loop", kind="push", url=url)
        await legato.register(
            {
                "name": "py-push-loop",
                "version": 1,
                "steps": [
                    {
                        "id": "loop",
                        "agent": "py-push-loop",
                        "input": {},
                        "retry": {"max_attempts": 2, "initial_interval_ms": 50},
                    }
                ],
            }
        )
        instance = await legato.start("py-push-loop", {})
        done = await legato.wait_for_end(instance)
    assert done["runtimeStatus"] == "Completed", done
    assert done["output"]["loop"] == {"turn": {"by attempt": 1}, "journal": ["model turn 1"]}
    assert ran == [1], "the recorded model call ran once"


def test_signatures_match_the_reference_implementation() -> None:
    key = base64.b64decode(SIGNING_SECRET.removeprefix("whsec_"))
    body = json.dumps({"agent": "a", "input": {"n": 1}}).encode()
    now = time.time()
    signature = Webhook(SIGNING_SECRET).sign(
        "msg_1", datetime.fromtimestamp(int(now), tz=UTC), body.decode()
    )
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signature,
    }
    verify(key, headers, body)
    with pytest.raises(SignatureError):
        verify(key, headers, body + b" ")
    with pytest.raises(SignatureError):
        verify(key, headers, body, now=now + 600)
    with pytest.raises(SignatureError):
        verify(key, {**headers, "webhook-signature": "v1,AAAA"}, body)


async def test_a_push_app_operates_entities_through_its_callback(legato: Legato) -> None:
    async def count(task: Task) -> dict[str, Any]:
        visits = task.entity("counter", "push-visits")
        seen = await visits.call("count", {"op": "increment"})
        return {"seen": seen, "now": await visits.read()}

    app = PushApp(agents={"py-push-count": count}, signing_secret=SIGNING_SECRET)
    async with pushed_to(app) as url:
        await legato.put_agent("py-push-count", kind="push", url=url)
        await legato.register(
            {
                "name": "py-push-count",
                "version": 1,
                "steps": [{"id": "count", "agent": "py-push-count", "input": {}}],
            }
        )
        for expected in (1, 2):
            instance = await legato.start("py-push-count", {})
            done = await legato.wait_for_end(instance)
            assert done["runtimeStatus"] == "Completed", done
            assert done["output"]["count"] == {"seen": expected, "now": expected}
