"""The stored grant: sealed at rest, refreshed before expiry, broken on
invalid_grant, revoked at Google on disconnect."""

from __future__ import annotations

import time

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse

from agents.models import AgentEvent
from agents.tools import ToolError, registered_tool
from integrations.google import tasks
from integrations.google.models import GoogleIntegration, IntegrationStatus, PendingRevocation
from integrations.google.tests.google import CALENDAR, event
from safer_claw.encryption import FORMAT

pytestmark = pytest.mark.django_db


def raw(model, pk, column: str = "token") -> str:
    """The column as stored, read with SQL that bypasses the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s",  # noqa: S608
            [model._meta.pk.get_db_prep_value(pk, connection)],
        )
        return cursor.fetchone()[0]


def test_tokens_scopes_and_expiry_are_sealed_in_the_database(connect, agent):
    connect("calendar")
    integration = GoogleIntegration.objects.get(agent=agent)
    token = integration.token

    stored = raw(GoogleIntegration, integration.pk)

    assert stored.startswith(f"{FORMAT}:")
    for secret in (token["access_token"], token["refresh_token"], CALENDAR, "calendar"):
        assert secret not in stored
    assert str(token["expires_at"]) not in stored
    assert token["access_token"] not in repr(integration) + str(integration)


def test_a_token_about_to_expire_is_refreshed_before_the_call(connect, agent, google, perform):
    google.control("settings", {"access_token_expire_seconds": 120})  # under the 300 s margin
    connect("calendar")
    google.control("settings", {"access_token_expire_seconds": 3599})
    before = GoogleIntegration.objects.get(agent=agent)
    google.serve(calendar=[event("e1", "Stand-up", "2026-11-28T09:00:00Z", "2026-11-28T09:15:00Z")])

    result = perform(
        "calendar.list_events",
        agent,
        time_min="2026-11-28T00:00:00Z",
        time_max="2026-11-29T00:00:00Z",
    )

    assert [e["summary"] for e in result.data["events"]] == ["Stand-up"]
    kinds = [(r["kind"], r.get("grant_type")) for r in google.log()]
    assert kinds == [("token", "refresh_token"), ("api", None)]  # refreshed first
    (refresh,) = google.log("token")
    assert refresh["status"] == 200
    after = GoogleIntegration.objects.get(agent=agent)
    assert after.token["access_token"] != before.token["access_token"]
    assert after.token["expires_at"] > time.time() + 3000
    assert after.last_refreshed_at > before.last_refreshed_at
    # Google sent no refresh token with the new access token: the stored one is
    # kept, and Google still honours it.
    assert after.token["refresh_token"] == before.token["refresh_token"]
    assert google.refresh_at_google(after.token["refresh_token"]).status_code == 200


def test_a_fresh_token_is_used_without_a_refresh(connect, agent, google, perform):
    connect("calendar")
    google.serve(calendar=[])

    perform("calendar.list_events", agent)

    assert google.log("token") == []
    assert len(google.log("api")) == 1


def test_beat_refreshes_tokens_that_would_expire_before_its_next_round(connect, agent, google, bob):
    google.control("settings", {"access_token_expire_seconds": 500})  # > margin, < margin + 300 s
    connect("calendar")
    google.control("settings", {"access_token_expire_seconds": 3599})
    before = GoogleIntegration.objects.get(agent=agent).token

    tasks.refresh_google_tokens()

    after = GoogleIntegration.objects.get(agent=agent).token
    assert after["access_token"] != before["access_token"]
    assert after["expires_at"] > before["expires_at"]
    tokens_seen = len(google.log("token"))
    tasks.refresh_google_tokens()  # now fresh: left alone
    assert len(google.log("token")) == tokens_seen


def test_invalid_grant_marks_the_integration_broken_and_tells_the_owner(
    connect, agent, google, perform, owner, alice, django_capture_on_commit_callbacks
):
    google.control("settings", {"access_token_expire_seconds": 60})
    connect("calendar")
    google.control("revoke-grants")  # Alice removed Safer-Claw at myaccount.google.com

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(ToolError, match="reconnect") as refused,
    ):
        perform("calendar.list_events", agent)

    assert refused.value.permanent
    integration = GoogleIntegration.objects.get(agent=agent)
    assert integration.status == IntegrationStatus.BROKEN
    assert "invalid_grant" in integration.broken_reason
    assert google.log("api") == []  # no API call with a token Google refused
    event_ = AgentEvent.objects.filter(agent=agent, source="integrations").last()
    assert "broken" in event_.reason
    assert event_.actor is None
    (message,) = mail.outbox
    assert message.to == [alice.email]
    assert "Reconnect Google" in message.subject
    # Its tools are off, with a reason the agent can read …
    reason = registered_tool("calendar.list_events").unavailable_reason(agent)
    assert reason
    assert "reconnect" in reason
    # … and the page offers to reconnect.
    page = owner.get(reverse("integrations:agent", args=[agent.pk])).content.decode()
    assert 'data-state="broken"' in page
    assert "Reconnect Google Calendar" in page
    # A second refusal tells nobody again.
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ToolError):
        perform("calendar.list_events", agent)
    assert len(mail.outbox) == 1


def test_a_token_google_refuses_before_its_expiry_leads_to_a_refresh(
    connect, agent, google, perform
):
    connect("calendar")  # good for an hour
    google.serve()  # (clears the log)
    google.control("revoke-grants")

    with pytest.raises(ToolError, match="reconnect"):
        perform("calendar.list_events", agent)

    # 401 from the API, then the refresh that tells the grant is gone.
    assert [(r["kind"], r.get("grant_type")) for r in google.log()] == [
        ("api", None),
        ("token", "refresh_token"),
    ]
    assert GoogleIntegration.objects.get(agent=agent).status == IntegrationStatus.BROKEN


def test_reconnecting_mends_a_broken_integration(connect, agent, google, perform):
    google.control("settings", {"access_token_expire_seconds": 60})
    connect("calendar")
    google.control("settings", {"access_token_expire_seconds": 3599})
    google.control("revoke-grants")
    with pytest.raises(ToolError):
        perform("calendar.list_events", agent)

    connect("calendar")

    integration = GoogleIntegration.objects.get(agent=agent)
    assert integration.status == IntegrationStatus.CONNECTED
    assert not integration.broken_reason
    assert perform("calendar.list_events", agent).data["events"] == []


def test_disconnect_revokes_at_google_then_deletes_the_tokens(connect, owner, agent, google, alice):
    connect("calendar")
    token = GoogleIntegration.objects.get(agent=agent).token

    response = owner.post(reverse("integrations:google-disconnect", args=[agent.pk]), follow=True)

    assert b"revoked at Google" in response.content
    assert not GoogleIntegration.objects.filter(agent=agent).exists()
    assert not PendingRevocation.objects.exists()
    (revoke,) = google.log("revoke")
    assert revoke["status"] == 200
    # Google now refuses both tokens.
    refused = google.refresh_at_google(token["refresh_token"])
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    assert (
        google.api_get("/calendar/v3/calendars/primary/events", token["access_token"]).status_code
        == 401
    )
    event_ = AgentEvent.objects.filter(agent=agent, source="integrations").last()
    assert event_.actor == alice
    assert "revoked at Google" in event_.reason
    assert token["refresh_token"] not in event_.reason


def test_disconnect_while_google_is_unreachable_deletes_and_retries_the_revoke(
    connect, owner, agent, google, django_capture_on_commit_callbacks
):
    connect("calendar")
    token = GoogleIntegration.objects.get(agent=agent).token
    google.control("options", {"revoke_down": True})

    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = owner.post(
            reverse("integrations:google-disconnect", args=[agent.pk]), follow=True
        )

    assert b"we keep trying in the background" in response.content
    assert not GoogleIntegration.objects.filter(agent=agent).exists()
    assert 'data-state="not_connected"' in response.content.decode()
    pending = PendingRevocation.objects.get(agent=agent)
    assert token["refresh_token"] not in raw(PendingRevocation, pending.pk)
    assert len(queued) == 1  # the retry task, enqueued once the disconnect commits
    assert google.refresh_at_google(token["refresh_token"]).status_code == 200  # not revoked yet

    google.control("options", {"revoke_down": False})
    tasks.revoke_google_token(str(pending.pk))

    assert not PendingRevocation.objects.exists()
    assert google.refresh_at_google(token["refresh_token"]).json()["error"] == "invalid_grant"
    assert "revoked (after a retry)" in AgentEvent.objects.filter(agent=agent).last().reason


def test_beat_retries_revocations_whose_task_was_lost(connect, owner, agent, google):
    connect("calendar")
    token = GoogleIntegration.objects.get(agent=agent).token
    google.control("options", {"revoke_down": True})
    owner.post(reverse("integrations:google-disconnect", args=[agent.pk]))
    PendingRevocation.objects.update(
        last_attempt_at=PendingRevocation.objects.get().created_at.replace(year=2020)
    )
    google.control("options", {"revoke_down": False})

    tasks.retry_google_revocations()

    assert not PendingRevocation.objects.exists()
    assert google.refresh_at_google(token["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_deleted_agent_keeps_no_google_grant(connect, agent, google):
    connect("gmail")
    token = GoogleIntegration.objects.get(agent=agent).token
    type(agent).objects.filter(pk=agent.pk).update(status="deleted")

    tasks.refresh_google_tokens()

    assert not GoogleIntegration.objects.filter(agent=agent).exists()
    assert google.refresh_at_google(token["refresh_token"]).json()["error"] == "invalid_grant"
    assert "agent was deleted" in AgentEvent.objects.filter(agent=agent).last().reason
