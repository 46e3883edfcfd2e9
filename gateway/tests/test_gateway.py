"""The metering gateway with the official SDKs as clients and fake providers upstream."""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import ROUND_HALF_UP, Decimal

import anthropic
import httpx
import openai
import pytest
from django.core import mail

from agents.models import AgentStatus
from agents.tokens import revoke_agent_tokens
from gateway.models import UsageRecord, UsageStatus
from gateway.provider_standin import Reply
from gateway.tests.fixtures import ANTHROPIC_KEY, PROVIDER_KEY
from gateway.tests.helpers import (
    MESSAGES,
    anthropic_client,
    only_record,
    openai_client,
    wait_for_settlement,
    wait_until,
)


def micro(amount: Decimal) -> Decimal:
    """The ledger's rounding: to a millionth of a dollar, halves up."""
    return amount.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def openai_cost(input_tokens, cached, output) -> Decimal:
    return micro(
        (
            (input_tokens - cached) * Decimal("2.50")
            + cached * Decimal("1.25")
            + output * Decimal("10.00")
        )
        / 1_000_000
    )


# --- Exact metering ----------------------------------------------------------------------


def test_openai_usage_in_the_ledger_equals_the_providers(gateway, fake_providers, make_agent):
    bot = make_agent()
    fake_providers.enqueue(Reply(input_tokens=1234, cached_input_tokens=200, output_tokens=56))

    completion = openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test", messages=MESSAGES
    )

    assert completion.usage.prompt_tokens == 1234
    record = only_record(bot.agent)
    assert (
        record.status,
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
    ) == (UsageStatus.OK, 1234, 200, 56)
    assert record.cost == openai_cost(1234, 200, 56)
    agent = bot.refresh()
    assert agent.tokens_today == 1234 + 56
    assert agent.cost_this_period == record.cost
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)


def test_openai_stream_is_metered_and_usage_hidden_unless_asked(
    gateway, fake_providers, make_agent
):
    bot = make_agent()
    fake_providers.enqueue(Reply(text="one two three four five", input_tokens=40, output_tokens=9))
    chunks = list(
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "one two three four five"
    )
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    sent = fake_providers.requests[-1].json
    assert sent["stream_options"] == {"include_usage": True}  # but the gateway did
    record = wait_for_settlement(bot.agent)  # settles just after the last event
    assert (record.input_tokens, record.output_tokens, record.streamed) == (40, 9, True)


