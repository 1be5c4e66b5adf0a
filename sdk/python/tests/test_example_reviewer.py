"""The example reviewer (examples/agents/reviewer) against a real ``legato up``:
its workflow publishes an approved change and skips a refused one, offline
and with a chat model (a stand-in OpenAI-compatible endpoint this test
serves on loopback, answering as the chat completions API does)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import pytest
from conftest import REPO, Legato

from legato_agent import Worker

EXAMPLE = REPO / "examples" / "agents" / "reviewer"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reviewer", EXAMPLE / "reviewer.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def reviewer_serving(legato: Legato) -> AsyncIterator[None]:
    worker = Worker(url=legato.url, agents={"reviewer": example().review}, poll_wait_ms=2_000)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        yield
    finally:
        worker.stop()
        await running
        await worker.__aexit__(None, None, None)


async def registered(legato: Legato) -> None:
    await legato.put_agent("reviewer", description="the example reviewer")
    text = (EXAMPLE / "workflow.yaml").read_text()
    response = await legato.http.put("/api/v1/workflows/reviewed-change", content=text)
    assert response.status_code in (200, 201), response.text


async def test_the_example_reviews_offline(legato: Legato) -> None:
    await registered(legato)
    async with reviewer_serving(legato):
        good = await legato.start(
            "reviewed-change",
            {"request": "add CSV export", "change": "add CSV export to billing"},
        )
        bad = await legato.start(
            "reviewed-change",
            {"request": "add CSV export", "change": "add CSV export (TODO: totals)"},
        )
        approved = await legato.wait_for(good, "Completed")
        refused = await legato.wait_for(bad, "Completed")
    assert approved["output"] == {"approved": True, "comments": []}
    assert refused["output"]["approved"] is False
    assert refused["output"]["comments"] == ["unfinished: contains TODO"]
    publish = {s["id"]: s["status"] for s in refused["steps"]}["publish"]
    assert publish == "Skipped"


async def chat_standin(reply: dict[str, Any], seen: list[dict[str, Any]]) -> asyncio.Server:
    """Answers POST /v1/chat/completions as the chat completions API does."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(
            int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
        )
        request = json.loads(await reader.readexactly(length))
        seen.append({"path": lines[0].split()[1], "body": request})
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": request["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": json.dumps(reply)},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_the_example_asks_the_configured_model(
    legato: Legato, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registered(legato)
    seen: list[dict[str, Any]] = []
    server = await chat_standin({"approved": False, "comments": ["needs a test"]}, seen)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("LEGATO__LLM__ENDPOINT", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("LEGATO__LLM__API_KEY", "test-key")
    monkeypatch.setenv("LEGATO__LLM__MODEL", "reviewer-model")
    try:
        async with reviewer_serving(legato):
            instance = await legato.start(
                "reviewed-change", {"request": "add CSV export", "change": "add CSV export"}
            )
            done = await legato.wait_for(instance, "Completed")
    finally:
        server.close()
    assert done["output"] == {"approved": False, "comments": ["needs a test"]}
    assert seen[0]["path"] == "/v1/chat/completions"
    assert seen[0]["body"]["model"] == "reviewer-model"
    assert seen[0]["body"]["messages"][1]["content"].startswith("Asked for: add CSV export")
