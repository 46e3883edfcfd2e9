"""The tools an agent may call through the control plane (DESIGN.md trust boundary 3).

A tool is a named, read-only operation with a JSON Schema for its arguments,
performed by the control plane, never by the agent. Apps register their tools
here when they load (``AppConfig.ready``): the built-in ones in ``agents``,
the Google ones in ``integrations``, so ``agents`` needs to know nothing of them.
The tool endpoint (``/agent-api/v1/tools/<name>``) and the tool list
(``/agent-api/v1/tools``) are the only callers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import jsonschema
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.db.models.lookups import LessThan
from django.utils import timezone

from agents.conversation_services import stop_run
from agents.conversations import Run, RunStatus, RunStep, StepKind, StopReason
from agents.models import Agent, AgentStatus

logger = logging.getLogger(__name__)


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


# --- Offering and calling tools ----------------------------------------------------------------
# The one path every tool call takes (the tool endpoint is its only caller), in
# this order: agent running and paid for → its active run, within its deadline →
# tool allowed, registered and available → arguments valid → one call reserved
# on the run and on the agent's day → performed → a RunStep written.

MAX_ARGUMENTS_BYTES = 16 * 1024
TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,48}(\.[a-z][a-z0-9_]{0,48}){0,3}$")


class ToolRefused(Exception):
    """The call is refused before the tool runs; ``status`` and ``code`` are the answer's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ToolOutcome:
    result: Any  # what the tool returned, or None after a ToolError
    error: ToolError | None = None


def function_name(tool_name: str) -> str:
    """The name a model sees: providers allow no dots in function names (``a.b`` → ``a__b``)."""
    return tool_name.replace(".", "__")


def tool_name_of(function: str) -> str:
    """The inverse of :func:`function_name`."""
    return function.replace("__", ".")


def offered_tools(agent: Agent) -> list[Tool]:
    """The tools the agent may call now: on its allow-list, registered and available."""
    allowed = set(agent.allowed_tools or [])
    return [
        tool
        for tool in registered_tools()
        if tool.name in allowed and tool.unavailable_reason(agent) is None
    ]


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def arguments_digest(arguments: Any) -> str:
    """What a run's steps keep of a call's arguments: their SHA-256, never the values."""
    return hashlib.sha256(canonical_json(arguments)).hexdigest()


def call_tool(
    *, agent: Agent, name: str, arguments: Any, now: dt.datetime | None = None
) -> ToolOutcome:
    """Perform one tool call for ``agent`` within its active run (the token is checked).

    Raises ToolRefused, naming why, for anything refused; a refusal that can be
    tied to the run is in its steps. A limit reached also stops the run.
    """
    now = now or timezone.now()
    if agent.status != AgentStatus.RUNNING:
        raise ToolRefused(409, "agent_not_running", f"This agent is {agent.status}.")
    if not agent.billing_active:
        raise ToolRefused(402, "billing_inactive", "This agent's subscription is not active.")
    run = Run.objects.filter(agent_id=agent.pk, status=RunStatus.ACTIVE).first()
    if run is None:
        raise ToolRefused(409, "no_active_run", "Tools can be called only within a run.")
    if run.deadline is not None and run.deadline <= now:
        stop_run(run_id=run.pk, reason=StopReason.MAX_RUNTIME, now=now)
        raise ToolRefused(
            409, "run_over", f"The run's time limit ({agent.max_runtime_seconds} s) has passed."
        )
    tool = _admitted_tool(agent, run, name, arguments)
    _reserve_call(agent, run, name, arguments, now=now)
    started = time.monotonic()
    try:
        outcome = ToolOutcome(result=tool.perform(ToolCall(agent, arguments, run.pk)).data)
    except ToolError as exc:
        outcome = ToolOutcome(result=None, error=exc)
    except Exception:
        logger.exception("tool %s failed", name)
        outcome = ToolOutcome(result=None, error=ToolError("The tool failed unexpectedly."))
    _settle_call(run, tool, arguments, outcome, latency=time.monotonic() - started)
    return outcome


