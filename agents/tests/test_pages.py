"""The agent's pages with Django's test client: what they show, what each form does,
and that nobody but the owner reaches them (404, as the API answers)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.conversations import Message, MessageRole, Run, RunStatus, RunStep, Schedule
from agents.models import Agent, AgentEvent, AgentStatus
from agents.tests.conftest import make_running
from safer_claw.accounts.tests.helpers import sign_in

S = AgentStatus
pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(alice) -> Client:
    client = Client()
    sign_in(client, alice)
    return client


def page(agent: Agent, name: str = "agent", **kwargs) -> str:
    return reverse(f"dashboard:{name}", kwargs={"agent_id": agent.pk, **kwargs})


def test_the_page_shows_status_spending_conversation_and_steps(owner, agent):
    live = make_running(agent, tokens_today=1500, tokens_day=timezone.now().date())
    Agent.objects.filter(pk=agent.pk).update(cost_this_period=Decimal("2.5"))
    message = Message.objects.create(agent=agent, role=MessageRole.OWNER, content="Hi <b>there</b>")
    run = Run.objects.create(agent=agent, message=message, status=RunStatus.DONE, tokens=42)
    RunStep.objects.create(
        run=run,
        kind="model_call",
        name="gpt-test",
        detail={"input_tokens": 30, "output_tokens": 12, "cost": "0.000042", "status": "ok"},
    )
    RunStep.objects.create(
        run=run,
        kind="tool_call",
        name="notes.save",
        detail={"arguments_sha256": "ab" * 32, "outcome": "ok", "latency_ms": 3},
    )
    Message.objects.create(agent=agent, role=MessageRole.AGENT, content="Hello!", in_reply_to=run)

    html = owner.get(page(live.agent)).content.decode()
    assert 'id="agent-status" class="status status-running"' in html
    assert "1,500</strong> of 200,000" in html  # tokens today of the daily cap
    assert "$2.50</strong> of $10.00" in html
    assert "Hi &lt;b&gt;there&lt;/b&gt;" in html  # escaped, never markup
    assert "Hello!" in html
    assert "gpt-test" in html
    assert "42" in html
    assert "$0.000042" in html
    assert "notes.save" in html
    assert "abababababab" in html
    assert live.token not in html
    assert "sk-test-provider-key" not in html
    assert str(agent.kill_secret) not in html  # only when asked for


def test_another_users_agent_is_404_on_every_page(bob, agent):
    client = Client()
    sign_in(client, bob)
    for name in ("agent", "agent-live", "agent-delete"):
        assert client.get(page(agent, name)).status_code == 404, name
    for name in (
        "agent-message",
        "agent-start",
        "agent-stop",
        "agent-kill-switch",
        "agent-schedule-add",
        "agent-delete",
    ):
        assert (
            client.post(page(agent, name), {"content": "x", "name": agent.name}).status_code == 404
        )
    schedule = Schedule.objects.create(agent=agent, cron="0 7 * * *", prompt="p")
    assert (
        client.post(page(agent, "agent-schedule-delete", schedule_id=schedule.pk)).status_code
        == 404
    )
    assert Schedule.objects.filter(pk=schedule.pk).exists()
    agent.refresh_from_db()
    assert agent.status == S.PENDING_PAYMENT


def test_signed_out_is_sent_to_sign_in(client, agent):
    response = client.get(page(agent))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_every_form_needs_csrf(alice, agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    make_running(agent)
    assert client.post(page(agent, "agent-message"), {"content": "hi"}).status_code == 403
    assert client.post(reverse("dashboard:stop-all")).status_code == 403
    assert not Message.objects.filter(agent=agent).exists()


def test_chat_posts_a_message_and_answers_json_to_the_script(owner, agent):
    make_running(agent)
    response = owner.post(
        page(agent, "agent-message"),
        {"content": "What time is it?"},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 201
    assert response.json() == {"ok": True, "error": None}
    message = Message.objects.get(agent=agent)
    assert message.role == MessageRole.OWNER
    assert message.run.status == RunStatus.QUEUED

    live = owner.get(page(agent, "agent-live")).json()
    assert live["status"] == "running"
    assert "What time is it?" in live["conversation"]
    again = owner.get(page(agent, "agent-live"), {"version": live["version"]}).json()
    assert "conversation" not in again  # nothing changed: nothing re-sent


def test_chat_to_a_killed_agent_says_why_in_words(owner, agent):
    Agent.objects.filter(pk=agent.pk).update(status=S.KILLED)
    response = owner.post(
        page(agent, "agent-message"), {"content": "hi"}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "agent is killed; start it to send it messages"


def test_schedules_are_added_and_deleted(owner, agent):
    response = owner.post(
        page(agent, "agent-schedule-add"), {"cron": "30 7 * * 1-5", "prompt": "Summarise my day"}
    )
    assert response.status_code == 302
    schedule = Schedule.objects.get(agent=agent)
    assert schedule.next_fire_at is not None
    assert "30 7 * * 1-5" in owner.get(page(agent)).content.decode()

    bad = owner.post(page(agent, "agent-schedule-add"), {"cron": "every day", "prompt": "x"})
    assert bad.status_code == 400
    assert Schedule.objects.filter(agent=agent).count() == 1

    owner.post(page(agent, "agent-schedule-delete", schedule_id=schedule.pk))
    assert not Schedule.objects.filter(agent=agent).exists()


def test_the_kill_switch_is_shown_only_when_asked_and_can_be_rotated(owner, agent):
    secret = Agent.objects.get(pk=agent.pk).kill_secret
    assert owner.get(page(agent, "agent-kill-switch")).status_code == 405  # never a GET
    response = owner.post(page(agent, "agent-kill-switch"), {"action": "reveal"})
    html = response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert f"SECRET=&#x27;{secret}&#x27;" in html
    assert f"AGENT_ID=&#x27;{agent.pk}&#x27;" in html
    assert "http://testserver/webhooks/agent-kill/$AGENT_ID" in html
    assert "v2=$sig" in html

    rotated = owner.post(page(agent, "agent-kill-switch"), {"action": "rotate"}).content.decode()
    new_secret = Agent.objects.get(pk=agent.pk).kill_secret
    assert new_secret != secret
    assert new_secret in rotated
    assert secret not in rotated
    assert AgentEvent.objects.filter(agent=agent, reason="kill secret rotated").exists()


def test_delete_asks_for_the_agents_name(owner, agent):
    form = owner.get(page(agent, "agent-delete")).content.decode()
    assert "Delete helper?" in form
    wrong = owner.post(page(agent, "agent-delete"), {"name": "other"})
    assert wrong.status_code == 200
    assert "That is not the name of this agent (helper)" in wrong.content.decode()
    assert Agent.objects.get(pk=agent.pk).status != S.DELETED

    done = owner.post(page(agent, "agent-delete"), {"name": "helper"})
    assert done.status_code == 302
    assert done["Location"] == reverse("dashboard:home")
    assert Agent.objects.get(pk=agent.pk).status == S.DELETED
    assert owner.get(page(agent)).status_code == 404  # a deleted agent has no page


def test_stop_all_confirms_then_stops_every_running_agent_of_the_owner_only(owner, alice, bob):
    from agents.services import create_agent

    mine = [create_agent(owner=alice, name=f"a{i}", provider_key="sk-test-k") for i in range(2)]
    waiting = create_agent(owner=alice, name="unpaid", provider_key="sk-test-k")
    theirs = create_agent(owner=bob, name="b", provider_key="sk-test-k")
    for agent in (*mine, theirs):
        make_running(agent)

    confirm = owner.get(reverse("dashboard:stop-all")).content.decode()
    assert "a0" in confirm
    assert "a1" in confirm
    assert "unpaid" not in confirm
    response = owner.post(reverse("dashboard:stop-all"))
    assert response.status_code == 302
    assert {a.status for a in Agent.objects.filter(pk__in=[a.pk for a in mine])} == {S.KILLED}
    assert Agent.objects.get(pk=waiting.pk).status == S.PENDING_PAYMENT
    assert Agent.objects.get(pk=theirs.pk).status == S.RUNNING
    assert (
        "Stopped all your agents (a0, a1)" in owner.get(reverse("dashboard:home")).content.decode()
    )


def test_every_page_has_the_stop_all_control(owner, agent):
    for url in (reverse("dashboard:home"), page(agent), reverse("account_api_tokens")):
        assert 'href="/dashboard/stop-all/"' in owner.get(url).content.decode(), url


def test_a_cap_pause_says_which_cap_and_when_it_resets(owner, agent):
    now = timezone.now()
    Agent.objects.filter(pk=agent.pk).update(
        status=S.PAUSED,
        status_reason="daily token cap of 200,000 tokens reached",
        tokens_today=200_000,
        tokens_day=now.date(),
    )
    html = owner.get(page(agent)).content.decode()
    tomorrow = (now + dt.timedelta(days=1)).strftime("%-d %b %Y")
    assert "Paused: the tokens today reached its cap." in html
    assert re.search(rf"It resets {tomorrow}, 00:00 UTC", html), html


def test_the_30_day_chart_draws_each_days_tokens_and_the_caps(owner, agent):
    from gateway.models import UsageRecord, UsageStatus

    now = timezone.now()
    for days_ago, tokens in ((0, 1000), (3, 150_000)):
        record = UsageRecord.objects.create(
            agent=agent,
            provider="openai",
            model="gpt-test",
            status=UsageStatus.OK,
            input_tokens=tokens,
            cost=Decimal("1.25"),
            settled_at=now,
        )
        UsageRecord.objects.filter(pk=record.pk).update(
            created_at=now - dt.timedelta(days=days_ago)
        )
    html = owner.get(page(agent)).content.decode()
    today, earlier = now.date(), now.date() - dt.timedelta(days=3)
    assert f"<title>{today.isoformat()}: 1,000 tokens</title>" in html
    assert f"<title>{earlier.isoformat()}: 150,000 tokens</title>" in html
    assert html.count('class="bar"') == 30  # a bar for each day, zero or not
    assert "daily cap 200,000" in html
    assert "monthly cap $10.00" in html
    assert "$2.50 in 30 days." in html
    assert "151,000 tokens in 30 days; the most in a day: 150,000." in html


def test_settings_save_instructions_and_time_zone_and_refuse_a_bad_zone(owner, agent):
    response = owner.post(
        page(agent, "agent-settings"),
        {"instructions": "Answer in French.", "time_zone": "Europe/Paris"},
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert (agent.instructions, agent.time_zone) == ("Answer in French.", "Europe/Paris")

    bad = owner.post(page(agent, "agent-settings"), {"instructions": "", "time_zone": "Mars/Base"})
    assert bad.status_code == 400
    assert "Use an IANA time zone name" in bad.content.decode()
    agent.refresh_from_db()
    assert agent.time_zone == "Europe/Paris"


def test_spending_is_broken_down_by_model_and_by_chat_or_schedule(owner, agent):
    from gateway.models import UsageRecord, UsageStatus

    schedule = Schedule.objects.create(agent=agent, cron="0 7 * * *", prompt="p")
    chat = Message.objects.create(agent=agent, role=MessageRole.OWNER, content="hi")
    fired = Message.objects.create(
        agent=agent, role=MessageRole.SCHEDULE, content="p", schedule=schedule
    )
    now = timezone.now()
    for message, model, tokens, cost in (
        (chat, "gpt-a", 100, "0.5"),
        (chat, "gpt-b", 50, "0.25"),
        (fired, "gpt-a", 10, "0.125"),
    ):
        run = Run.objects.get_or_create(agent=agent, message=message)[0]
        UsageRecord.objects.create(
            agent=agent,
            provider="openai",
            model=model,
            status=UsageStatus.OK,
            run=run,
            input_tokens=tokens,
            cost=Decimal(cost),
            settled_at=now,
        )
    html = owner.get(page(agent)).content.decode()
    rows = re.findall(
        r"<tr><td>([^<]+)</td><td>(\d+)</td><td>([\d,]+)</td><td>\$([\d.]+)</td></tr>", html
    )
    assert rows == [
        ("gpt-a", "2", "110", "0.62"),
        ("gpt-b", "1", "50", "0.25"),
        ("chat", "2", "150", "0.75"),
        ("schedule 0 7 * * *", "1", "10", "0.12"),
    ]


def test_light_use_is_charted_to_its_own_scale_and_a_tiny_cost_still_shows(owner, agent):
    from gateway.models import UsageRecord, UsageStatus

    UsageRecord.objects.create(
        agent=agent,
        provider="openai",
        model="gpt-test",
        status=UsageStatus.OK,
        input_tokens=26,
        cost=Decimal("0.000026"),
        settled_at=timezone.now(),
    )
    Agent.objects.filter(pk=agent.pk).update(cost_this_period=Decimal("0.000026"))
    html = owner.get(page(agent)).content.decode()
    assert 'class="cap"' not in html  # both caps far above 26 tokens and $0.000026
    assert "Daily cap 200,000: far above this chart, which is scaled to your use." in html
    assert 'height="121.6" class="bar"' in html  # 26 tokens: 1/1.25 of the 152 px plot
    assert "$0.000026</strong> of $10.00" in html
    assert "$0.000026 in 30 days." in html
