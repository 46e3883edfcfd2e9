"""Calls that arrive together share one statement (gateway.batches), and a batch
admits and charges exactly what one statement per call would."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest
from django.db import connection
from django.utils import timezone

from agents.conversations import Run, RunStep
from agents.tokens import hash_token
from gateway import ledger as gl
from gateway.batches import Batcher
from gateway.models import UsageRecord, UsageStatus
from gateway.provider_standin import Reply
from gateway.providers import OPENAI, Usage
from gateway.tests.helpers import MESSAGES, start_run, wait_for_settlement

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="batches are PostgreSQL's (SQLite runs one call)"
)


# --- the batcher -----------------------------------------------------------------------------


async def turns() -> None:
    """Let every task that can run, run (a few turns of the event loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """A batch runner that records what it was sent and answers each item doubled."""

    def __init__(self, fail_on=None, error=ValueError) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on, self.error = fail_on, error

    async def __call__(self, items):
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_on in items:
            raise self.error("bad row")
        return [item * 2 for item in items]


def test_a_lone_call_goes_at_once_and_later_ones_wait_together_one_per_key():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, in_flight=1)
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await turns()
        assert run.batches == [[1]]  # sent alone, without waiting for company
        later = [
            asyncio.ensure_future(batcher.submit(key, value))
            for key, value in [("b", 2), ("c", 3), ("b", 4)]
        ]
        await turns()
        assert run.batches == [[1]]  # one statement in flight at a time
        run.release.set()
        results = await asyncio.gather(first, *later)
        return run.batches, results, batcher.largest

    batches, results, largest = asyncio.run(scenario())
    assert results == [2, 4, 6, 8]
    # b's second call waited for the batch after the one holding its first
    assert batches == [[1], [2, 3], [4]]
    assert largest == 2


def test_with_company_on_its_way_a_batch_waits_for_it():
    async def scenario():
        run = Recorder()
        run.release.set()
        coming = [True]
        # A linger no test reaches: only company, or its end, sends the batch.
        batcher = Batcher(run, in_flight=1, linger=3600, more_coming=lambda: coming[0])
        first = asyncio.ensure_future(batcher.submit("a", 1))
        second = asyncio.ensure_future(batcher.submit("b", 2))
        await turns()
        held = list(run.batches)
        coming[0] = False  # the last call in flight settles: nothing more to wait for
        third = asyncio.ensure_future(batcher.submit("c", 3))
        results = await asyncio.gather(first, second, third)
        return held, run.batches, results

    held, batches, results = asyncio.run(scenario())
    assert held == []
    assert batches == [[1, 2, 3]]
    assert results == [2, 4, 6]


def test_a_waiting_batch_goes_when_full_or_when_its_linger_is_over():
    async def scenario():
        run = Recorder()
        run.release.set()
        full = Batcher(run, max_batch=2, linger=3600, more_coming=lambda: True)
        pair = await asyncio.gather(full.submit("a", 1), full.submit("b", 2))
        brief = Batcher(run, linger=0.001, more_coming=lambda: True)
        alone = await asyncio.wait_for(brief.submit("c", 3), timeout=30)
        return run.batches, pair, alone

    assert asyncio.run(scenario()) == ([[1, 2], [3]], [2, 4], 6)


def test_with_nothing_else_in_flight_a_call_does_not_wait():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, linger=3600, more_coming=lambda: False)
        pending = asyncio.ensure_future(batcher.submit("a", 1))
        await turns()
        sent = list(run.batches)
        run.release.set()
        await pending
        return sent

    assert asyncio.run(scenario()) == [[1]]


def behind_a_blocker(run: Recorder, batcher: Batcher) -> tuple[list[list[int]], list]:
    """a:1 goes alone; b:2 and c:3, sent while it runs, go together next. What was
    sent, and each call's outcome (a result or its error)."""

    async def scenario():
        blocker = asyncio.ensure_future(batcher.submit("a", 1))
        await turns()
        others = [asyncio.ensure_future(batcher.submit(k, v)) for k, v in [("b", 2), ("c", 3)]]
        await turns()
        run.release.set()
        outcomes = await asyncio.gather(blocker, *others, return_exceptions=True)
        return run.batches, outcomes

    return asyncio.run(scenario())


def test_one_bad_call_does_not_fail_the_calls_batched_with_it():
    run = Recorder(fail_on=3)
    batches, outcomes = behind_a_blocker(run, Batcher(run, in_flight=1))
    assert outcomes[:2] == [2, 4]
    assert isinstance(outcomes[2], ValueError)
    assert batches == [[1], [2, 3], [2], [3]]  # the failed batch, then each alone


