"""The two model wire formats the gateway speaks: OpenAI Chat Completions and
Anthropic Messages. Each keeps its own transcript of one run and turns the
model's answer into text and tool requests; the loop does not see the format.

Providers allow no dots in function names, so tool ``a.b`` is offered as
``a__b`` and mapped back (the control plane's ``agents.tools.function_name``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def function_name(tool_name: str) -> str:
    return tool_name.replace(".", "__")


def tool_name_of(function: str) -> str:
    return function.replace("__", ".")


@dataclass(frozen=True)
class ToolRequest:
    """One tool call the model asked for, as it asked (the control plane judges it)."""

    id: str
    tool: str  # the control plane's name, dots restored
    arguments: Any  # the parsed JSON, or the raw text when it was not JSON


@dataclass(frozen=True)
class Turn:
    text: str
    tool_requests: list[ToolRequest] = field(default_factory=list)
    cut_short: bool = False  # the model hit max tokens
    tokens: int = 0


class BadAnswer(Exception):
    """The answer is not the provider's format (a broken gateway or a hostile one)."""


def _arguments(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return raw


class OpenAIChat:
    path = "/gateway/openai/v1/chat/completions"
    headers: dict[str, str] = {}

    def __init__(self, *, system: str, history: list[dict[str, str]], message: str) -> None:
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for earlier in history:
            role = "assistant" if earlier["role"] == "agent" else "user"
            self.messages.append({"role": role, "content": earlier["content"]})
        self.messages.append({"role": "user", "content": message})

    def body(self, *, model: str, tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": self.messages,
            "max_completion_tokens": max_tokens,
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": function_name(tool["name"]),
                        "description": tool.get("description", ""),
                        "parameters": tool.get("parameters") or {"type": "object"},
                    },
                }
                for tool in tools
            ]
        return body

    def read(self, answer: Any) -> Turn:
        try:
            choice = answer["choices"][0]
            message = choice["message"]
            calls = message.get("tool_calls") or []
            requests = [
                ToolRequest(
                    id=str(call["id"]),
                    tool=tool_name_of(str(call["function"]["name"])),
                    arguments=_arguments(call["function"].get("arguments")),
                )
                for call in calls
            ]
            usage = answer.get("usage") or {}
            turn = Turn(
                text=message.get("content") or "",
                tool_requests=requests,
                cut_short=choice.get("finish_reason") == "length",
                tokens=int(usage.get("total_tokens") or 0),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise BadAnswer(f"not a chat completion: {type(exc).__name__}") from None
        self.messages.append(
            {
                "role": "assistant",
                "content": message.get("content"),
                **({"tool_calls": calls} if calls else {}),
            }
        )
        return turn

    def add_tool_results(self, results: list[tuple[ToolRequest, str]]) -> None:
        for request, content in results:
            self.messages.append({"role": "tool", "tool_call_id": request.id, "content": content})


class AnthropicMessages:
    path = "/gateway/anthropic/v1/messages"
    headers = {"anthropic-version": "2023-06-01"}

    def __init__(self, *, system: str, history: list[dict[str, str]], message: str) -> None:
        self.system = system
        self.messages: list[dict[str, Any]] = []
        for earlier in history:
            role = "assistant" if earlier["role"] == "agent" else "user"
            self._append(role, [{"type": "text", "text": earlier["content"]}])
        self._append("user", [{"type": "text", "text": message}])

    def _append(self, role: str, content: list[dict[str, Any]]) -> None:
        # Messages must alternate; two in a row from one side are merged.
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(content)
        else:
            self.messages.append({"role": role, "content": content})

    def body(self, *, model: str, tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "system": self.system,
            "messages": self.messages,
            "max_tokens": max_tokens,
        }
        if tools:
            body["tools"] = [
                {
                    "name": function_name(tool["name"]),
                    "description": tool.get("description", ""),
                    "input_schema": tool.get("parameters") or {"type": "object"},
                }
                for tool in tools
            ]
        return body

    def read(self, answer: Any) -> Turn:
        try:
            blocks = [block for block in answer["content"] if isinstance(block, dict)]
            text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            requests = [
                ToolRequest(
                    id=str(b["id"]), tool=tool_name_of(str(b["name"])), arguments=b["input"]
                )
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            usage = answer.get("usage") or {}
            turn = Turn(
                text=text,
                tool_requests=requests,
                cut_short=answer.get("stop_reason") == "max_tokens",
                tokens=int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadAnswer(f"not a message: {type(exc).__name__}") from None
        if blocks:
            self._append("assistant", blocks)
        return turn

    def add_tool_results(self, results: list[tuple[ToolRequest, str]]) -> None:
        self._append(
            "user",
            [
                {"type": "tool_result", "tool_use_id": request.id, "content": content}
                for request, content in results
            ],
        )


def transcript_for(
    provider: str, *, system: str, history: list[dict[str, str]], message: str
) -> OpenAIChat | AnthropicMessages:
    kind = AnthropicMessages if provider == "anthropic" else OpenAIChat
    return kind(system=system, history=history, message=message)
