"""Leases (gateway.leases): a busy agent's calls admitted from one reservation for many.

Two gateways on their own event loops (each with its own ledger, as two uvicorn
workers have) serve one agent's clients through the official SDK; the
ledger and the agent's counters are read from PostgreSQL once every lease settled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import time
import uuid
from decimal import Decimal

import openai
import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.utils import timezone

from agents.kill_switch import kill_agent
from agents.models import Agent
from gateway.leases import settlement_params
from gateway.ledger import batch_json, settle_lease_sync
from gateway.ledger_sql import CALL_ROW_COLUMNS
from gateway.metering import charge_unsettled_calls
from gateway.models import UsageRecord, UsageStatus
from gateway.proxy import close_all
from gateway.tests.helpers import MESSAGES, openai_client, start_run, wait_for_settlement
from gateway.tests.live import start_live_server

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="leases are the PostgreSQL ledger's"
)

BUSY = {  # limits far off, so leases are granted
    "max_requests_per_minute": 100_000,
    "max_model_steps_per_run": 100_000,
    "daily_token_cap": 10**9,
    "monthly_cost_cap": Decimal(1000),
}


@pytest.fixture
def second_gateway(gateway):
    """Another gateway worker: its own event loop, ledger and leases."""
    live = start_live_server()
    yield live.url
    close_all()  # both gateways' ledgers (their leases settle) and sessions, on their loops
    live.stop()


async def _hammer(
    urls: list[str], token: str, *, clients: int, calls: int, stop_on: str
) -> list[str]:
    """``clients`` concurrent SDK clients on each gateway, ``calls`` calls in all: each
    call's outcome, "ok" or the HTTP status. A client stops at a ``stop_on`` status."""
    left = calls
    outcomes: list[str] = []
    sdks = [
        openai.AsyncOpenAI(base_url=f"{url}/gateway/openai/v1", api_key=token, max_retries=0)
        for url in urls
    ]

    async def client(sdk: openai.AsyncOpenAI) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES)
                outcomes.append("ok")
            except openai.APIStatusError as exc:
                outcomes.append(str(exc.status_code))
                if str(exc.status_code) == stop_on:
                    return

    try:
        await asyncio.gather(*(client(sdk) for sdk in sdks for _ in range(clients)))
    finally:
        for sdk in sdks:
            await sdk.close()
    return outcomes


def hammer(
    urls: list[str], token: str, *, clients: int = 12, calls: int, stop_on: str = ""
) -> list[str]:
    return asyncio.run(_hammer(urls, token, clients=clients, calls=calls, stop_on=stop_on))


def ledger_sums(agent: Agent) -> dict:
    rows = UsageRecord.objects.filter(agent=agent)
    return rows.aggregate(input=Sum("input_tokens"), output=Sum("output_tokens"), cost=Sum("cost"))


def assert_counters_equal_the_ledger(agent: Agent) -> None:
    agent.refresh_from_db()
    sums = ledger_sums(agent)
    assert agent.tokens_today == sums["input"] + sums["output"]
    assert agent.cost_this_period == sums["cost"]
    assert (agent.reserved_tokens, agent.reserved_cost, agent.reserved_tool_calls) == (0, 0, 0)
    assert agent.reserved_model_calls_outside_runs == 0


def test_a_busy_agents_calls_are_drawn_from_leases_and_its_counters_equal_the_ledger(
    gateway, second_gateway, fake_providers, make_agent
):
    bot = make_agent(**BUSY)
    outcomes = hammer([gateway, second_gateway], bot.token, calls=400)
    assert outcomes == ["ok"] * 400
    wait_for_settlement(bot.agent, count=400)  # and no lease pending
    calls = UsageRecord.objects.filter(agent=bot.agent, reserved_calls=1)
    leases = UsageRecord.objects.filter(agent=bot.agent, reserved_calls__gt=1)
    assert calls.count() == 400
    assert calls.filter(lease__isnull=False).count() >= 200  # most were drawn from leases
    assert leases.count() >= 2
    assert set(leases.values_list("status", flat=True)) == {UsageStatus.LEASE}
    assert not leases.exclude(input_tokens=0, output_tokens=0, cost=0).exists()
    # Each call's own row carries the provider's usage (12 in, 14 out) and its price.
    assert set(calls.values_list("status", "input_tokens", "output_tokens")) == {("ok", 12, 14)}
    assert_counters_equal_the_ledger(bot.agent)
    assert bot.agent.tokens_today == 400 * 26
    assert bot.agent.cost_this_period == 400 * (12 * Decimal("2.50") + 14 * Decimal(10)) / 10**6
    assert bot.agent.model_calls_outside_runs_today == 400  # every call a step, no more


def test_an_agent_calling_one_call_after_another_is_leased_too(gateway, fake_providers, make_agent):
    bot = make_agent(**BUSY)
    assert hammer([gateway], bot.token, clients=1, calls=60) == ["ok"] * 60
    wait_for_settlement(bot.agent, count=60)
    assert UsageRecord.objects.filter(agent=bot.agent, lease__isnull=False).count() >= 30
    assert_counters_equal_the_ledger(bot.agent)
    assert bot.agent.tokens_today == 60 * 26
    assert bot.agent.model_calls_outside_runs_today == 60


