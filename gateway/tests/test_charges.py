"""A call we stop waiting for is still paid for (issue 10, item 3).

Every call that does not end with the provider's own usage is charged its full
reservation: a timeout (test_gateway), a broken stream, an unparseable answer,
a call whose gateway process died (the sweeper, test_gateway). A provider's
error answer bills nothing and is charged nothing.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from gateway.models import UsageStatus
from gateway.provider_standin import Reply
from gateway.tests.helpers import MESSAGES, anthropic_client, only_record, openai_client


def assert_charged_in_full(bot) -> None:
    record = only_record(bot.agent)
    assert record.charged_reservation
    assert record.cost == record.reserved_cost > 0
    assert record.input_tokens + record.output_tokens == record.reserved_tokens
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)
    assert (agent.tokens_today, agent.cost_this_period) == (record.reserved_tokens, record.cost)


def test_a_broken_openai_stream_is_charged_its_full_reservation(
    gateway, fake_providers, make_agent
):
    bot = make_agent()
    fake_providers.enqueue(Reply(text="a b c d e f g h", disconnect_after_chunks=4))
    received = []
    with pytest.raises(openai.APIError):
        received.extend(
            openai_client(gateway, bot.token).chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=True
            )
        )
    assert received  # output reached the agent before the break
    assert_charged_in_full(bot)
    assert only_record(bot.agent).status == UsageStatus.UPSTREAM_ERROR


def test_a_broken_anthropic_stream_is_charged_its_full_reservation(
    gateway, fake_providers, make_agent
):
    bot = make_agent("anthropic")
    fake_providers.enqueue(Reply(text="a b c d e f g h", disconnect_after_chunks=5))
    with (
        pytest.raises(anthropic.APIError),
        anthropic_client(gateway, bot.token).messages.stream(
            model="claude-test", max_tokens=200, messages=MESSAGES
        ) as events,
    ):
        events.get_final_message()
    assert_charged_in_full(bot)


@pytest.mark.parametrize("fault", ["malformed_after_chunks", "disconnect_after_chunks"])
def test_an_unreadable_answer_is_a_502_charged_in_full(gateway, fake_providers, make_agent, fault):
    bot = make_agent()
    fake_providers.enqueue(Reply(**{fault: 0}))
    with pytest.raises(openai.APIStatusError) as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert excinfo.value.status_code == 502
    assert_charged_in_full(bot)


def test_a_provider_error_answer_is_charged_nothing(gateway, fake_providers, make_agent):
    bot = make_agent()
    fake_providers.enqueue(Reply(status=429))
    with pytest.raises(openai.RateLimitError):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    record = only_record(bot.agent)
    assert (record.charged_reservation, record.cost, record.http_status) == (False, 0, 429)
    assert bot.refresh().cost_this_period == 0