def test_openai_stream_passes_usage_through_when_asked(gateway, fake_providers, make_agent):
    bot = make_agent()
    fake_providers.enqueue(Reply(input_tokens=40, cached_input_tokens=8, output_tokens=9))
    chunks = list(
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.prompt_tokens == 40
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 8
    assert wait_for_settlement(bot.agent).cost == openai_cost(40, 8, 9)


def anthropic_cost(plain, read, created, output) -> Decimal:
    return micro(
        (
            plain * Decimal("3.00")
            + read * Decimal("0.30")
            + created * Decimal("3.00") * Decimal("1.25")
            + output * Decimal("15.00")
        )
        / 1_000_000
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_usage_and_cost_are_exact(gateway, fake_providers, make_agent, stream):
    bot = make_agent("anthropic")
    fake_providers.enqueue(
        Reply(
            input_tokens=300,
            cached_input_tokens=1000,
            cache_creation_input_tokens=50,
            output_tokens=77,
        )
    )
    client = anthropic_client(gateway, bot.token)
    if stream:
        with client.messages.stream(
            model="claude-test", max_tokens=500, messages=MESSAGES
        ) as events:
            final = events.get_final_message()
    else:
        final = client.messages.create(model="claude-test", max_tokens=500, messages=MESSAGES)
    assert final.usage.output_tokens == 77
    record = wait_for_settlement(bot.agent)
    # Our input counts every prompt token: plain + cache read + cache write.
    assert (
        record.input_tokens,
        record.cached_input_tokens,
        record.cache_creation_input_tokens,
        record.output_tokens,
    ) == (1350, 1000, 50, 77)
    assert record.cost == anthropic_cost(300, 1000, 50, 77)
    assert fake_providers.requests[-1].headers["x-api-key"] == ANTHROPIC_KEY


# --- What is forwarded, what is not --------------------------------------------------


def test_provider_key_is_added_and_agent_token_never_forwarded(gateway, fake_providers, make_agent):
    bot = make_agent(max_tokens_per_request=256)
    openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test", messages=MESSAGES, max_tokens=100_000
    )
    request = fake_providers.requests[-1]
    assert request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert bot.token not in json.dumps(request.headers)
    assert bot.token not in json.dumps(request.json)
    assert request.json["max_completion_tokens"] == 256  # clamped to the agent's limit
    assert "max_tokens" not in request.json


def test_max_tokens_is_set_when_absent(gateway, fake_providers, make_agent):
    bot = make_agent(max_tokens_per_request=512)
    openai_client(gateway, bot.token).chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert fake_providers.requests[-1].json["max_completion_tokens"] == 512


def test_upstream_error_never_carries_the_provider_key(gateway, fake_providers, make_agent, caplog):
    bot = make_agent()
    fake_providers.enqueue(Reply(status=401, echo_credentials=True))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    body = json.dumps(excinfo.value.body)
    assert PROVIDER_KEY not in body
    assert PROVIDER_KEY[:12] not in body
    assert PROVIDER_KEY not in caplog.text
    record = only_record(bot.agent)
    assert (record.status, record.cost, record.http_status) == (UsageStatus.UPSTREAM_ERROR, 0, 401)


# --- Upstream failures ---------------------------------------------------------------------


def test_upstream_500_is_passed_on_in_the_providers_shape(gateway, fake_providers, make_agent):
    bot = make_agent("anthropic")
    fake_providers.enqueue(Reply(status=500, error_message="upstream exploded"))
    with pytest.raises(anthropic.InternalServerError) as excinfo:
        anthropic_client(gateway, bot.token).messages.create(
            model="claude-test", max_tokens=100, messages=MESSAGES
        )
    assert excinfo.value.body["error"]["message"] == "upstream exploded"
    wait_for_settlement(bot.agent)
    agent = bot.refresh()
    assert (agent.cost_this_period, agent.reserved_cost, agent.reserved_tokens) == (0, 0, 0)


def test_upstream_timeout_is_a_504_and_charged_its_full_reservation(
    gateway, fake_providers, make_agent, settings
):
    # The provider finishes and bills a call we stopped waiting for: an agent
    # that makes its calls slow must not spend for free.
    settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS = 0.5
    bot = make_agent()
    fake_providers.enqueue(Reply(delay_before_headers_s=3))
    with pytest.raises(openai.APIStatusError) as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES, max_tokens=5
        )
    assert excinfo.value.status_code == 504
    record = only_record(bot.agent)
    assert (record.status, record.charged_reservation) == (UsageStatus.UPSTREAM_ERROR, True)
    assert record.cost == record.reserved_cost > 0
    assert record.input_tokens + record.output_tokens == record.reserved_tokens
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)
    assert agent.cost_this_period == record.reserved_cost
    assert agent.tokens_today == record.reserved_tokens


def test_a_long_json_answer_gets_the_time_its_tokens_need(
    gateway, fake_providers, make_agent, settings
):
    # 100 tokens at the slowest rate reckoned with (20/s) may take 5 s to write.
    settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS = 0.5
    bot = make_agent()
    fake_providers.enqueue(Reply(delay_before_headers_s=1.5))
    openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test", messages=MESSAGES, max_tokens=100
    )
    assert not only_record(bot.agent).charged_reservation


def test_malformed_frame_mid_stream_ends_in_an_error_and_is_charged_in_full(
    gateway, fake_providers, make_agent
):
    bot = make_agent("anthropic")
    fake_providers.enqueue(Reply(text="a b c d e f g", malformed_after_chunks=3))
    client = anthropic_client(gateway, bot.token)
    with (
        pytest.raises((anthropic.APIError, json.JSONDecodeError)),  # the SDK raises either
        client.messages.stream(model="claude-test", max_tokens=100, messages=MESSAGES) as events,
    ):
        events.get_final_message()
    record = wait_for_settlement(bot.agent)
    # The stream broke before the provider's closing usage: the whole reservation.
    assert (record.status, record.charged_reservation) == (UsageStatus.UPSTREAM_ERROR, True)
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)
    assert agent.tokens_today == record.reserved_tokens
    assert agent.cost_this_period == record.cost == record.reserved_cost


