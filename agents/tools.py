"""The tools an agent may call through the control plane (DESIGN.md trust boundary 3).

A tool is a named, read-only operation with a JSON Schema for its arguments,
performed by the control plane, never by the agent. Apps register their tools
here when they load (``AppConfig.ready``): the built-in ones in ``agents``,
the Google ones in ``integrations``, so ``agents`` needs to know nothing of them.
The tool endpoint (``/agent-api/v1/tools/<name>``) and the tool list
(``/agent-api/v1/tools``) are the only callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.models import Agent


class ToolError(Exception):
    """The tool could not do its work; the message is safe to show the agent.

    ``permanent`` says whether trying again could help.
    """

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class ToolCall:
    """One validated call: the agent it is for and its arguments."""

    agent: Agent
    arguments: dict[str, Any]
    run_id: Any = None


@dataclass(frozen=True)
class ToolResult:
    """What a tool returns: JSON-able data, already bounded by the tool's caps."""

    data: Any
    # Metadata for the run's steps (item counts, truncation); never content.
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    name: str  # e.g. "calendar.list_events"
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    perform: Callable[[ToolCall], ToolResult]
    # None when the agent may use it now, or the reason it may not
    # ("Gmail is not connected"): a tool not usable is neither offered nor run.
    unavailable_reason: Callable[[Agent], str | None] = lambda agent: None


_registry: dict[str, Tool] = {}


def register(tool: Tool) -> Tool:
    """Add a tool (at app load). A name registered twice is a programming error."""
    if tool.name in _registry and _registry[tool.name] is not tool:
        raise ValueError(f"tool {tool.name!r} is registered twice")
    _registry[tool.name] = tool
    return tool


def registered_tool(name: str) -> Tool | None:
    return _registry.get(name)


def registered_tools() -> list[Tool]:
    return sorted(_registry.values(), key=lambda tool: tool.name)
