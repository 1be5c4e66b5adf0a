"""The pull-worker protocol over HTTP: poll, heartbeat, complete, fail.

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

    async def report(self, token: str, what: str, body: dict[str, Any]) -> Answer:
        """Sends a heartbeat, completion or failure, retrying what may be retried."""
        last: Exception | None = None
        for attempt in range(self._report_attempts):
            response: httpx.Response | None = None
            try:
                response = await self._http.post(f"/api/v1/tasks/{token}/{what}", json=body)
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
            if what == "heartbeat":
                # The next beat comes soon anyway; a lost one costs nothing.
                break
            await asyncio.sleep(_retry_after(response, attempt))
        raise last or RuntimeError("no attempt made")