def test_client_that_disconnects_mid_stream_is_charged_what_was_produced(
    gateway, fake_providers, make_agent
):
    bot = make_agent()
    fake_providers.enqueue(
        Reply(text=" ".join(["word"] * 30), chunk_delay_s=0.05, input_tokens=50, output_tokens=30)
    )
    with httpx.stream(
        "POST",
        f"{gateway}/gateway/openai/v1/chat/completions",
        headers={"authorization": f"Bearer {bot.token}"},
        json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
    ) as response:
        for _ in zip(range(3), response.iter_lines(), strict=False):
            pass  # read a little, then hang up
    record = wait_for_settlement(bot.agent)
    assert record.status == UsageStatus.CLIENT_GONE
    assert (record.input_tokens, record.output_tokens) == (50, 30)
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)
    assert agent.cost_this_period == record.cost > 0


# --- Refusals --------------------------------------------------------------------------------


def test_revoked_token_is_refused_on_the_next_call(gateway, make_agent):
    bot = make_agent()
    client = openai_client(gateway, bot.token)
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    revoke_agent_tokens(agent=bot.agent)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)


@pytest.mark.parametrize("status", [AgentStatus.PAUSED, AgentStatus.KILLED, AgentStatus.STOPPED])
def test_agent_that_is_not_running_is_refused(gateway, fake_providers, make_agent, status):
    bot = make_agent(status=status)
    with pytest.raises(openai.PermissionDeniedError, match=f"This agent is {status}"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert fake_providers.requests == []
    assert not UsageRecord.objects.exists()


def test_model_without_a_price_is_refused_not_metered_as_free(gateway, fake_providers, make_agent):
    bot = make_agent()
    with pytest.raises(openai.BadRequestError, match="has no price"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-unpriced", messages=MESSAGES
        )
    assert fake_providers.requests == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "gpt-test"}', "'messages' is required"),
        (b"x" * (1024 * 1024 + 1), "larger than"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    ],
    ids=["malformed", "not-object", "no-messages", "oversized", "nested-too-deep"],
)
def test_bad_bodies_are_400_in_the_providers_shape(gateway, make_agent, body, message):
    bot = make_agent()
    response = httpx.post(
        f"{gateway}/gateway/openai/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {bot.token}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert not UsageRecord.objects.exists()


def test_requests_per_minute_are_limited(gateway, make_agent):
    bot = make_agent(max_requests_per_minute=3)
    client = openai_client(gateway, bot.token)
    for _ in range(3):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="3 requests per minute"):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)


def test_daily_token_cap_refuses_names_the_cap_and_pauses(gateway, fake_providers, make_agent):
    bot = make_agent(daily_token_cap=2000, max_tokens_per_request=100)
    fake_providers.enqueue(Reply(input_tokens=1500, output_tokens=500))
    client = openai_client(gateway, bot.token)
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # lands on the cap
    wait_until(lambda: bot.refresh().status == AgentStatus.PAUSED)  # just after settling
    agent = bot.refresh()
    assert "daily token cap of 2,000 tokens reached" in agent.status_reason
    wait_until(lambda: mail.outbox)  # the stop task runs once the pause commits
    assert "paused" in mail.outbox[-1].subject
    with pytest.raises(openai.PermissionDeniedError, match="paused"):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)


def test_monthly_cost_cap_is_a_402_naming_the_cap(gateway, make_agent):
    bot = make_agent(monthly_cost_cap=Decimal("1.00"), cost_this_period=Decimal("1.00"))
    with pytest.raises(openai.APIStatusError) as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert excinfo.value.status_code == 402
    assert "Monthly cost cap of $1.00 reached" in str(excinfo.value)
    assert bot.refresh().status == AgentStatus.PAUSED


