"""A run's limits as the runtime holds itself to them.

The control plane hands them out with the run and enforces them again on its
side (the gateway counts model steps, the tool endpoint tool calls, both the
deadline), so a runtime with these checks removed gains nothing; here they
let the owner's reply say which limit ended the run, before the control plane
has to.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

# Stop reasons, as the control plane names them (agents.conversations.StopReason).
COMPLETED = "completed"
MAX_MODEL_STEPS = "max_model_steps"
MAX_TOOL_CALLS = "max_tool_calls"
MAX_RUNTIME = "max_runtime"
MAX_TOKENS = "max_tokens"
ERROR = "error"


class LimitReached(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RunLimits:
    max_model_steps: int
    max_tool_calls: int
    max_runtime_seconds: float
    max_tokens_per_call: int
    deadline: float  # time.monotonic() at which the run must end
    model_steps: int = 0
    tool_calls: int = 0

    @classmethod
    def from_handout(cls, run: dict[str, Any]) -> RunLimits:
        """Limits from the inbox's ``run``; a run handed out again goes on from its counts."""
        limits, used = run["limits"], run.get("used") or {}
        max_runtime = float(limits["max_runtime_seconds"])
        # The control plane's deadline, on our monotonic clock, and never later
        # than max runtime from now (a skewed clock must not lengthen a run).
        deadline = dt.datetime.fromisoformat(run["deadline"])
        left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
        return cls(
            max_model_steps=int(limits["max_model_steps"]),
            max_tool_calls=int(limits["max_tool_calls"]),
            max_runtime_seconds=max_runtime,
            max_tokens_per_call=int(limits["max_tokens_per_call"]),
            deadline=time.monotonic() + max(0.0, min(left, max_runtime)),
            model_steps=int(used.get("model_calls") or 0),
            tool_calls=int(used.get("tool_calls") or 0),
        )

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self) -> None:
        if self.time_left() <= 0:
            raise LimitReached(
                MAX_RUNTIME,
                f"this run reached its time limit of {self.max_runtime_seconds:g} s "
                "(max runtime per run)",
            )

    def take_model_step(self) -> None:
        self.check_time()
        # With every tool call used, the gateway refuses the next model call (it
        # holds the same limit on the calls the model asks for): stop here, saying why.
        if 0 < self.max_tool_calls <= self.tool_calls:
            raise LimitReached(MAX_TOOL_CALLS, self._tool_limit())
        if self.model_steps >= self.max_model_steps:
            raise LimitReached(
                MAX_MODEL_STEPS,
                f"this run reached its limit of {self.max_model_steps} model calls "
                "(max model steps per run)",
            )
        self.model_steps += 1

    def take_tool_call(self) -> None:
        self.check_time()
        if self.tool_calls >= self.max_tool_calls:
            raise LimitReached(MAX_TOOL_CALLS, self._tool_limit())
        self.tool_calls += 1

    def _tool_limit(self) -> str:
        return (
            f"this run reached its limit of {self.max_tool_calls} tool calls "
            "(max tool calls per run)"
        )
