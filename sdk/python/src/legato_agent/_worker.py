"""The pull worker: polls the gateway for tasks of its agents, runs them with a
concurrency cap, heartbeats while they run, reports each outcome, and drains
on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from ._client import (
    Answer,
    Client,
    Completions,
    EntitiesAt,
    ProtocolError,
    _retry_after,
    question_body,
)
from ._errors import Asked
from ._task import Task, run

log = logging.getLogger("legato_agent")

#: An agent: an async function from a task to its JSON-serialisable output.
Handler = Callable[[Task], Awaitable[Any]]

#: Heartbeats per lease: one lost beat never costs the lease.
_BEATS_PER_LEASE = 3
#: The most tasks one poll may ask for (the gateway refuses more).
MAX_TASKS_PER_POLL = 64


class Worker:
    """Serves ``agents`` (name -> async function) from a legato gateway.

    >>> async def review(task: Task) -> dict[str, Any]:
    ...     return {"approved": True}
    >>> async with Worker(url="http://127.0.0.1:8080", agents={"reviewer": review}) as w:
    ...     await w.run()                                        # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        url: str,
        agents: Mapping[str, Handler],
        api_key: str | None = None,
        concurrency: int = 8,
        worker_id: str | None = None,
        poll_wait_ms: int = 20_000,
        drain_timeout_s: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not agents:
            raise ValueError("agents: name at least one agent")
        if concurrency < 1:
            raise ValueError("concurrency: at least 1")
        self._agents = dict(agents)
        self._concurrency = concurrency
        self._worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._poll_wait_ms = poll_wait_ms
        self._drain_timeout_s = drain_timeout_s
        self._client = Client(url, api_key, http=http)
        self._completions = Completions(self._client)
        self._stopping = asyncio.Event()
        self._running: dict[str, tuple[Task, asyncio.Task[None]]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        await self._client.aclose()

    @property
    def in_flight(self) -> int:
        """Tasks running now."""
        return len(self._running)

    def stop(self) -> None:
        """Stops taking tasks; :meth:`run` returns once running ones are done."""
        self._stopping.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Polls and runs tasks until :meth:`stop` (or SIGTERM/SIGINT, when
        ``handle_signals``), then waits up to ``drain_timeout_s`` for running
        tasks; any still running are abandoned to their leases (retried)."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        try:
            await self._poll_loop()
            await self._drain()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _poll_loop(self) -> None:
        agents = sorted(self._agents)
        slots = asyncio.Semaphore(self._concurrency)
        failures = 0
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                free = self._concurrency - len(self._running)
                poll = asyncio.ensure_future(
                    self._client.poll(
                        agents,
                        min(max(free, 1), MAX_TASKS_PER_POLL),
                        self._poll_wait_ms,
                        self._worker_id,
                    )
                )
                await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    # Hanging up is safe: the gateway returns what this poll
                    # had not yet taken to the queue.
                    poll.cancel()
                    slots.release()
                    break
                try:
                    raw_tasks = poll.result()
                    failures = 0
                except ProtocolError:
                    slots.release()
                    raise
                except (httpx.HTTPError, OSError) as e:
                    slots.release()
                    failures += 1
                    log.warning("poll failed (%s); trying again", e)
                    await asyncio.sleep(_retry_after(None, min(failures, 6)))
                    continue
                if not raw_tasks:
                    slots.release()
                    continue
                for index, raw in enumerate(raw_tasks):
                    # The first task has the slot taken for the poll.
                    if index > 0:
                        await slots.acquire()
                    self._start(raw, slots)
        finally:
            stopping.cancel()

    def _start(self, raw: dict[str, Any], slots: asyncio.Semaphore) -> None:
        token = str(raw["token"])

        async def progress(message: str | None, data: Any) -> None:
            body: dict[str, Any] = {}
            if message is not None:
                body["message"] = message
            if data is not None:
                body["data"] = data
            await self._beat(token, body)

        def wanted(answer: Answer) -> Answer:
            # A 404/409: the attempt is over; its function is cancelled.
            if not answer.wanted:
                self._cancel(token, answer)
                raise asyncio.CancelledError
            return answer

        async def record(name: str, value: Any) -> Any:
            answer = wanted(await self._client.record(token, name, value))
            return answer.body.get("value")

        async def ask(name: str, question: str, schema: Any, timeout_ms: int | None) -> None:
            body = question_body(name, question, schema, timeout_ms)
            wanted(await self._client.report(token, "ask", body))

        async def output(call: str, seq: int, text: str) -> None:
            await self._client.output(token, call, seq, text)

        entities = EntitiesAt(self._client.http, f"/api/v1/tasks/{token}")
        task = Task.from_wire(raw, progress, record, ask, output, entities)
        job = asyncio.create_task(self._run(task), name=f"legato:{task.key}#{task.attempt}")
        self._running[token] = (task, job)

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(token, None)
            slots.release()

        job.add_done_callback(done)

    async def _beat(self, token: str, body: dict[str, Any]) -> None:
        try:
            answer = await self._client.report(token, "heartbeat", body)
        except (httpx.HTTPError, ProtocolError, OSError) as e:
            log.warning("heartbeat not sent (%s); the next one may be", e)
            return
        if not answer.wanted:
            self._cancel(token, answer)

    def _cancel(self, token: str, answer: Answer) -> None:
        running = self._running.get(token)
        if running is None:
            return
        task, job = running
        if not task._cancelled.is_set():
            log.info("task %s#%d cancelled: %s", task.key, task.attempt, answer.body.get("detail"))
            task._cancelled.set()
            job.cancel()

    async def _run(self, task: Task) -> None:
        handler = self._agents.get(task.agent)
        if handler is None:
            await self._fail(task, f"this worker does not serve agent {task.agent}", True)
            return
        beats = asyncio.create_task(self._heartbeats(task))
        try:
            outcome = await run(handler, task)
        except Asked:
            # The question ended the attempt; the task comes again answered.
            return
        except asyncio.CancelledError:
            if task.cancelled:
                return
            raise
        finally:
            beats.cancel()
        if outcome.error is None:
            await self._complete(task, outcome.output)
        else:
            await self._fail(task, outcome.error, outcome.retryable)

    async def _heartbeats(self, task: Task) -> None:
        every = max(task.lease_ms / _BEATS_PER_LEASE, 200) / 1000
        while True:
            await asyncio.sleep(every)
            await self._beat(task.token, {})

    async def _complete(self, task: Task, output: Any) -> None:
        completing = self._completions.complete(task.token, output, task.usage)
        await self._settle(task, "complete", completing)

    async def _fail(self, task: Task, message: str, retryable: bool) -> None:
        body: dict[str, Any] = {"message": message[:4096], "retryable": retryable}
        if task.usage is not None:
            body["usage"] = task.usage
        await self._settle(task, "fail", self._client.report(task.token, "fail", body))

    async def _settle(self, task: Task, what: str, sent: Awaitable[Answer]) -> None:
        try:
            answer = await sent
        except (httpx.HTTPError, ProtocolError, OSError) as e:
            # The lease runs out and the attempt is retried: nothing is lost.
            log.error("could not %s task %s#%d: %s", what, task.key, task.attempt, e)
            return
        if not answer.wanted:
            log.info(
                "task %s#%d: %s not recorded: %s",
                task.key,
                task.attempt,
                what,
                answer.body.get("detail"),
            )

    async def _drain(self) -> None:
        jobs = [job for _, job in self._running.values()]
        if not jobs:
            return
        log.info("draining %d running task(s)", len(jobs))
        _, pending = await asyncio.wait(jobs, timeout=self._drain_timeout_s)
        left = [task for task, job in self._running.values() if job in pending]
        for task, job in list(self._running.values()):
            if job in pending:
                task._cancelled.set()
                job.cancel()
        if pending:
            await asyncio.wait(pending)
        # Handed back at once rather than left to their leases.
        await asyncio.gather(
            *(self._fail(task, "the worker stopped before the task ended", True) for task in left)
        )
