"""Push agents in Python: an ASGI app that legato POSTs tasks to.

Each request is a CloudEvent (binary mode) whose body is the task, signed per
Standard Webhooks with the gateway's ``gateway.push.signing_secret``; the app
refuses any request whose signature or timestamp does not hold (401), runs
the agent function, and answers with its outcome:

- ``200`` with the output as JSON;
- ``422`` with the message for a :class:`FatalError` (the step fails);
- ``500`` for any other error (retried under the step's policy).

With ``respond="callback"`` it answers ``202`` at once and reports the outcome
later through the task's ``callbackUrl`` (for work longer than the gateway's
push timeout); progress goes there too, with ``task.progress()``, and so do
the journal entries of ``task.step()``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Literal

import httpx

from ._client import EntitiesAt, journal_url, post_output, put_journal, question_body
from ._errors import Asked, RetryableError
from ._task import Task, run
from ._worker import Handler

log = logging.getLogger("legato_agent")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: How far a request's timestamp may be from now (the specification's five
#: minutes), against replays.
TOLERANCE_S = 5 * 60
#: Largest request body read.
MAX_BODY = 16 * 1024 * 1024


class SignatureError(Exception):
    """The request is not signed by the gateway (or too old)."""


def _key(secret: str) -> bytes:
    if not secret.startswith("whsec_"):
        raise ValueError("signing_secret must start with whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"))


def verify(key: bytes, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
    """Checks a Standard Webhooks signature; raises :class:`SignatureError`."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"]
    except (KeyError, ValueError) as e:
        raise SignatureError(f"missing or malformed webhook header: {e}") from e
    if abs((now if now is not None else time.time()) - timestamp) > TOLERANCE_S:
        raise SignatureError("timestamp too far from now")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return
    raise SignatureError("no valid signature")


class PushApp:
    """An ASGI app serving ``agents`` (name -> async function) as push agents.

    >>> app = PushApp(agents={"reviewer": review}, signing_secret="whsec_...")  # doctest: +SKIP
    >>> # uvicorn module:app
    """

    def __init__(
        self,
        *,
        agents: Mapping[str, Handler],
        signing_secret: str,
        respond: Literal["sync", "callback"] = "sync",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not agents:
            raise ValueError("agents: name at least one agent")
        self._agents = dict(agents)
        self._key = _key(signing_secret)
        self._respond = respond
        self._http = http or httpx.AsyncClient(timeout=30.0)
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"detail": "POST tasks here"})
            return
        body = await _body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            verify(self._key, headers, body)
        except SignatureError as e:
            await _answer(send, 401, {"detail": str(e)})
            return
        try:
            raw = json.loads(body)
            handler = self._agents[raw["agent"]]
        except (ValueError, KeyError, TypeError):
            await _answer(send, 422, {"detail": "not a task for an agent served here"})
            return
        callback = str(raw.get("callbackUrl", ""))
        task = Task.from_wire(
            raw,
            self._progress_to(callback),
            self._record_at(callback),
            self._ask_at(callback),
            self._output_to(callback),
            EntitiesAt(self._http, callback),
        )
        if self._respond == "callback" and callback:
            job = asyncio.create_task(self._run_and_call_back(handler, task, callback))
            self._background.add(job)
            job.add_done_callback(self._background.discard)
            await _answer(send, 202, {"accepted": task.idempotency_key})
            return
        status, answer = await _outcome(handler, task)
        await _answer(send, status, answer, task.usage)

    def _progress_to(self, callback: str) -> Callable[[str | None, Any], Awaitable[None]]:
        async def progress(message: str | None, data: Any) -> None:
            if not callback:
                return
            body: dict[str, Any] = {}
            if message is not None:
                body["message"] = message
            if data is not None:
                body["data"] = data
            try:
                await self._http.post(f"{callback}/heartbeat", json=body)
            except httpx.HTTPError as e:
                log.warning("progress not sent: %s", e)

        return progress

    def _output_to(self, callback: str) -> Callable[[str, int, str], Awaitable[None]]:
        async def output(call: str, seq: int, text: str) -> None:
            if callback:
                await post_output(self._http, f"{callback}/output", call, seq, text)

        return output

    def _ask_at(self, callback: str) -> Callable[[str, str, Any, int | None], Awaitable[None]]:
        async def ask(name: str, question: str, schema: Any, timeout_ms: int | None) -> None:
            if not callback:
                raise RetryableError("the task has no callbackUrl to ask at")
            body = question_body(name, question, schema, timeout_ms)
            response = await self._http.post(f"{callback}/ask", json=body)
            if response.status_code != 200:
                raise RetryableError(f"question {name!r}: {response.status_code} {response.text}")

        return ask

    def _record_at(self, callback: str) -> Callable[[str, Any], Awaitable[Any]]:
        async def record(name: str, value: Any) -> Any:
            if not callback:
                raise RetryableError("the task has no callbackUrl to record its steps at")
            answer = await put_journal(self._http, journal_url(callback, name), value)
            if not answer.wanted:
                why = answer.body.get("detail")
                raise RetryableError(f"the attempt is no longer wanted: {why}")
            return answer.body.get("value")

        return record

    async def _run_and_call_back(self, handler: Handler, task: Task, callback: str) -> None:
        status, answer = await _outcome(handler, task)
        if status == 202:
            return
        body: dict[str, Any]
        if status == 200:
            what, body = "complete", {"output": answer}
        else:
            what = "fail"
            body = {"message": str(answer.get("detail", "")), "retryable": status >= 500}
        if task.usage is not None:
            body["usage"] = task.usage
        for attempt in range(5):
            try:
                response = await self._http.post(f"{callback}/{what}", json=body)
                if response.status_code < 500:
                    return
            except httpx.HTTPError as e:
                log.warning("callback failed (%s); trying again", e)
            await asyncio.sleep(0.2 * 2**attempt)
        log.error("task %s: the outcome could not be reported; its lease will retry it", task.key)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for job in list(self._background):
                    await asyncio.wait({job}, timeout=30)
                await self._http.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _outcome(handler: Handler, task: Task) -> tuple[int, Any]:
    """The HTTP answer for the function's outcome: 202 when it asked a person
    (the task comes again answered; nothing calls back)."""
    try:
        outcome = await run(handler, task)
    except Asked as asked:
        return 202, {"asked": str(asked)}
    if outcome.error is None:
        return 200, outcome.output
    return (500 if outcome.retryable else 422), {"detail": outcome.error}


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            break
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(send: Send, status: int, body: Any, usage: Any = None) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if usage is not None:
        # What the attempt spent, which the gateway counts (legato-usage).
        headers.append((b"legato-usage", json.dumps(usage).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
