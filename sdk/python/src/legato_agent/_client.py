"""The pull-worker protocol over HTTP: poll, heartbeat, record a journal entry,
complete (one, or many in one request), fail.

Every call that reports on a task is safe to send again (the gateway records
a result once per attempt), so transport errors, 429 and 5xx answers are
retried with backoff, honouring ``Retry-After``. A 409 means the attempt is
no longer wanted; it is returned to the caller, never retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("legato_agent")

#: Answers worth sending the same request again for.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ProtocolError(Exception):
    """The gateway refused a request for good (a 4xx other than 408/409/429)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Answer:
    """How the gateway took a report on a task."""

    #: False when the attempt is no longer wanted (409): stop working on it.
    wanted: bool
    body: dict[str, Any]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        return str(body.get("detail", body))
    return str(body)


def _retry_after(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        header = response.headers.get("retry-after")
        if header and header.isdigit():
            return float(header)
    # Full jitter, capped: concurrent workers do not retry in step.
    return float(random.uniform(0, min(10.0, 0.2 * 2**attempt)))


#: The most completions one request carries (the gateway refuses more).
MAX_COMPLETIONS = 64


def _answer_of(results: Any, i: int) -> Answer:
    result = results[i] if isinstance(results, list) and i < len(results) else None
    if not isinstance(result, dict):
        return Answer(wanted=False, body={"detail": "no answer for this completion"})
    if result.get("status") in ("recorded", "recorded_before"):
        return Answer(wanted=True, body=result)
    problem = result.get("problem")
    detail = problem.get("detail") if isinstance(problem, dict) else None
    return Answer(wanted=False, body={"detail": detail or str(result)})


async def _send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    body: dict[str, Any],
    attempts: int,
    *,
    once: bool = False,
) -> Answer:
    """Sends a report on a task, again while it may be retried (every report
    counts once however often it is sent); ``once`` for one that is not
    worth another try."""
    last: Exception | None = None
    for attempt in range(attempts):
        response: httpx.Response | None = None
        try:
            response = await http.request(method, url, json=body)
        except httpx.TransportError as e:
            last = e
        else:
            status = response.status_code
            if status == 200:
                return Answer(wanted=True, body=response.json())
            if status in (404, 409):
                return Answer(wanted=False, body={"detail": _detail(response)})
            if status not in _RETRYABLE_STATUS:
                raise ProtocolError(status, _detail(response))
            last = ProtocolError(status, _detail(response))
        if once:
            break
        await asyncio.sleep(_retry_after(response, attempt))
    raise last or RuntimeError("no attempt made")


async def put_journal(http: httpx.AsyncClient, url: str, value: Any, attempts: int = 8) -> Answer:
    """Records a journal entry at ``url`` (a task's ``.../journal``), retrying
    what may be retried: recording a name twice keeps the first value, so a
    retry is safe. The answer's body holds the value that stands."""
    return await _send(http, "PUT", url, {"value": value}, attempts)


def question_body(name: str, question: str, schema: Any, timeout_ms: int | None) -> dict[str, Any]:
    """The body of ``.../ask``."""
    body: dict[str, Any] = {"name": name, "question": question}
    if schema is not None:
        body["schema"] = schema
    if timeout_ms is not None:
        body["timeoutMs"] = timeout_ms
    return body


async def post_output(http: httpx.AsyncClient, url: str, call: str, seq: int, text: str) -> None:
    """Sends one piece of output to ``url`` (a task's ``.../output``)."""
    response = await http.post(url, json={"call": call, "seq": seq, "text": text})
    if response.status_code != 202:
        raise ProtocolError(response.status_code, _detail(response))


def journal_url(base: str, name: str) -> str:
    """Where entry ``name`` of a task is recorded, below ``base`` (the task's
    ``/api/v1/tasks/<token>`` or its callback URL)."""
    return f"{base}/journal/{quote(name, safe='')}"


