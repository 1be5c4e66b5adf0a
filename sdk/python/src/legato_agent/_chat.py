"""Model calls inside a task through the ``openai`` package (an optional
dependency: ``pip install legato-agent[openai]``), streamed, with their text
relayed to watchers as it comes, the reply journaled and its tokens counted
once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from ._output import Output

if TYPE_CHECKING:
    from openai import AsyncOpenAI


class ToolCall(TypedDict):
    """A tool the model asks to be run: ``arguments`` is its JSON text."""

    id: str
    name: str
    arguments: str


class ChatReply(TypedDict):
    """A model's reply, as :meth:`Task.chat` journals it."""

    content: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    model: str | None
    input_tokens: int
    output_tokens: int


def _client(client: AsyncOpenAI | None) -> AsyncOpenAI:
    if client is not None:
        return client
    from openai import AsyncOpenAI

    # OPENAI_API_KEY and OPENAI_BASE_URL from the environment.
    return AsyncOpenAI()


async def stream_reply(
    client: AsyncOpenAI | None,
    output: Output,
    model: str,
    messages: Iterable[Mapping[str, Any]],
    tools: Iterable[Mapping[str, Any]] | None,
    params: Mapping[str, Any],
) -> ChatReply:
    """Streams one completion, pushing its text to ``output`` as it comes."""
    request: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        **params,
    }
    if tools is not None:
        request["tools"] = list(tools)
    # The request is built from the caller's dicts: the overloads of
    # `create` cannot be chosen from a dict of them.
    completions: Any = _client(client).chat.completions
    stream = await completions.create(**request)
    text: list[str] = []
    calls: dict[int, ToolCall] = {}
    reply = ChatReply(
        content=None,
        tool_calls=[],
        finish_reason=None,
        model=None,
        input_tokens=0,
        output_tokens=0,
    )
    async with output:
        async for chunk in stream:
            reply["model"] = chunk.model or reply["model"]
            if chunk.usage is not None:
                reply["input_tokens"] = chunk.usage.prompt_tokens
                reply["output_tokens"] = chunk.usage.completion_tokens
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    output.push(delta.content)
                    text.append(delta.content)
                for piece in delta.tool_calls or []:
                    call = calls.setdefault(piece.index, ToolCall(id="", name="", arguments=""))
                    call["id"] = piece.id or call["id"]
                    if piece.function is not None:
                        call["name"] += piece.function.name or ""
                        call["arguments"] += piece.function.arguments or ""
                if choice.finish_reason is not None:
                    reply["finish_reason"] = choice.finish_reason
    reply["content"] = "".join(text) if text else None
    reply["tool_calls"] = [calls[i] for i in sorted(calls)]
    return reply
