"""What a task writes (a model's reply as it streams), relayed to the
instance's watchers as it comes and never recorded: a watcher who comes later
reads the whole text where the task keeps it, its journal and its result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

import httpx

from ._client import ProtocolError

log = logging.getLogger("legato_agent")

#: Sends one piece: call, seq, text.
SendOutput = Callable[[str, int, str], Awaitable[None]]

#: Characters a piece carries at most: at four bytes each, within the
#: 65,536 bytes the gateway takes.
MAX_PIECE_CHARS = 16_384


class Output:
    """One output of an attempt on its way to the instance's watchers:
    :meth:`push` text as it comes, then ``await`` :meth:`finish` (or use it
    as an ``async with`` block). Text pushed while one piece is being sent
    goes together in the next, so a fast model costs a request per round
    trip, not one per token. A piece that cannot be sent is logged and
    skipped: watchers miss it, nothing else does."""

    def __init__(self, call: str, send: SendOutput) -> None:
        self._call = call
        self._send = send
        self._waiting: list[str] = []
        self._seq = 0
        self._sending: asyncio.Task[None] | None = None

    def push(self, text: str) -> None:
        if not text:
            return
        self._waiting.append(text)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send_waiting())

    async def finish(self) -> None:
        """Returns once everything pushed is sent (or could not be)."""
        while self._sending is not None and not self._sending.done():
            await self._sending

    async def __aenter__(self) -> Output:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.finish()

    async def _send_waiting(self) -> None:
        while self._waiting:
            text = "".join(self._waiting)
            self._waiting.clear()
            for start in range(0, len(text), MAX_PIECE_CHARS):
                self._seq += 1
                piece = text[start : start + MAX_PIECE_CHARS]
                try:
                    await self._send(self._call, self._seq, piece)
                except (httpx.HTTPError, ProtocolError, OSError) as e:
                    log.debug("a piece of %s not relayed: %s", self._call, e)