def test_a_database_outage_fails_the_whole_batch_without_retrying_each():
    run = Recorder(fail_on=2, error=ConnectionRefusedError)
    batches, outcomes = behind_a_blocker(run, Batcher(run, in_flight=1, outage=gl.OUTAGE))
    assert outcomes[0] == 2
    assert all(isinstance(each, ConnectionRefusedError) for each in outcomes[1:])
    assert batches == [[1], [2, 3]]


def test_a_result_whose_caller_was_cancelled_is_handed_to_the_orphan_handler():
    orphans: list[tuple[int, int]] = []

    async def orphaned(item, result) -> None:
        orphans.append((item, result))

    async def scenario():
        run = Recorder()
        batcher = Batcher(run, in_flight=1, orphaned=orphaned)
        sent = asyncio.ensure_future(batcher.submit("a", 1))
        await turns()
        queued = asyncio.ensure_future(batcher.submit("b", 2))
        await turns()
        sent.cancel()  # after it went out: its result must not be lost
        queued.cancel()  # before it went out: it is never sent
        run.release.set()
        await asyncio.sleep(0.01)
        return run.batches

    assert asyncio.run(scenario()) == [[1]]
    assert orphans == [(1, 2)]


def test_a_failing_orphan_handler_does_not_keep_the_other_calls_waiting():
    async def orphaned(item, result) -> None:
        raise ConnectionRefusedError("the database went away meanwhile")

    async def scenario():
        gates = [asyncio.Event(), asyncio.Event()]
        sent: list[list[int]] = []

        async def run(items):
            gate = gates[len(sent)]
            sent.append(list(items))
            await gate.wait()
            return [item * 2 for item in items]

        batcher = Batcher(run, in_flight=1, orphaned=orphaned)
        blocker = asyncio.ensure_future(batcher.submit("a", 1))
        await turns()
        gone = asyncio.ensure_future(batcher.submit("b", 2))
        kept = asyncio.ensure_future(batcher.submit("c", 3))
        await turns()
        gates[0].set()
        await turns()
        assert sent == [[1], [2, 3]]  # b and c are in flight together
        gone.cancel()
        gates[1].set()
        return await asyncio.wait_for(asyncio.gather(blocker, kept), timeout=1)

    assert asyncio.run(scenario()) == [2, 6]


# --- the batch statements --------------------------------------------------------------------


def _call():
    return OPENAI.prepare(
        {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 50},
        raw_size=80,
        max_tokens=1000,
        allowed=frozenset(),
    )


def _admit_params(bot, call):
    token_hash = hash_token(bot.token)
    config = gl.config_sync(token_hash)
    price = gl.price_sync("openai", call.model)
    return gl.admit_params(
        token_hash=token_hash,
        config=config,
        call=call,
        provider="openai",
        cost=price.worst_cost(call),
        now=timezone.now(),
    )


def _outcome(tokens_out: int) -> gl.Outcome:
    usage = Usage(input_tokens=20, output_tokens=tokens_out, final=True)
    price = gl.price_sync("openai", "gpt-test")
    return gl.Outcome(status=UsageStatus.OK, http_status=200, usage=usage, cost=price.cost(usage))


def _on_a_ledger(work):
    """Run ``work(ledger)`` on a fresh event loop's PgLedger, then close its pools."""

    async def scenario():
        ledger = gl.ledger()
        try:
            return await work(ledger)
        finally:
            await gl.close_loop_ledger()

    return asyncio.run(scenario())


def _state(bot) -> tuple:
    agent = bot.refresh()
    run = Run.objects.filter(agent=agent).first()
    records = list(
        UsageRecord.objects.filter(agent=agent).values_list(
            "status", "input_tokens", "output_tokens", "cost", "charged_reservation"
        )
    )
    return (
        agent.tokens_today,
        agent.cost_this_period,
        agent.reserved_tokens,
        agent.reserved_cost,
        agent.rate_count,
        agent.model_calls_outside_runs_today,
        run and (run.model_calls, run.reserved_model_calls, run.tokens, run.cost),
        run and RunStep.objects.filter(run=run, kind="model_call").count(),
        records,
    )


