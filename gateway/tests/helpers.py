"""What the gateway's tests share: SDK clients on the gateway, runs, and waiting for settlement.

The gateway answers first and settles just after (off the client's path), so a
test reads the ledger through ``wait_for_settlement``.
"""

from __future__ import annotations

import datetime as dt
import time

import anthropic
import openai
import pytest
from django.utils import timezone

from agents.conversations import Message, Run, RunStatus
from gateway.models import UsageRecord, UsageStatus

MESSAGES = [{"role": "user", "content": "Say hello."}]


def openai_client(gateway: str, token: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway}/gateway/openai/v1", api_key=token, max_retries=0, **kwargs
    )


def anthropic_client(gateway: str, token: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{gateway}/gateway/anthropic", api_key=token, max_retries=0, **kwargs
    )


def function_tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def claude_tool(name: str) -> dict:
    return {"name": name, "input_schema": {"type": "object"}}


def start_run(agent, *, seconds: int = 600) -> Run:
    """An active run, as the control plane's inbox hands one out."""
    now = timezone.now()
    message = Message.objects.create(agent=agent, role="owner", content="Do the thing.")
    return Run.objects.create(
        agent=agent,
        message=message,
        status=RunStatus.ACTIVE,
        started_at=now,
        deadline=now + dt.timedelta(seconds=seconds),
    )


def wait_for_settlement(agent, count: int = 1, timeout: float = 10) -> UsageRecord:
    """The newest ledger row, once ``count`` rows exist and none is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = list(UsageRecord.objects.filter(agent=agent))
        if len(records) >= count and all(r.status != UsageStatus.PENDING for r in records):
            return records[0]
        time.sleep(0.02)
    pytest.fail("the call was never settled")


def only_record(agent) -> UsageRecord:
    record = wait_for_settlement(agent)
    assert UsageRecord.objects.filter(agent=agent).count() == 1
    return record


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the condition never held")
        time.sleep(0.02)
