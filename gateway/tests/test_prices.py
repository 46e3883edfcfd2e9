"""Prices as billed (issue 10, item 4).

A dated snapshot is priced on its own row, never as its alias; cache writes are
priced by their lifetime; priority tiers are refused (and the standard tier is
asked for by name); a request whose price cannot be computed is refused.
"""

from __future__ import annotations

from decimal import Decimal

import anthropic
import openai
import pytest

from gateway.models import ModelPrice
from gateway.provider_standin import Reply
from gateway.tests.helpers import MESSAGES, anthropic_client, only_record, openai_client


def test_a_dated_snapshot_without_its_own_price_is_refused(gateway, fake_providers, make_agent):
    bot = make_agent()  # gpt-test has a price; its snapshot does not
    with pytest.raises(openai.BadRequestError, match="'gpt-test-2024-05-13' has no price"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test-2024-05-13", messages=MESSAGES
        )
    assert fake_providers.requests == []


def test_a_dated_snapshot_is_priced_on_its_own_row(gateway, fake_providers, make_agent):
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-test-2024-05-13",
        input_per_mtok=Decimal("5.00"),
        cached_input_per_mtok=Decimal("5.00"),
        cache_write_5m_per_mtok=Decimal("0"),
        output_per_mtok=Decimal("15.00"),
    )
    bot = make_agent()
    fake_providers.enqueue(Reply(input_tokens=1_000_000, output_tokens=1_000_000))
    openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test-2024-05-13", messages=MESSAGES
    )
    assert only_record(bot.agent).cost == Decimal("20.000000")  # not the alias's 2.50 + 10


def test_cache_writes_are_priced_by_their_lifetime(gateway, fake_providers, make_agent):
    bot = make_agent("anthropic")
    fake_providers.enqueue(
        Reply(
            input_tokens=0,
            cache_creation_input_tokens=3_000_000,
            cache_creation_1h_input_tokens=1_000_000,
            output_tokens=0,
        )
    )
    system = [
        {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    anthropic_client(gateway, bot.token).messages.create(
        model="claude-test", max_tokens=100, system=system, messages=MESSAGES
    )
    # claude-test: 5-minute writes $3.75/Mtok, one-hour writes $6.00/Mtok.
    assert only_record(bot.agent).cost == Decimal("2") * Decimal("3.75") + Decimal("6.00")


def test_a_one_hour_cache_without_a_price_is_refused(gateway, fake_providers, make_agent):
    ModelPrice.objects.filter(model="claude-test").update(cache_write_1h_per_mtok=None)
    bot = make_agent("anthropic")
    with pytest.raises(anthropic.BadRequestError, match="one-hour cache"):
        anthropic_client(gateway, bot.token).messages.create(
            model="claude-test",
            max_tokens=100,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "hi",
                            "cache_control": {"type": "ephemeral", "ttl": "1h"},
                        }
                    ],
                }
            ],
        )
    assert fake_providers.requests == []


@pytest.mark.parametrize("tier", ["priority", "flex", "scale"])
def test_openai_tiers_priced_otherwise_are_refused(gateway, fake_providers, make_agent, tier):
    bot = make_agent()
    with pytest.raises(openai.BadRequestError, match="service_tier"):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES, service_tier=tier
        )
    assert fake_providers.requests == []


def test_the_standard_tier_is_asked_for_by_name(gateway, fake_providers, make_agent):
    bot = make_agent()
    openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test", messages=MESSAGES, service_tier="auto"
    )
    assert fake_providers.requests[-1].json["service_tier"] == "default"
