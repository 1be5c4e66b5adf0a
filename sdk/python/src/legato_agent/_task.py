"""One attempt of one task, as an agent function sees it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._chat import ChatReply, ToolCall, stream_reply
from ._client import ProtocolError
from ._entities import Entity, EntityAccess
from ._errors import Asked, FatalError, RetryableError
from ._output import Output, SendOutput

if TYPE_CHECKING:
    from openai import AsyncOpenAI

T = TypeVar("T")


Progress = Callable[[str | None, Any], Awaitable[None]]
#: Sends a question on: name, question, schema, timeout in ms.
AskQuestion = Callable[[str, str, Any, int | None], Awaitable[None]]
#: Records a journal entry; answers the value that stands.
Record = Callable[[str, Any], Awaitable[Any]]


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
    #: The workflow step this task does (:meth:`step` records a step of its own).
    step_id: str
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
    #: What earlier attempts or deliveries of this task recorded with
    #: :meth:`step`, by name.
    journal: Mapping[str, Any] = field(repr=False, compare=False)
    #: Answers to the questions this task asked with :meth:`ask`, by name.
    answers: Mapping[str, Any] = field(repr=False, compare=False)
    _progress: Progress = field(repr=False, compare=False)
    _ask: AskQuestion = field(repr=False, compare=False)
    _record: Record = field(repr=False, compare=False)
    _output: SendOutput = field(repr=False, compare=False)
    _entities: EntityAccess = field(repr=False, compare=False)
    _cancelled: asyncio.Event = field(repr=False, compare=False)
    _used: set[str] = field(repr=False, compare=False, default_factory=set)
    _spent: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    #: Model calls made so far in this attempt (each is the step ``chat N``).
    _chats: list[int] = field(repr=False, compare=False, default_factory=lambda: [0])

    async def ask(
        self,
        name: str,
        question: str,
        *,
        schema: Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
    ) -> Any:
        """Asks a person ``question``, answered by the event ``name`` (its data
        must fit the JSON Schema ``schema``, which the dashboard renders). The
        first time, the question is sent and the attempt ends here (raising
        :class:`Asked`, which the worker takes care of): no worker is held
        while the person thinks. Once answered, the task runs again and
        ``ask`` returns the answer. Code before the question runs again; its
        :meth:`step` calls do not. ``timeout_ms``: no answer for this long
        fails the step."""
        if name in self.answers:
            return self.answers[name]
        try:
            await self._ask(name, question, schema, timeout_ms)
        except ProtocolError as e:
            raise FatalError(f"question {name!r}: {e.detail}") from e
        except (httpx.HTTPError, OSError) as e:
            raise RetryableError(f"question {name!r} could not be asked: {e}") from e
        raise Asked(name)

    def add_usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
        model: str | None = None,
    ) -> None:
        """Counts what the attempt spent (model tokens, cost) into its result:
        legato sums it per step and per instance against the instance's
        budget, which suspends the instance when crossed. Spent inside a
        :meth:`step`, it is counted once however often the task runs."""
        if input_tokens < 0 or output_tokens < 0 or cost < 0:
            raise ValueError("usage is counted up: tokens and cost must be at least 0")
        spent = self._spent
        spent["inputTokens"] = spent.get("inputTokens", 0) + input_tokens
        spent["outputTokens"] = spent.get("outputTokens", 0) + output_tokens
        spent["cost"] = spent.get("cost", 0.0) + cost
        if model is not None and spent.setdefault("model", model) != model:
            spent["model"] = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """What :meth:`add_usage` counted so far, as the protocol carries it."""
        if not self._spent:
            return None
        return {k: v for k, v in self._spent.items() if v is not None}

    async def step(self, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs ``fn`` once per task, however often the task is tried: the
        first time, its JSON result is recorded in the task's journal before
        ``step`` returns; a later attempt or redelivery returns the recorded
        value without calling ``fn``. A ``fn`` that raises is not recorded (it
        runs again next time). Give each step of a task its own ``name``. For
        model calls and tool calls: a crash at turn seven does not pay for
        turns one to six again."""
        self._claim_name(name)
        if name in self.journal:
            recorded: T = self.journal[name]
            return recorded
        value = await fn()
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise FatalError(f"step {name!r}: its value is not JSON: {e}") from e
        try:
            standing: T = await self._record(name, value)
        except ProtocolError as e:
            raise FatalError(f"step {name!r}: {e.detail}") from e
        except (httpx.HTTPError, OSError) as e:
            raise RetryableError(f"step {name!r} could not be recorded: {e}") from e
        return standing

    def _claim_name(self, name: str) -> None:
        if name in self._used:
            raise FatalError(
                f"step {name!r} ran twice in one attempt: give each step of a task its own name"
            )
        self._used.add(name)

    def entity(self, entity_type: str, entity_id: str) -> Entity:
        """The durable entity ``entity_type``/``entity_id`` of the task's tenant
        (docs/entities.md): read it, or call or signal an operation on it,
        applied once per task under the name you give it."""
        return Entity(self, entity_type, entity_id)

    def output(self, call: str) -> Output:
        """Relays what the attempt writes as ``call`` (name it as the
        :meth:`step` that records the whole text, such as ``"chat 1"``, so a
        watcher who comes later finds it there) to the instance's watchers as
        it comes: ``output`` events on the stream, the hubs and the dashboard,
        never recorded::

            async with task.output("chat 1") as out:
                async for chunk in stream:
                    out.push(chunk.choices[0].delta.content or "")
        """
        return Output(call, self._output)

    async def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str,
        tools: Iterable[Mapping[str, Any]] | None = None,
        client: AsyncOpenAI | None = None,
        **params: Any,
    ) -> ChatReply:
        """A model call through the ``openai`` package (``client``, else one
        from ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``), streamed, journaled
        as the step ``chat N`` (the N-th call of the attempt, so the same code
        asks for the same entries on every attempt): a later attempt gets the
        recorded reply without calling the model. Its text reaches the
        instance's watchers as it is written, and its tokens are counted into
        the result once. Run each tool call it asks for with :meth:`tool`."""
        self._chats[0] += 1
        name = f"chat {self._chats[0]}"

        async def call() -> ChatReply:
            try:
                import openai
            except ImportError as e:
                raise FatalError(
                    "task.chat needs the openai package: pip install 'legato-agent[openai]'"
                ) from e

            try:
                reply = await stream_reply(
                    client, self.output(name), model, messages, tools, params
                )
            except openai.APIStatusError as e:
                if e.status_code in (408, 409, 429) or e.status_code >= 500:
                    raise RetryableError(f"{name}: {e}") from e
                raise FatalError(f"{name}: {e}") from e
            except openai.APIError as e:
                raise RetryableError(f"{name}: {e}") from e
            self.add_usage(
                input_tokens=reply["input_tokens"],
                output_tokens=reply["output_tokens"],
                model=reply["model"],
            )
            return reply

        return await self.step(name, call)

    async def tool(self, call: ToolCall, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs the tool call ``call`` (from a :meth:`chat` reply) once per
        task, however often the task is tried: journaled as the step
        ``tool <call id>``, so a resumed loop gets its result without running
        the tool again."""
        return await self.step(f"tool {call['id']}", fn)

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
    def from_wire(
        cls,
        raw: dict[str, Any],
        progress: Progress,
        record: Record,
        ask: AskQuestion,
        output: SendOutput,
        entities: EntityAccess,
    ) -> Task:
        deadline = raw.get("deadline")
        return cls(
            agent=str(raw["agent"]),
            instance_id=str(raw["instanceId"]),
            tenant=raw.get("tenant"),
            workflow=str(raw["workflow"]),
            key=str(raw["key"]),
            step_id=str(raw["step"]),
            item=raw.get("item"),
            iteration=raw.get("iteration"),
            attempt=int(raw["attempt"]),
            idempotency_key=str(raw["idempotencyKey"]),
            input=raw.get("input"),
            deadline=datetime.fromisoformat(deadline) if deadline else None,
            lease_ms=int(raw["leaseMs"]),
            token=str(raw["token"]),
            journal=dict(raw.get("journal") or {}),
            answers=dict(raw.get("answers") or {}),
            _progress=progress,
            _ask=ask,
            _record=record,
            _output=output,
            _entities=entities,
            _cancelled=asyncio.Event(),
        )
