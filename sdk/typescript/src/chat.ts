/**
 * Model calls inside a task through the `openai` package (an optional peer
 * dependency), streamed, with their text relayed to watchers as it comes.
 * `Task.chat` journals the reply and counts its tokens once.
 */

import type { OpenAI } from "openai";
import type {
  ChatCompletionCreateParamsStreaming,
  ChatCompletionMessageParam,
  ChatCompletionTool,
} from "openai/resources/chat/completions";

import type { Output } from "./output.js";
import { FatalError, RetryableError } from "./errors.js";

/** A tool the model asks to be run: `arguments` is its JSON text. */
export interface ToolCall {
  id: string;
  name: string;
  arguments: string;
}

/** A model's reply, as `Task.chat` journals it. */
export interface ChatReply {
  content: string | null;
  toolCalls: ToolCall[];
  finishReason: string | null;
  model: string | null;
  inputTokens: number;
  outputTokens: number;
}

export interface ChatOptions
  extends Omit<ChatCompletionCreateParamsStreaming, "messages" | "tools" | "stream" | "stream_options"> {
  tools?: ChatCompletionTool[];
  /** The client (default: one from OPENAI_API_KEY and OPENAI_BASE_URL). */
  client?: OpenAI;
}

export type ChatMessage = ChatCompletionMessageParam;

/** Streams one completion, pushing its text to `output` as it comes. */
export async function streamReply(
  name: string,
  messages: ChatMessage[],
  options: ChatOptions,
  output: Output,
): Promise<ChatReply> {
  const { client, tools, ...params } = options;
  let openai: typeof import("openai");
  try {
    openai = await import("openai");
  } catch {
    throw new FatalError(`${name}: task.chat needs the openai package (npm install openai)`);
  }
  const api = client ?? new openai.OpenAI();
  const reply: ChatReply = { content: null, toolCalls: [], finishReason: null, model: null, inputTokens: 0, outputTokens: 0 };
  const text: string[] = [];
  const calls = new Map<number, ToolCall>();
  try {
    const stream = await api.chat.completions.create({
      ...params,
      messages,
      ...(tools !== undefined && { tools }),
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) {
      reply.model = chunk.model || reply.model;
      if (chunk.usage) {
        reply.inputTokens = chunk.usage.prompt_tokens;
        reply.outputTokens = chunk.usage.completion_tokens;
      }
      for (const choice of chunk.choices) {
        const delta = choice.delta;
        if (delta.content) {
          output.push(delta.content);
          text.push(delta.content);
        }
        for (const piece of delta.tool_calls ?? []) {
          const call = calls.get(piece.index) ?? { id: "", name: "", arguments: "" };
          calls.set(piece.index, call);
          if (piece.id) call.id = piece.id;
          call.name += piece.function?.name ?? "";
          call.arguments += piece.function?.arguments ?? "";
        }
        if (choice.finish_reason) reply.finishReason = choice.finish_reason;
      }
    }
  } catch (e) {
    if (e instanceof openai.APIError && typeof e.status === "number") {
      const retryable = [408, 409, 429].includes(e.status) || e.status >= 500;
      throw retryable ? new RetryableError(`${name}: ${e.message}`) : new FatalError(`${name}: ${e.message}`);
    }
    throw new RetryableError(`${name}: ${String(e)}`);
  } finally {
    await output.finish();
  }
  reply.content = text.length > 0 ? text.join("") : null;
  reply.toolCalls = [...calls.keys()].sort((a, b) => a - b).flatMap((i) => calls.get(i) ?? []);
  return reply;
}
