"""Write legato agents in Python.

An agent is an async function from a :class:`Task` to its JSON output; a
:class:`Worker` serves one or more of them from a legato gateway: it long-polls
for their tasks, runs them with a concurrency cap, heartbeats while they run,
reports each result, and drains on SIGTERM.

    from legato_agent import Task, Worker

    async def review(task: Task) -> dict:
        await task.progress("reading the draft")
        return {"approved": "TODO" not in task.input["draft"]}

    async with Worker(url="http://127.0.0.1:8080", agents={"reviewer": review}) as worker:
        await worker.run()

A :class:`PushApp` serves the same functions as push agents: an ASGI app
legato POSTs signed tasks to.
"""

from ._chat import ChatReply, ToolCall
from ._client import ProtocolError
from ._entities import Entity, EntityOperationError
from ._errors import Asked, FatalError, RetryableError
from ._output import Output
from ._push import PushApp, SignatureError, verify
from ._task import Task
from ._worker import Handler, Worker

__all__ = [
    "Asked",
    "ChatReply",
    "Entity",
    "EntityOperationError",
    "FatalError",
    "Handler",
    "Output",
    "ProtocolError",
    "PushApp",
    "RetryableError",
    "SignatureError",
    "Task",
    "ToolCall",
    "Worker",
    "verify",
]
