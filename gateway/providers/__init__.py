"""The providers the gateway speaks: one module each, the same interface (``base.Provider``)."""

from __future__ import annotations

from gateway.providers.anthropic import Anthropic
from gateway.providers.base import (
    Answer,
    BadRequest,
    Call,
    Provider,
    StreamMeter,
    Usage,
    tool_key,
)
from gateway.providers.openai import OpenAI

OPENAI = OpenAI()
ANTHROPIC = Anthropic()
PROVIDERS: dict[str, Provider] = {OPENAI.name: OPENAI, ANTHROPIC.name: ANTHROPIC}

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "PROVIDERS",
    "Answer",
    "BadRequest",
    "Call",
    "Provider",
    "StreamMeter",
    "Usage",
    "tool_key",
]
