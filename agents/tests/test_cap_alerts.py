"""Cap alerts: a mail at 50 %, 80 % and 100 % of each cap, once per threshold per period."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.cap_alerts import send_cap_alerts
from agents.models import Agent, AgentStatus, CapAlert

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()


def use(agent: Agent, *, tokens: int = 0, cost: str = "0", day: dt.date = TODAY) -> None:
    Agent.objects.filter(pk=agent.pk).update(
        status=AgentStatus.RUNNING,
        daily_token_cap=1000,
        monthly_cost_cap=Decimal("10"),
        tokens_today=tokens,
        tokens_day=day,
        cost_this_period=Decimal(cost),
    )


def test_each_threshold_is_mailed_once_per_period(agent, mailoutbox):
    use(agent, tokens=499)
    assert send_cap_alerts(now=NOW) == 0
    use(agent, tokens=820)
    assert send_cap_alerts(now=NOW, site_url="https://sc.example") == 2  # 50 % and 80 %
    subjects = sorted(mail.subject for mail in mailoutbox)
    assert subjects == [
        "Safer-Claw: helper has used 50 % of its daily token cap",
        "Safer-Claw: helper has used 80 % of its daily token cap",
    ]
    assert "820 of its 1,000 tokens today (UTC)" in mailoutbox[0].body
    assert f"https://sc.example/dashboard/agents/{agent.pk}/" in mailoutbox[0].body
    assert mailoutbox[0].to == ["alice@example.com"]

    assert send_cap_alerts(now=NOW) == 0  # nothing new: nothing sent again
    use(agent, tokens=1000, cost="8.5")
    assert send_cap_alerts(now=NOW) == 3  # tokens 100 %; cost 50 % and 80 %
    assert CapAlert.objects.filter(agent=agent).count() == 5

    tomorrow = NOW + dt.timedelta(days=1)  # a new UTC day: the token alerts start afresh
    use(agent, tokens=600, cost="8.5", day=tomorrow.date())
    assert send_cap_alerts(now=tomorrow) == 1
    assert mailoutbox[-1].subject.endswith("50 % of its daily token cap")


def test_a_new_billing_period_alerts_again_and_stopped_agents_are_left_alone(agent, mailoutbox):
    use(agent, cost="5")
    assert send_cap_alerts(now=NOW) == 1
    Agent.objects.filter(pk=agent.pk).update(period_started_at=timezone.now())
    assert send_cap_alerts(now=NOW) == 1  # the same share of a new period's cap
    Agent.objects.filter(pk=agent.pk).update(
        status=AgentStatus.STOPPED, period_started_at=NOW - dt.timedelta(days=40)
    )
    assert send_cap_alerts(now=NOW) == 0
    assert len(mailoutbox) == 2