def _admitted_tool(agent: Agent, run: Run, name: str, arguments: Any) -> Tool:
    """The tool, if this agent may call it with these arguments; refused (and recorded) if not."""
    tool = registered_tool(name)
    if name not in set(agent.allowed_tools or []):
        _refuse(run, name, arguments, 403, "tool_not_allowed", "is not on this agent's allow-list")
    if tool is None:
        _refuse(run, name, arguments, 404, "unknown_tool", "is not a tool this service has")
    reason = tool.unavailable_reason(agent)
    if reason is not None:
        _refuse(run, name, arguments, 409, "tool_unavailable", f"is not available: {reason}")
    if not isinstance(arguments, dict):
        _refuse(run, name, arguments, 400, "invalid_arguments", "needs an object of arguments")
    if len(canonical_json(arguments)) > MAX_ARGUMENTS_BYTES:
        too_big = f"needs arguments of at most {MAX_ARGUMENTS_BYTES} bytes"
        _refuse(run, name, arguments, 400, "invalid_arguments", too_big)
    error = jsonschema.exceptions.best_match(_validator(tool).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "arguments"
        _refuse(run, name, arguments, 400, "invalid_arguments", f"{where}: {error.message[:200]}")
    return tool


def _refuse(run: Run, name: str, arguments: Any, status: int, code: str, why: str) -> NoReturn:
    RunStep.objects.create(
        run=run,
        kind=StepKind.REFUSED,
        name=name[:100],
        detail={"code": code, "reason": why, "arguments_sha256": _safe_digest(arguments)},
    )
    raise ToolRefused(status, code, f"Tool '{name}' {why}.")


def _safe_digest(arguments: Any) -> str:
    try:
        return arguments_digest(arguments)
    except (TypeError, ValueError):
        return ""


def _reserve_call(agent: Agent, run: Run, name: str, arguments: Any, *, now: dt.datetime) -> None:
    """One call on the run and one on the agent's day, each by one conditional UPDATE,
    so concurrent calls cannot pass either limit."""
    today = now.date()
    calls_today = Case(
        When(performed_tool_calls_day=today, then=F("performed_tool_calls_today")),
        default=Value(0),
    )
    # Each limit in its UPDATE's own WHERE, so a concurrent call is checked again.
    under_day_limit = LessThan(calls_today, F("max_tool_calls_per_day"))
    under_run_limit = Run.objects.filter(
        pk=run.pk,
        status=RunStatus.ACTIVE,
        tool_calls__lt=agent.max_tool_calls_per_run - F("reserved_tool_calls"),
    )
    with transaction.atomic():
        # The agent's row first, then the run's: the gateway locks them in that
        # order (admission and settlement), and the runtime calls a tool the
        # moment a model answer arrives, while its settlement may still hold the
        # agent's row. The other order deadlocked.
        on_day = Agent.objects.filter(under_day_limit, pk=agent.pk).update(
            performed_tool_calls_today=calls_today + 1,
            performed_tool_calls_day=today,
        )
        on_run = on_day and under_run_limit.update(reserved_tool_calls=F("reserved_tool_calls") + 1)
        if not on_run:
            transaction.set_rollback(True)
    if not on_run and (on_day or not under_run_limit.exists()):  # the run's limit names first
        reason, limit = StopReason.MAX_TOOL_CALLS, agent.max_tool_calls_per_run
        code, what = "max_tool_calls_per_run", f"max tool calls per run ({limit})"
    elif not on_day:
        reason, limit = StopReason.MAX_TOOL_CALLS_PER_DAY, agent.max_tool_calls_per_day
        code, what = "max_tool_calls_per_day", f"max tool calls per day ({limit})"
    else:
        return
    try:
        _refuse(run, name, arguments, 429, code, f"was refused: {what} reached")
    finally:
        stop_run(run_id=run.pk, reason=reason, now=now)


def _settle_call(run: Run, tool: Tool, arguments: Any, outcome: ToolOutcome, *, latency) -> None:
    detail: dict[str, Any] = {
        "arguments_sha256": arguments_digest(arguments),
        "latency_ms": round(latency * 1000),
    }
    if outcome.error is None:
        detail |= {"outcome": "ok", "result_bytes": len(canonical_json(outcome.result))}
    else:
        detail |= {"outcome": "error", "permanent": outcome.error.permanent}
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(
            tool_calls=F("tool_calls") + 1, reserved_tool_calls=F("reserved_tool_calls") - 1
        )
        RunStep.objects.create(run=run, kind=StepKind.TOOL_CALL, name=tool.name, detail=detail)


_validators: dict[str, jsonschema.protocols.Validator] = {}


def _validator(tool: Tool) -> jsonschema.protocols.Validator:
    validator = _validators.get(tool.name)
    if validator is None:
        cls = jsonschema.validators.validator_for(tool.parameters)
        cls.check_schema(tool.parameters)
        validator = _validators[tool.name] = cls(tool.parameters)
    return validator
