"""Limits the agent cannot reset (issue 10, item 5), and only a paid agent's calls go.

Every call is charged to the agent's active run (agents.Run, begun by the
control plane and found with the token: no header the agent sends chooses it).
Calls outside any run count against a per-UTC-day allowance with the same
limits. Tool calls per day are reserved like tokens.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import openai
import pytest
from django.utils import timezone

from agents.conversations import MessageRole, Run, RunStatus, RunStep, StepKind, StopReason
from agents.models import Agent
from gateway.models import UsageRecord
from gateway.provider_standin import Reply
from gateway.tests.helpers import (
    MESSAGES,
    function_tool,
    only_record,
    openai_client,
    start_run,
    wait_for_settlement,
)


def test_a_call_is_charged_to_the_active_run_with_its_step(gateway, fake_providers, make_agent):
    bot = make_agent(allowed_tools=["calendar.list_events"])
    run = start_run(bot.agent)
    fake_providers.enqueue(
        Reply(tool_calls=[("calendar__list_events", {})], input_tokens=100, output_tokens=20)
    )
    openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        tools=[function_tool("calendar__list_events"), function_tool("exec")],
    )
    record = only_record(bot.agent)
    run.refresh_from_db()
    assert record.run_id == run.id
    assert (run.model_calls, run.reserved_model_calls, run.requested_tool_calls) == (1, 0, 1)
    assert (run.tokens, run.cost) == (120, record.cost)
    (step,) = RunStep.objects.filter(run=run)
    assert (step.kind, step.name) == (StepKind.MODEL_CALL, "gpt-test")
    assert step.detail["input_tokens"] == 100
    assert step.detail["tools_requested"] == ["calendar__list_events"]
    assert step.detail["tools_dropped"] == ["exec"]
    assert step.detail["cost"] == str(record.cost)
    agent = bot.refresh()
    assert (agent.tool_calls_today, agent.reserved_tool_calls) == (1, 0)
    assert agent.model_calls_outside_runs_today == 0  # it was inside a run


def test_max_model_steps_per_run_holds_and_the_refusal_is_a_step(gateway, make_agent):
    bot = make_agent(max_model_steps_per_run=2)
    run = start_run(bot.agent)
    client = openai_client(gateway, bot.token)
    for done in range(1, 3):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        wait_for_settlement(bot.agent, count=done)
    with pytest.raises(openai.RateLimitError, match=r"Max model steps per run \(2\) reached"):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    refused = RunStep.objects.get(run=run, kind=StepKind.REFUSED)
    assert refused.detail["limit"] == "max_model_steps_per_run"
    # Nothing in the run can pass that limit again: the run ends, and its owner is told.
    run.refresh_from_db()
    assert (run.status, run.stop_reason) == (RunStatus.STOPPED, StopReason.MAX_MODEL_STEPS)
    [notice] = run.replies.all()
    assert notice.role == MessageRole.SYSTEM
    assert "limit of 2 model calls" in notice.content


def test_no_header_starts_a_fresh_budget(gateway, make_agent):
    # The old X-SaferClaw-Run header chose the run; now nothing the agent sends does.
    bot = make_agent(max_model_steps_per_run=2)
    for run_id in ("a", "b"):
        client = openai_client(gateway, bot.token, default_headers={"X-SaferClaw-Run": run_id})
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    wait_for_settlement(bot.agent, count=2)
    client = openai_client(gateway, bot.token, default_headers={"X-SaferClaw-Run": "fresh"})
    with pytest.raises(openai.RateLimitError, match="outside a run"):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)


def test_the_allowance_outside_runs_is_per_utc_day(gateway, make_agent):
    bot = make_agent(max_model_steps_per_run=1)
    client = openai_client(gateway, bot.token)
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    wait_for_settlement(bot.agent)
    with pytest.raises(openai.RateLimitError, match="outside a run"):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    yesterday = timezone.now().date() - dt.timedelta(days=1)
    Agent.objects.filter(pk=bot.agent.pk).update(tokens_day=yesterday)
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)


def test_tool_calls_the_model_asked_for_count_against_the_run(gateway, fake_providers, make_agent):
    bot = make_agent(max_tool_calls_per_run=1, allowed_tools=["lookup"])
    run = start_run(bot.agent)
    client = openai_client(gateway, bot.token)
    fake_providers.enqueue(Reply(tool_calls=[("lookup", {"q": "a"})]))
    client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, tools=[function_tool("lookup")]
    )
    wait_for_settlement(bot.agent)
    assert Run.objects.get(pk=run.pk).requested_tool_calls == 1
    with pytest.raises(openai.RateLimitError, match=r"Max tool calls per run \(1\) reached"):
        client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, tools=[function_tool("lookup")]
        )
    # A call that offers no tool can still answer.
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)


def test_a_call_after_the_runs_deadline_is_refused(gateway, make_agent):
    bot = make_agent(max_runtime_seconds=600)
    run = start_run(bot.agent)
    Run.objects.filter(pk=run.pk).update(deadline=timezone.now() - dt.timedelta(seconds=1))
    with pytest.raises(openai.RateLimitError, match=r"Max runtime per run \(600 s\)"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    step = RunStep.objects.get(run=run)
    assert (step.kind, step.detail["limit"]) == (StepKind.REFUSED, "max_runtime_seconds")


def test_an_agent_whose_billing_is_not_active_is_refused(gateway, fake_providers, make_agent):
    bot = make_agent(billing_active=False)
    with pytest.raises(openai.PermissionDeniedError, match="subscription is not active"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert fake_providers.requests == []


@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_calls_never_pass_the_tool_calls_per_day(
    gateway, fake_providers, make_agent, attempt
):
    bot = make_agent(
        max_tool_calls_per_day=3,
        max_tool_calls_per_run=100,
        max_model_steps_per_run=100,
        max_requests_per_minute=1000,
        allowed_tools=["lookup"],
    )
    start_run(bot.agent)
    fake_providers.enqueue(
        *[Reply(tool_calls=[("lookup", {})], chunk_delay_s=0.01) for _ in range(12)]
    )

    async def call_all() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=f"{gateway}/gateway/openai/v1", api_key=bot.token, max_retries=0
        )

        async def one() -> str:
            try:
                await client.chat.completions.create(
                    model="gpt-test", messages=MESSAGES, tools=[function_tool("lookup")]
                )
                return "ok"
            except openai.APIStatusError as exc:
                return exc.message

        try:
            return await asyncio.gather(*(one() for _ in range(12)))
        finally:
            await client.close()

    outcomes = asyncio.run(call_all())
    wait_for_settlement(bot.agent, count=outcomes.count("ok"))
    agent = bot.refresh()
    assert 1 <= outcomes.count("ok") <= 3
    assert agent.tool_calls_today == outcomes.count("ok") <= 3
    assert agent.reserved_tool_calls == 0
    records = UsageRecord.objects.filter(agent=bot.agent)
    assert sum(record.tool_calls for record in records) == outcomes.count("ok")
    assert all(
        o == "ok" or "tool calls per day" in o or "tool calls per run" in o for o in outcomes
    ), outcomes