class Completions:
    """Completions on their way: whatever finishes while a batch is in flight
    goes in the next one, so a quiet worker sends each result at once and a
    busy one sends a request per batch rather than per task."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queue: list[tuple[dict[str, Any], asyncio.Future[Answer]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def complete(
        self, token: str, output: Any, usage: dict[str, Any] | None = None
    ) -> Answer:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        completion: dict[str, Any] = {"token": token, "output": output}
        if usage is not None:
            completion["usage"] = usage
        self._queue.append((completion, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await answer

    async def _send(self) -> None:
        while self._queue:
            batch = self._queue[:MAX_COMPLETIONS]
            del self._queue[:MAX_COMPLETIONS]
            try:
                answers = await self._client.complete_many([c for c, _ in batch])
            except BaseException as e:
                # Every waiter hears why, cancellation included.
                for _, waiter in batch:
                    if waiter.done():
                        continue
                    if isinstance(e, Exception):
                        waiter.set_exception(e)
                    else:
                        waiter.cancel()
                if not isinstance(e, Exception):
                    raise
                continue
            for (_, waiter), answer in zip(batch, answers, strict=True):
                if not waiter.done():
                    waiter.set_result(answer)


class Client:
    """One worker's connection to the gateway."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        report_attempts: int = 8,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Long polls wait up to 25 s on the server; reads may take longer.
        self._http = http or httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(10.0, read=40.0),
        )
        self._report_attempts = report_attempts

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The connection, for the calls a task makes itself."""
        return self._http

    async def poll(
        self, agents: list[str], max_tasks: int, wait_ms: int, worker_id: str
    ) -> list[dict[str, Any]]:
        """Tasks for ``agents`` (possibly none once the wait is over)."""
        body = {
            "agents": agents,
            "maxTasks": max_tasks,
            "waitMs": wait_ms,
            "workerId": worker_id,
        }
        response = await self._http.post("/api/v1/tasks/poll", json=body)
        if response.status_code != 200:
            if response.status_code in _RETRYABLE_STATUS:
                raise httpx.HTTPStatusError(
                    _detail(response), request=response.request, response=response
                )
            raise ProtocolError(response.status_code, _detail(response))
        tasks = response.json().get("tasks", [])
        return [t for t in tasks if isinstance(t, dict)]

    async def complete_many(self, completions: list[dict[str, Any]]) -> list[Answer]:
        """Sends completions together (at most :data:`MAX_COMPLETIONS`),
        retrying the batch as a whole while it may be retried; one answer per
        completion, in order."""
        last: Exception | None = None
        for attempt in range(self._report_attempts):
            response: httpx.Response | None = None
            try:
                response = await self._http.post(
                    "/api/v1/tasks/complete", json={"completions": completions}
                )
            except httpx.TransportError as e:
                last = e
            else:
                status = response.status_code
                if status == 200:
                    results = response.json().get("results", [])
                    return [_answer_of(results, i) for i in range(len(completions))]
                if status not in _RETRYABLE_STATUS:
                    raise ProtocolError(status, _detail(response))
                last = ProtocolError(status, _detail(response))
            await asyncio.sleep(_retry_after(response, attempt))
        raise last or RuntimeError("no attempt made")

    async def record(self, token: str, name: str, value: Any) -> Answer:
        """Records journal entry ``name`` of the task ``token`` names."""
        url = journal_url(f"/api/v1/tasks/{token}", name)
        return await put_journal(self._http, url, value, self._report_attempts)

    async def output(self, token: str, call: str, seq: int, text: str) -> None:
        """Relays a piece of the task's output once (a piece lost is only
        missed by watchers)."""
        await post_output(self._http, f"/api/v1/tasks/{token}/output", call, seq, text)

    async def report(self, token: str, what: str, body: dict[str, Any]) -> Answer:
        """Sends a heartbeat, completion, failure or question, retrying what may
        be retried (a heartbeat is not: the next one comes soon anyway)."""
        url = f"/api/v1/tasks/{token}/{what}"
        once = what == "heartbeat"
        return await _send(self._http, "POST", url, body, self._report_attempts, once=once)


class EntitiesAt:
    """A task's durable entities, below ``base`` (the task's
    ``/api/v1/tasks/<token>`` or its callback URL)."""

    def __init__(self, http: httpx.AsyncClient, base: str, attempts: int = 8) -> None:
        self._http = http
        self._base = base
        self._attempts = attempts

    def _url(self, entity_type: str, entity_id: str) -> str:
        return f"{self._base}/entities/{quote(entity_type, safe='')}/{quote(entity_id, safe='')}"

    async def read(self, entity_type: str, entity_id: str, path: str) -> Answer:
        """The value at ``path`` as last committed (``body["value"]``)."""
        url = self._url(entity_type, entity_id)
        response = await self._http.get(url, params={"path": path} if path else None)
        if response.status_code == 200:
            return Answer(wanted=True, body=response.json())
        if response.status_code in (404, 409):
            return Answer(wanted=False, body={"detail": _detail(response)})
        if response.status_code in _RETRYABLE_STATUS:
            raise httpx.HTTPStatusError(
                _detail(response), request=response.request, response=response
            )
        raise ProtocolError(response.status_code, _detail(response))

    async def call(self, entity_type: str, entity_id: str, name: str, operation: Any) -> Answer:
        """Applies ``operation`` once per task under ``name``; ``body`` holds
        its ``answer`` or ``error``. Safe to send again, so it is retried."""
        body = {"name": name, "operation": operation}
        return await _send(
            self._http, "POST", self._url(entity_type, entity_id), body, self._attempts
        )
