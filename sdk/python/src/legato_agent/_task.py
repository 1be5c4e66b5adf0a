"""One attempt of one task, as an agent function sees it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class RetryableError(Exception):
    """The attempt failed in a way a later attempt may not: retried under the
    step's retry policy. Any exception an agent raises counts as this unless it
    is a :class:`FatalError`."""


class FatalError(Exception):
    """The attempt failed in a way no retry will mend: the step fails at once
    (and the workflow rolls back or fails as its definition says)."""


Progress = Callable[[str | None, Any], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """How an agent function's run ended: its output, or a failure."""

    output: Any = None
    #: Set when it failed: what went wrong.
    error: str | None = None
    #: Whether a later attempt may succeed (for a failure).
    retryable: bool = False


async def run(handler: Callable[[Task], Awaitable[Any]], task: Task) -> Outcome:
    """Runs ``handler`` on ``task`` and classifies the end: a
    :class:`FatalError` or an output that is not JSON fails for good, any
    other error is retryable. Cancellation propagates."""
    try:
        output = await handler(task)
    except FatalError as e:
        return Outcome(error=str(e) or type(e).__name__)
    except Exception as e:
        return Outcome(error=f"{type(e).__name__}: {e}", retryable=True)
    try:
        json.dumps(output)
    except (TypeError, ValueError) as e:
        # No retry makes this function return JSON.
        return Outcome(error=f"the output is not JSON: {e}")
    return Outcome(output=output)


@dataclass(frozen=True)
class Task:
    """One attempt of one task. Delivery is at least once: the same attempt can
    run twice (a worker lost mid-task), so key anything the agent changes
    outside by :attr:`idempotency_key`."""

    agent: str
    instance_id: str
    tenant: str | None
    workflow: str
    key: str
    step: str
    item: int | None
    #: The loop iteration (1 for the first) of a step inside a loop.
    iteration: int | None
    attempt: int
    idempotency_key: str
    input: Any
    #: When the orchestrator stops waiting for this attempt (the step's timeout).
    deadline: datetime | None
    #: The lease: the worker heartbeats within it (the SDK does, every third).
    lease_ms: int
    token: str
    _progress: Progress = field(repr=False, compare=False)
    _cancelled: asyncio.Event = field(repr=False, compare=False)

    async def progress(self, message: str | None = None, data: Any = None) -> None:
        """Tells the instance's watchers how the work goes (live on the stream
        and the dashboard, and in the history). It also renews the lease."""
        await self._progress(message, data)

    @property
    def cancelled(self) -> bool:
        """True once the orchestrator no longer wants this attempt (instance
        terminated, step timed out, saga rolled back) or the worker is stopping.
        The agent function is also cancelled then; this is for code that
        catches ``asyncio.CancelledError`` to clean up."""
        return self._cancelled.is_set()

    @classmethod
    def from_wire(cls, raw: dict[str, Any], progress: Progress) -> Task:
        deadline = raw.get("deadline")
        return cls(
            agent=str(raw["agent"]),
            instance_id=str(raw["instanceId"]),
            tenant=raw.get("tenant"),
            workflow=str(raw["workflow"]),
            key=str(raw["key"]),
            step=str(raw["step"]),
            item=raw.get("item"),
            iteration=raw.get("iteration"),
            attempt=int(raw["attempt"]),
            idempotency_key=str(raw["idempotencyKey"]),
            input=raw.get("input"),
            deadline=datetime.fromisoformat(deadline) if deadline else None,
            lease_ms=int(raw["leaseMs"]),
            token=str(raw["token"]),
            _progress=progress,
            _cancelled=asyncio.Event(),
        )
