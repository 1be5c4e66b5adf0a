"""Starts a real ``legato up`` for the tests (the binary named by LEGATO_BIN,
or the debug build in the cargo target directory) on a free port, with its
state in a temporary directory."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]


def legato_binary() -> Path:
    named = os.environ.get("LEGATO_BIN")
    if named:
        return Path(named)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / "legato"
    if not binary.exists():
        raise RuntimeError(f"no legato binary at {binary}: build it or set LEGATO_BIN")
    return binary


def model_standin_binary() -> Path:
    named = os.environ.get("LEGATO_MODEL_STANDIN")
    if named:
        return Path(named)
    binary = legato_binary().with_name("legato-model-standin")
    if not binary.exists():
        raise RuntimeError(
            f"no model stand-in at {binary}: cargo build -p legato-model-standin, "
            "or set LEGATO_MODEL_STANDIN"
        )
    return binary


@pytest.fixture(scope="session")
def model_url() -> Iterator[str]:
    """The OpenAI-compatible stand-in (tests/model-standin): its ``/v1``
    base URL, for ``openai.AsyncOpenAI(base_url=..., api_key="sk-standin")``."""
    process = subprocess.Popen(
        [str(model_standin_binary())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        yield process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait()


#: The Standard Webhooks secret the test stack signs pushes with.
SIGNING_SECRET = "whsec_" + base64.b64encode(b"legato-sdk-tests-signing-key-0123").decode()


class Legato:
    """A running ``legato up`` and an HTTP client for its API."""

    signing_secret = SIGNING_SECRET

    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url
        self.process = process
        self.http = httpx.AsyncClient(base_url=url, timeout=30.0)

    async def put_agent(self, name: str, **spec: Any) -> None:
        response = await self.http.put(f"/api/v1/agents/{name}", json={"kind": "pull", **spec})
        assert response.status_code in (200, 201), response.text

    async def register(self, definition: dict[str, Any]) -> None:
        name = definition["name"]
        response = await self.http.put(f"/api/v1/workflows/{name}", json=definition)
        assert response.status_code in (200, 201), response.text

    async def start(self, workflow: str, payload: Any) -> str:
        response = await self.http.post(
            f"/api/v1/workflows/{workflow}/instances", json={"input": payload}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def status(self, instance: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/instances/{instance}", params={"history": "true"})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_for_end(self, instance: str, timeout_s: float = 60) -> dict[str, Any]:
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            current = await self.status(instance)
            if current["runtimeStatus"] in ("Completed", "Failed", "Terminated"):
                return current
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{instance} did not end in {timeout_s} s: {current}")
            await asyncio.sleep(0.05)

    async def wait_for(self, instance: str, status: str, timeout_s: float = 60) -> dict[str, Any]:
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            current = await self.status(instance)
            if current["runtimeStatus"] == status:
                return current
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{instance} not {status} in {timeout_s} s: {current}")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def legato_process() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with tempfile.TemporaryDirectory(prefix="legato-sdk-") as data:
        # Push agents on loopback, signed with the tests' secret.
        Path(data, "legato.toml").write_text(
            f'[gateway.push]\nallowed_hosts = ["127.0.0.1"]\nsigning_secret = "{SIGNING_SECRET}"\n'
        )
        process = subprocess.Popen(
            [
                str(legato_binary()),
                "up",
                "--port",
                "0",
                "--data-dir",
                data,
                "--workflows",
                str(REPO / "workflows"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "LEGATO__TELEMETRY__LOG": "warn", "LEGATO_CONFIG_DIR": data},
        )
        assert process.stdout is not None
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if not found and "listening on " in line:
                    found.append(line.split("listening on ")[1].split()[0])
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or not found:
            process.kill()
            raise RuntimeError("legato up did not report its address")
        try:
            yield found[0], process
        finally:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
async def legato(legato_process: tuple[str, subprocess.Popen[str]]) -> AsyncIterator[Legato]:
    url, process = legato_process
    stack = Legato(url, process)
    yield stack
    await stack.http.aclose()
