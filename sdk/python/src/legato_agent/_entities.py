"""Durable entities from inside an agent (docs/entities.md): state keyed by a
type and an id, in the task's tenant, that outlives every run."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from ._client import Answer, ProtocolError
from ._errors import FatalError, RetryableError

if TYPE_CHECKING:
    from ._task import Task


class EntityAccess(Protocol):
    """How a task reaches its entities (the pull protocol or a push callback)."""

    async def read(self, entity_type: str, entity_id: str, path: str) -> Answer: ...

    async def call(self, entity_type: str, entity_id: str, name: str, operation: Any) -> Answer: ...


class EntityOperationError(FatalError):
    """The entity refused the operation (an increment past its bounds, an
    append to a string): it changed nothing, and would fail the same way
    again, so the step fails unless the agent catches it."""


class Entity:
    """One durable entity, as a task sees it (see :meth:`Task.entity`)."""

    def __init__(self, task: Task, entity_type: str, entity_id: str) -> None:
        self._task = task
        self.type = entity_type
        self.id = entity_id

    async def read(self, path: str = "") -> Any:
        """The value at ``path`` (a JSON Pointer; empty: the whole state) as
        last committed, ``None`` when absent. Not journaled: wrap it in
        :meth:`Task.step` to keep what the first attempt read."""
        answer = await self._reach(
            f"read of {self.type}/{self.id}",
            lambda access: access.read(self.type, self.id, path),
        )
        return answer.body.get("value")

    async def call(self, name: str, operation: Mapping[str, Any]) -> Any:
        """Applies ``operation`` (``{"op": "increment", "by": 2}``, as in a
        workflow's entity step) once per task under ``name``, however often
        the task is tried, and answers what it answered (a later attempt gets
        the first answer from the task's journal). Raises
        :class:`EntityOperationError` when the entity refused it."""
        task = self._task
        entry = f"entity {name}"
        task._claim_name(entry)
        kept = task.journal.get(entry)
        if kept is None:
            answer = await self._reach(
                f"entity call {name!r}",
                lambda access: access.call(self.type, self.id, name, dict(operation)),
            )
            kept = (
                {"error": answer.body["error"]}
                if "error" in answer.body
                else {"ok": answer.body.get("answer")}
            )
        if isinstance(kept, Mapping) and "error" in kept:
            raise EntityOperationError(f"{self.type}/{self.id} refused {name!r}: {kept['error']}")
        return kept.get("ok") if isinstance(kept, Mapping) else None

    async def signal(self, name: str, operation: Mapping[str, Any]) -> None:
        """As :meth:`call`, for an operation whose answer (or refusal) does not
        matter to the agent."""
        with contextlib.suppress(EntityOperationError):
            await self.call(name, operation)

    async def _reach(self, what: str, send: Any) -> Answer:
        try:
            answer: Answer = await send(self._task._entities)
        except ProtocolError as e:
            raise FatalError(f"{what}: {e.detail}") from e
        except (httpx.HTTPError, OSError) as e:
            raise RetryableError(f"{what} could not be sent: {e}") from e
        if not answer.wanted:
            raise RetryableError(f"{what}: the attempt is no longer wanted: {answer.body}")
        return answer