@postgresql_only
def test_a_batch_admits_and_charges_as_one_statement_per_call_would(make_agent):
    call = _call()
    # Pairs of twins, in a run and outside one: one twin of each goes alone, the
    # other in one batch with the rest.
    alone = [make_agent(), make_agent(), make_agent()]
    together = [make_agent(), make_agent(), make_agent()]
    for bot in (alone[0], together[0], alone[1], together[1]):
        start_run(bot.agent)
    spent = [40, 7, 0]
    outcomes = [_outcome(out) for out in spent]
    alone_params = [_admit_params(bot, call) for bot in alone]
    batch = [_admit_params(bot, call) for bot in together]
    pending = UsageRecord.objects.filter(status=UsageStatus.PENDING).count

    def settle(reservation, outcome):
        return gl.settle_params(reservation, outcome, model=call.model, now=timezone.now())

    async def admit_and_settle(ledger):
        for params, outcome in zip(alone_params, outcomes, strict=True):
            [verdict] = await ledger._admit_batch([params])
            reservation = gl.reservation_for(params, verdict, call)
            await ledger._settle_batch([(reservation, settle(reservation, outcome))])
        verdicts = await ledger._admit_batch(batch)
        assert [v.code for v in verdicts] == ["ok"] * 3
        pairs = zip(batch, verdicts, strict=True)
        reservations = [gl.reservation_for(p, v, call) for p, v in pairs]
        assert await asyncio.to_thread(pending) == 3
        states = await ledger._settle_batch(
            [(r, settle(r, o)) for r, o in zip(reservations, outcomes, strict=True)]
        )
        return [(s.agent_id, s.tokens_today) for s in states]

    states = _on_a_ledger(admit_and_settle)
    assert states == [(bot.agent.pk, 20 + out) for bot, out in zip(together, spent, strict=True)]
    for single, batched in zip(alone, together, strict=True):
        assert _state(batched) == _state(single)
    assert _state(together[0])[0] == 60  # and the twins did spend


@postgresql_only
def test_each_call_in_a_batch_gets_its_own_verdict(make_agent):
    call = _call()
    fine, paused, twice = make_agent(), make_agent(status="paused"), make_agent()
    unknown = dict(_admit_params(fine, call), hash="0" * 64, record=gl.uuid.uuid4())
    second = dict(_admit_params(twice, call), record=gl.uuid.uuid4())
    batch = [
        _admit_params(fine, call),
        _admit_params(paused, call),
        unknown,
        _admit_params(twice, call),
        second,
    ]

    async def admit(ledger):
        return await ledger._admit_batch(batch)

    verdicts = _on_a_ledger(admit)
    assert verdicts[2] is None  # an unknown token: a 401 for that call alone
    # the batcher never puts one agent twice in a batch; the statement refuses it anyway
    assert [v.code for v in verdicts if v] == ["ok", "not_running", "ok", "busy"]
    assert UsageRecord.objects.filter(status=UsageStatus.PENDING).count() == 2
    assert twice.refresh().reserved_tokens == call.worst_case_tokens  # reserved once


@postgresql_only
def test_many_agents_calling_at_once_are_each_charged_exactly(gateway, fake_providers, make_agent):
    bots = [make_agent(max_requests_per_minute=1000) for _ in range(12)]
    for bot in bots[::2]:
        start_run(bot.agent)
    calls_each = 4
    fake_providers.enqueue(
        *[
            Reply(input_tokens=30, output_tokens=10 + n % 7, delay_before_headers_s=0.005)
            for n in range(len(bots) * calls_each)
        ]
    )

    async def agent_loop(bot) -> None:
        client = openai.AsyncOpenAI(
            base_url=f"{gateway}/gateway/openai/v1", api_key=bot.token, max_retries=0
        )
        try:
            for _ in range(calls_each):
                await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        finally:
            await client.close()

    async def all_agents() -> None:
        await asyncio.gather(*(agent_loop(bot) for bot in bots))

    asyncio.run(all_agents())
    for bot in bots:
        wait_for_settlement(bot.agent, count=calls_each)
        agent = bot.refresh()
        records = UsageRecord.objects.filter(agent=agent)
        assert {r.status for r in records} == {UsageStatus.OK}
        assert agent.tokens_today == sum(r.input_tokens + r.output_tokens for r in records)
        assert agent.cost_this_period == sum((r.cost for r in records), Decimal(0))
        assert (agent.reserved_tokens, agent.reserved_cost, agent.reserved_tool_calls) == (0, 0, 0)
        run = Run.objects.filter(agent=agent).first()
        if run:
            assert (run.model_calls, run.reserved_model_calls) == (calls_each, 0)
            assert RunStep.objects.filter(run=run, kind="model_call").count() == calls_each
        else:
            assert agent.model_calls_outside_runs_today == calls_each
    largest = max(ledger._admissions.largest for ledger in gl._ledgers.values())
    assert largest > 1  # the calls really did share statements
    # Every admitted call was counted out again: no settlement waits for a ghost.
    assert all(not ledger._unsettled for ledger in gl._ledgers.values())
