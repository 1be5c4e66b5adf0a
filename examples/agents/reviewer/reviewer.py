"""A reviewer agent in Python: reads a proposed change and approves it or
asks for changes, with the team's chat model when one is configured
(``LEGATO__LLM__ENDPOINT``, ``LEGATO__LLM__API_KEY``, ``LEGATO__LLM__MODEL``:
the same settings as legato's built-in agents; any OpenAI-compatible server)
and a deterministic offline review otherwise, so it runs without a network.

    python reviewer.py http://127.0.0.1:8080   # or LEGATO_URL

Input: ``{"change": "<text of the change>", "request": "<what was asked>"}``.
Output: ``{"approved": bool, "comments": [str, ...], "reviewer": "model" | "offline"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from legato_agent import FatalError, Task, Worker

#: Words an offline review refuses a change for.
_UNFINISHED = ("TODO", "FIXME", "XXX")

_PROMPT = (
    "You review code changes. Answer with JSON only: "
    '{"approved": true|false, "comments": ["..."]}. '
    "Refuse changes that are unfinished, unsafe, or do not do what was asked."
)


def offline_review(change: str, request: str) -> dict[str, Any]:
    """A deterministic review: unfinished markers and empty changes fail."""
    comments = [f"unfinished: contains {word}" for word in _UNFINISHED if word in change]
    if not change.strip():
        comments.append("the change is empty")
    if request and not any(word.lower() in change.lower() for word in request.split()[:3]):
        comments.append("the change does not mention what was asked")
    return {"approved": not comments, "comments": comments, "reviewer": "offline"}


async def model_review(task: Task, change: str, request: str) -> dict[str, Any]:
    """Asks the configured chat model (OpenAI-compatible) for a review,
    counting the tokens it spent against the workflow's budget."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(
        base_url=os.environ["LEGATO__LLM__ENDPOINT"],
        api_key=os.environ.get("LEGATO__LLM__API_KEY") or "none",
    )
    reply = await client.chat.completions.create(
        model=os.environ.get("LEGATO__LLM__MODEL", "gpt-4o-mini"),
        messages=[
            {"role": "system", "content": _PROMPT},
            {"role": "user", "content": f"Asked for: {request}\n\nChange:\n{change}"},
        ],
        response_format={"type": "json_object"},
    )
    if reply.usage is not None:
        task.add_usage(
            input_tokens=reply.usage.prompt_tokens,
            output_tokens=reply.usage.completion_tokens,
            model=reply.model,
        )
    text = reply.choices[0].message.content or "{}"
    verdict = json.loads(text)
    return {
        "approved": bool(verdict.get("approved")),
        "comments": [str(c) for c in verdict.get("comments", [])],
        "reviewer": "model",
    }


async def review(task: Task) -> dict[str, Any]:
    if not isinstance(task.input, dict) or "change" not in task.input:
        raise FatalError('input must be {"change": "...", "request": "..."}')
    change = str(task.input["change"])
    request = str(task.input.get("request", ""))
    await task.progress("reviewing the change")
    if os.environ.get("LEGATO__LLM__ENDPOINT"):
        # Journaled: a retry after a crash gets this review back instead of
        # paying for it again. A model error is not recorded; the step's
        # retry policy tries again.
        return await task.step("model review", lambda: model_review(task, change, request))
    return offline_review(change, request)


async def main(url: str) -> None:
    api_key = os.environ.get("LEGATO_TOKEN")
    async with Worker(url=url, api_key=api_key, agents={"reviewer": review}) as worker:
        await worker.run()


if __name__ == "__main__":
    default = os.environ.get("LEGATO_URL", "http://127.0.0.1:8080")
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else default))