def test_a_lease_is_renewed_while_it_still_serves(gateway, fake_providers, make_agent, settings):
    # An agent that keeps calling never waits for a lease's admission: the next lease is
    # asked for while the open one still has calls and time left. Asked for only once
    # the open one could not cover a call, it would be asked for after its time was up,
    # or with every one of its calls drawn.
    bot = make_agent(**BUSY)
    assert hammer([gateway], bot.token, clients=1, calls=150) == ["ok"] * 150
    wait_for_settlement(bot.agent, count=150)
    leases = list(
        UsageRecord.objects.filter(agent=bot.agent, reserved_calls__gt=1)
        .annotate(drawn=Count("calls"))
        .order_by("created_at")
    )
    life = dt.timedelta(seconds=settings.GATEWAY_LEASE_SECONDS)
    renewed = [
        (before, after)
        for before, after in itertools.pairwise(leases)
        if after.created_at < before.created_at + life
        and before.drawn < settings.GATEWAY_LEASE_CALLS
    ]
    assert renewed, [(lease.created_at, lease.drawn) for lease in leases]
    assert_counters_equal_the_ledger(bot.agent)
    assert bot.agent.tokens_today == 150 * 26


def test_an_agent_with_the_default_limits_is_never_leased(gateway, fake_providers, make_agent):
    # 60 requests a minute leave no room for a lease (32 calls, four times over).
    bot = make_agent(max_requests_per_minute=60)
    client = openai_client(gateway, bot.token)
    for count in range(1, 11):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        wait_for_settlement(bot.agent, count=count)
        assert bot.refresh().tokens_today == 26 * count  # charged at once, call by call
    assert not UsageRecord.objects.filter(reserved_calls__gt=1).exists()


def test_a_run_s_leased_calls_are_its_steps(gateway, second_gateway, fake_providers, make_agent):
    bot = make_agent(**BUSY)
    run = start_run(bot.agent)
    assert hammer([gateway, second_gateway], bot.token, clients=8, calls=200) == ["ok"] * 200
    wait_for_settlement(bot.agent, count=200)
    drawn = UsageRecord.objects.filter(run=run, lease__isnull=False)
    assert drawn.count() >= 50
    assert UsageRecord.objects.filter(run=run, reserved_calls=1).count() == 200
    run.refresh_from_db()
    assert (run.model_calls, run.reserved_model_calls, run.tokens) == (200, 0, 200 * 26)
    assert run.steps.filter(kind="model_call").count() == 200  # one step per call
    assert_counters_equal_the_ledger(bot.agent)
    assert bot.agent.model_calls_outside_runs_today == 0


def test_no_lease_outlives_its_run_s_deadline(gateway, fake_providers, make_agent):
    bot = make_agent(**BUSY)
    start_run(bot.agent, seconds=1)  # ends before a lease asked for now could
    assert hammer([gateway], bot.token, clients=4, calls=12) == ["ok"] * 12
    wait_for_settlement(bot.agent, count=12)
    assert not UsageRecord.objects.filter(reserved_calls__gt=1).exists()


@pytest.mark.parametrize("attempt", range(3))
def test_leases_from_two_workers_never_overshoot_the_cap(
    gateway, second_gateway, fake_providers, make_agent, attempt
):
    # A call reserves its short prompt and max_tokens=100, and uses 26 tokens (12 in,
    # 14 out). The cap leaves room for leases at first (32 calls, granted only with
    # four times that to spare), then for calls one by one, then for none.
    bot = make_agent(**{**BUSY, "daily_token_cap": 40_000, "max_tokens_per_request": 100})
    outcomes = hammer([gateway, second_gateway], bot.token, clients=25, calls=2500)
    wait_for_settlement(bot.agent, count=outcomes.count("ok"))
    agent = bot.refresh()
    assert UsageRecord.objects.filter(agent=agent, reserved_calls__gt=1).exists()
    assert agent.tokens_today <= 40_000
    assert agent.tokens_today == 26 * outcomes.count("ok")
    assert_counters_equal_the_ledger(agent)
    assert set(outcomes) <= {"ok", "429"}
    assert outcomes.count("429") > 0  # the cap was reached


def test_a_kill_admits_nothing_from_a_lease_after_it_returns(
    gateway, second_gateway, fake_providers, make_agent
):
    bot = make_agent(**BUSY)
    killed: dict[str, dt.datetime] = {}

    def kill_once_leased() -> None:
        deadline = time.monotonic() + 30
        while not UsageRecord.objects.filter(agent=bot.agent, reserved_calls__gt=1).exists():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        kill_agent(agent=Agent.objects.get(pk=bot.agent.pk))
        killed["returned"] = timezone.now()

    killer = threading.Thread(target=kill_once_leased)
    killer.start()
    outcomes = hammer([gateway, second_gateway], bot.token, calls=20_000, stop_on="401")
    killer.join()
    assert "ok" in outcomes
    assert "401" in outcomes  # calls went on until the kill stopped them
    wait_for_settlement(bot.agent, count=outcomes.count("ok"))
    # A drawn call's row is stamped with the moment it was drawn (admitted): none after
    # the kill returned. (One admitted alone cannot pass its token's revocation.)
    drawn = UsageRecord.objects.filter(agent=bot.agent, lease__isnull=False)
    assert drawn.exists()
    assert not drawn.filter(created_at__gt=killed["returned"]).exists()
    assert_counters_equal_the_ledger(bot.agent)