def test_a_call_that_could_pass_the_cap_is_refused_before_it_costs(
    gateway, fake_providers, make_agent
):
    bot = make_agent(daily_token_cap=1000, max_tokens_per_request=4000)
    with pytest.raises(openai.RateLimitError, match="could use up to"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert fake_providers.requests == []
    assert bot.refresh().status == AgentStatus.RUNNING  # not at the cap: not paused


@pytest.mark.parametrize("attempt", range(3))
def test_fifty_concurrent_calls_never_overshoot_the_cap(
    gateway, fake_providers, make_agent, attempt
):
    # Each call reserves at most ~250 tokens (a tiny prompt + max_tokens=100) and
    # really uses 150; the cap leaves room for only a few of them.
    bot = make_agent(daily_token_cap=1000, max_tokens_per_request=100, max_requests_per_minute=1000)
    fake_providers.enqueue(
        *[Reply(input_tokens=100, output_tokens=50, chunk_delay_s=0.01) for _ in range(50)]
    )

    async def call_all() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=f"{gateway}/gateway/openai/v1", api_key=bot.token, max_retries=0
        )

        async def one() -> str:
            try:
                await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
                return "ok"
            except openai.APIStatusError as exc:
                return str(exc.status_code)

        try:
            return await asyncio.gather(*(one() for _ in range(50)))
        finally:
            await client.close()

    outcomes = asyncio.run(call_all())
    wait_for_settlement(bot.agent, count=outcomes.count("ok"))
    agent = bot.refresh()
    assert outcomes.count("ok") >= 1
    assert agent.tokens_today <= 1000
    assert agent.tokens_today == 150 * outcomes.count("ok")
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)
    assert set(outcomes) <= {"ok", "429", "403"}


def test_sweeper_charges_a_call_that_never_settled_its_full_reservation(make_agent):
    import datetime as dt

    from django.utils import timezone

    from agents.models import Agent
    from gateway.metering import charge_unsettled_calls

    bot = make_agent()
    UsageRecord.objects.create(
        agent=bot.agent,
        provider="openai",
        model="gpt-test",
        reserved_tokens=500,
        reserved_output_tokens=100,
        reserved_cost=Decimal("0.01"),
    )
    Agent.objects.filter(pk=bot.agent.pk).update(reserved_tokens=500, reserved_cost=Decimal("0.01"))
    UsageRecord.objects.update(created_at=timezone.now() - dt.timedelta(hours=1))

    assert charge_unsettled_calls(older_than=dt.timedelta(minutes=15)) == 1
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)
    assert (agent.tokens_today, agent.cost_this_period) == (500, Decimal("0.01"))
    record = UsageRecord.objects.get()
    assert (record.status, record.charged_reservation, record.cost) == (
        UsageStatus.SWEPT,
        True,
        Decimal("0.01"),
    )
    assert (record.input_tokens, record.output_tokens) == (400, 100)
    assert charge_unsettled_calls(older_than=dt.timedelta(minutes=15)) == 0
    assert bot.refresh().tokens_today == 500  # charged once


# --- Auth before work ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b"x" * (1024 * 1024 + 1), b"{not json"],
    ids=["nested", "oversized", "malformed"],
)
@pytest.mark.parametrize(
    "authorization", ["Bearer sca_unknown-token-0123456789", "Bearer anything", "Basic x"]
)
def test_nothing_is_read_or_parsed_before_the_token_is_accepted(gateway, body, authorization):
    response = httpx.post(
        f"{gateway}/gateway/openai/v1/chat/completions",
        content=body,
        headers={"authorization": authorization, "content-type": "application/json"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_refusal_names_the_cap_that_binds(gateway, fake_providers, make_agent):
    from agents.models import Agent

    # A call in flight holds most of the daily token cap; the cost cap is far away.
    bot = make_agent(daily_token_cap=1000, max_tokens_per_request=100)
    Agent.objects.filter(pk=bot.agent.pk).update(reserved_tokens=900)
    with pytest.raises(openai.RateLimitError) as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert "Calls in flight hold the rest of the daily token cap" in str(excinfo.value)
    assert "cost" not in str(excinfo.value)
    assert fake_providers.requests == []