def test_a_lowered_cap_binds_once_the_lease_is_over(
    gateway, second_gateway, fake_providers, make_agent, settings
):
    from agents.services import apply_agent_limits

    bot = make_agent(**BUSY)
    done = threading.Event()

    def lower_once_leased() -> None:
        while not UsageRecord.objects.filter(agent=bot.agent, reserved_calls__gt=1).exists():
            time.sleep(0.005)
        agent = Agent.objects.get(pk=bot.agent.pk)
        apply_agent_limits(agent=agent, limits={"max_requests_per_minute": 1})
        done.set()

    lowerer = threading.Thread(target=lower_once_leased)
    lowerer.start()
    outcomes = hammer([gateway, second_gateway], bot.token, calls=20_000, stop_on="429")
    lowerer.join()
    assert done.is_set()
    assert "429" in outcomes
    # Once the limit is lowered and a lease's life is over, every call is refused.
    time.sleep(settings.GATEWAY_LEASE_SECONDS)
    assert hammer([gateway, second_gateway], bot.token, clients=4, calls=16) == ["429"] * 16


def a_dead_workers_lease(bot) -> UsageRecord:
    """A lease of 32 calls left pending an hour ago (its worker died holding it)."""
    lease = UsageRecord.objects.create(
        agent=bot.agent,
        provider="openai",
        model="gpt-test",
        reserved_tokens=32 * 500,
        reserved_output_tokens=32 * 100,
        reserved_cost=Decimal("0.32"),
        reserved_calls=32,
    )
    Agent.objects.filter(pk=bot.agent.pk).update(
        reserved_tokens=32 * 500,
        reserved_cost=Decimal("0.32"),
        reserved_model_calls_outside_runs=32,
    )
    UsageRecord.objects.update(created_at=timezone.now() - dt.timedelta(hours=1))
    return lease


def test_the_sweeper_charges_a_dead_workers_lease_its_whole_reservation(make_agent):
    bot = make_agent(**BUSY)
    lease = a_dead_workers_lease(bot)

    assert charge_unsettled_calls(older_than=dt.timedelta(minutes=15)) == 1
    agent = bot.refresh()
    assert (agent.tokens_today, agent.cost_this_period) == (32 * 500, Decimal("0.32"))
    assert agent.model_calls_outside_runs_today == 32  # every call it could have made
    assert_counters_equal_the_ledger(agent)
    lease.refresh_from_db()
    assert (lease.status, lease.charged_reservation) == (UsageStatus.SWEPT, True)
    assert (lease.input_tokens, lease.output_tokens) == (32 * 400, 32 * 100)
    assert charge_unsettled_calls(older_than=dt.timedelta(minutes=15)) == 0
    assert bot.refresh().tokens_today == 32 * 500  # charged once


def test_a_swept_lease_s_late_settlement_writes_no_call_and_charges_nothing(make_agent):
    # The sweeper took the lease's worker for dead while a call drawn from it was still
    # running; when that worker settles the lease after all, its calls' rows are not
    # written, so the ledger's rows still sum to the counters.
    bot = make_agent(**BUSY)
    lease = a_dead_workers_lease(bot)
    assert charge_unsettled_calls(older_than=dt.timedelta(minutes=15)) == 1
    now = timezone.now()
    late_call = {
        "record": uuid.uuid4(), "status": "ok", "http_status": 200, "input": 12, "cached": 0,
        "created": 0, "output": 14, "tokens": 26, "tool_calls": 0, "tool_names": "[]",
        "cost": Decimal("0.00017"), "charged": False, "latency": 3, "request_id": "",
        "model": "gpt-test", "detail": "{}", "agent": bot.agent.pk, "run": None,
        "lease": lease.pk, "provider": "openai", "streamed": False, "dropped": "[]",
        "reserved_tokens": 500, "reserved_output": 100, "reserved_cost": Decimal("0.01"),
        "reserved_tools": 0, "admitted": now,
    }  # fmt: skip
    params = settlement_params(
        lease.pk, status="lease", minute=0, unused=31, steps=1, tokens=26,
        cost=Decimal("0.00017"), tool_calls=0, now=now,
    )  # fmt: skip
    params["batch"] = batch_json([late_call], CALL_ROW_COLUMNS)

    assert settle_lease_sync(bot.agent.pk, params) is None  # settled already: by the sweeper
    assert not UsageRecord.objects.filter(pk=late_call["record"]).exists()
    assert bot.refresh().tokens_today == 32 * 500
    assert_counters_equal_the_ledger(bot.agent)
