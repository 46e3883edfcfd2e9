"""Connecting an agent to Google, keeping its token fresh, and letting it go.

Every change of a connection (connected, not granted, broken, disconnected,
revoked late) is written to the agent's audit trail as an ``AgentEvent`` with
source ``integrations``; no event, log line or error message holds a token.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.models import Agent, AgentEvent, AgentStatus
from integrations.google import client
from integrations.google.capabilities import Capability, google_configured, offered
from integrations.google.client import GoogleFailed, InvalidGrant
from integrations.google.models import GoogleIntegration, IntegrationStatus, PendingRevocation

logger = logging.getLogger(__name__)
SOURCE = "integrations"


class Unavailable(Exception):
    """The agent may not use this capability now; the message says why, for the
    agent and its owner (no secret in it)."""


class IntegrationBroken(Unavailable):
    pass


def _audit(*, agent: Agent, actor: Any, reason: str) -> None:
    AgentEvent.objects.create(agent=agent, actor=actor, source=SOURCE, reason=reason)


def _same_secret(a: str | None, b: str | None) -> bool:
    return hmac.compare_digest((a or "").encode(), (b or "").encode())


# --- Who may use what --------------------------------------------------------------------


def _availability(
    *, agent: Agent, capability: Capability
) -> tuple[GoogleIntegration | None, Unavailable | None]:
    if not google_configured():
        return None, Unavailable("Google integrations are not set up on this Safer-Claw.")
    if not offered(capability):
        return None, Unavailable(
            f"{capability.label} is switched off by the operator of this Safer-Claw."
        )
    integration = GoogleIntegration.objects.filter(agent=agent).first()
    if integration is None:
        return None, Unavailable(
            f"{capability.label} is not connected; the owner can connect it on the "
            "agent's integrations page."
        )
    if integration.status == IntegrationStatus.BROKEN:
        return integration, IntegrationBroken(
            "The Google connection is broken (Google no longer accepts it); the owner "
            "must reconnect it on the agent's integrations page."
        )
    if not integration.grants(capability):
        return integration, Unavailable(
            f"{capability.label} access was not granted; the owner can connect it on the "
            "agent's integrations page."
        )
    return integration, None


def unavailable_reason(*, agent: Agent, capability: Capability) -> str | None:
    """None if the agent may use ``capability`` now, else why not."""
    refusal = _availability(agent=agent, capability=capability)[1]
    return None if refusal is None else str(refusal)


def usable_integration(*, agent: Agent, capability: Capability) -> GoogleIntegration:
    """The agent's connection, if it may use ``capability``; else raises Unavailable."""
    integration, refusal = _availability(agent=agent, capability=capability)
    if refusal is not None:
        raise refusal
    assert integration is not None
    return integration


# --- Connecting ----------------------------------------------------------------------------


def connect_url(
    *, agent: Agent, capability: Capability, state: str, code_verifier: str, redirect_uri: str
) -> str:
    """Google's consent page for one capability of ``agent`` (raises Unavailable when
    the operator does not offer it)."""
    if not google_configured():
        raise Unavailable("Google integrations are not set up on this Safer-Claw.")
    if not offered(capability):
        raise Unavailable(f"{capability.label} is switched off by the operator.")
    integration = GoogleIntegration.objects.filter(agent=agent).first()
    # Google returns a refresh token only on a consent screen it showed: ask
    # for one whenever there is no working one to keep.
    needs_consent = (
        integration is None
        or integration.status == IntegrationStatus.BROKEN
        or not integration.refresh_token
    )
    return client.authorization_url(
        scopes=[capability.scope],
        state=state,
        code_verifier=code_verifier,
        redirect_uri=redirect_uri,
        consent=needs_consent,
    )


def complete_connect(
    *,
    agent: Agent,
    actor: Any,
    capability: Capability,
    code: str,
    code_verifier: str,
    redirect_uri: str,
) -> bool:
    """Exchange the code and store the grant; returns whether ``capability`` was granted.

    The token answer's ``scope`` is what the owner granted (incremental: with what
    was granted before); a scope asked for and missing is recorded as not granted.
    """
    token = client.exchange_code(code=code, code_verifier=code_verifier, redirect_uri=redirect_uri)
    # RFC 6749 5.1: no scope in the answer means the scope asked for.
    granted = set((token["scope"] or capability.scope).split())
    with transaction.atomic():
        integration, _ = GoogleIntegration.objects.select_for_update().get_or_create(agent=agent)
        previous_refresh_token, previous_scopes = (
            integration.refresh_token,
            integration.granted_scopes,
        )
        integration.token = {
            **token,
            "refresh_token": token["refresh_token"] or previous_refresh_token,
            "scope": " ".join(sorted(granted)),
        }
        if previous_refresh_token and token["refresh_token"] and not previous_scopes <= granted:
            # A new grant that does not hold the old one's scopes comes from
            # another Google account (the same account's would, incrementally):
            # the old grant would be left alive at Google with no one holding
            # it, so it is revoked. (Revoking within one account would end the
            # new grant too, which is why this is not done whenever the token changes.)
            _revoke_later(agent=agent, token=previous_refresh_token, error="replaced")
            _audit(
                agent=agent,
                actor=actor,
                reason="Google: another account was connected; the previous account's "
                "access is revoked in the background",
            )
        not_granted = set(integration.not_granted_scopes) - granted
        if capability.scope not in granted:
            not_granted.add(capability.scope)
        integration.not_granted_scopes = sorted(not_granted)
        integration.status = IntegrationStatus.CONNECTED
        integration.broken_reason = ""
        integration.last_refreshed_at = timezone.now()
        integration.save()
        was_granted = capability.scope in granted
        _audit(
            agent=agent,
            actor=actor,
            reason=(
                f"Google: {capability.label} connected"
                if was_granted
                else f"Google: {capability.label} not granted by the owner"
            )
            + f" (granted now: {_labels(integration)})",
        )
    return was_granted


def record_not_granted(*, agent: Agent, actor: Any, capability: Capability, error: str) -> None:
    """The owner declined (or Google refused) the consent for ``capability``."""
    with transaction.atomic():
        integration = GoogleIntegration.objects.select_for_update().filter(agent=agent).first()
        if integration is not None and capability.scope not in integration.not_granted_scopes:
            integration.not_granted_scopes = sorted(
                {*integration.not_granted_scopes, capability.scope}
            )
            integration.save(update_fields=["not_granted_scopes", "updated_at"])
        _audit(
            agent=agent,
            actor=actor,
            reason=f"Google: {capability.label} not granted by the owner ({_error_code(error)})",
        )


def _error_code(error: str) -> str:
    """An OAuth error code from the query string, or a neutral word: it is recorded."""
    return error if re.fullmatch(r"[a-z_]{1,40}", error) else "error"


def _labels(integration: GoogleIntegration) -> str:
    return ", ".join(c.label for c in integration.granted_capabilities) or "nothing"


# --- Keeping the token fresh --------------------------------------------------------------


def refresh_integration(*, integration: GoogleIntegration) -> GoogleIntegration:
    """A new access token for ``integration``; returns the row as it now is.

    Google's ``invalid_grant`` (the owner revoked access, changed their password,
    or the token expired) marks the connection broken and raises IntegrationBroken.
    A refresh that loses a race with a reconnect or a disconnect leaves their
    result alone.
    """
    used = integration.refresh_token
    if not used:
        mark_broken(
            integration=integration, refresh_token=None, reason="Google gave no refresh token"
        )
        raise IntegrationBroken(
            "The Google connection has no refresh token; the owner must reconnect it."
        )
    try:
        token = client.refresh_access_token(refresh_token=used)
    except InvalidGrant as exc:
        mark_broken(integration=integration, refresh_token=used, reason=str(exc))
        raise IntegrationBroken(
            "Google no longer accepts this connection; the owner must reconnect it."
        ) from exc
    with transaction.atomic():
        row = GoogleIntegration.objects.select_for_update().filter(pk=integration.pk).first()
        if row is None:
            raise Unavailable("Google was disconnected.")
        if row.status != IntegrationStatus.CONNECTED:
            raise IntegrationBroken(
                "Google no longer accepts this connection; the owner must reconnect it."
            )
        if not _same_secret(row.refresh_token, used):
            return row  # reconnected meanwhile: the new grant's token stands
        row.token = {
            **token,
            # Google keeps its refresh tokens: one missing from the answer is kept.
            "refresh_token": token["refresh_token"] or used,
            "scope": token["scope"] or row.token.get("scope"),
        }
        row.last_refreshed_at = timezone.now()
        row.save(update_fields=["token", "last_refreshed_at", "updated_at"])
    return row


def fresh_integration(*, integration: GoogleIntegration, margin: float) -> GoogleIntegration:
    """``integration`` with an access token good for at least ``margin`` seconds."""
    if integration.expires_within(margin):
        return refresh_integration(integration=integration)
    return integration


def mark_broken(*, integration: GoogleIntegration, refresh_token: str | None, reason: str) -> bool:
    """Mark the connection broken (its tools stop) and tell the owner, once.

    Only if it still holds the refresh token that failed: a reconnect made
    meanwhile is not broken by an old token's refusal.
    """
    with transaction.atomic():
        row = GoogleIntegration.objects.select_for_update().filter(pk=integration.pk).first()
        if (
            row is None
            or row.status == IntegrationStatus.BROKEN
            or not _same_secret(row.refresh_token, refresh_token)
        ):
            return False
        row.status = IntegrationStatus.BROKEN
        row.broken_reason = reason[:200]
        row.save(update_fields=["status", "broken_reason", "updated_at"])
        _audit(
            agent=row.agent,
            actor=None,
            reason=f"Google connection broken ({row.broken_reason}); the owner must reconnect",
        )
        agent_id = str(row.agent_id)
        transaction.on_commit(lambda: _tasks().mail_reconnect_needed.delay(agent_id))
    logger.warning("Google connection of agent %s broken: %s", agent_id, reason)
    return True


def refresh_expiring(*, within: float) -> dict[str, int]:
    """Refresh every connected integration whose token expires within ``within``
    seconds (beat); returns counts. A transient failure is left for the next round."""
    counts = {"refreshed": 0, "broken": 0, "failed": 0}
    for integration in GoogleIntegration.objects.filter(
        status=IntegrationStatus.CONNECTED
    ).iterator():
        if not integration.expires_within(within):
            continue
        try:
            refresh_integration(integration=integration)
        except IntegrationBroken:
            counts["broken"] += 1
        except (GoogleFailed, Unavailable) as exc:
            counts["failed"] += 1
            logger.warning("refresh of Google for agent %s failed: %s", integration.agent_id, exc)
        else:
            counts["refreshed"] += 1
    return counts


# --- Letting go -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Disconnected:
    was_connected: bool
    revoked: bool  # False: Google could not be reached; a task keeps trying


def disconnect_google(*, agent: Agent, actor: Any, why: str = "by the owner") -> Disconnected:
    """Revoke the agent's Google grant at Google, then delete its tokens.

    If Google cannot be reached the tokens are deleted all the same (no tool
    can use them) and the revoke is retried in the background from a sealed copy.
    """
    integration = GoogleIntegration.objects.filter(agent=agent).first()
    if integration is None:
        return Disconnected(was_connected=False, revoked=True)
    token = integration.refresh_token or integration.access_token
    failure: GoogleFailed | None = None
    try:
        client.revoke_token(token=token)
    except GoogleFailed as exc:
        failure = exc
    with transaction.atomic():
        deleted, _ = GoogleIntegration.objects.filter(pk=integration.pk).delete()
        if not deleted:
            return Disconnected(was_connected=False, revoked=failure is None)
        if failure is None:
            _audit(
                agent=agent,
                actor=actor,
                reason=f"Google disconnected {why}: access revoked at Google",
            )
        else:
            _revoke_later(agent=agent, token=token, error=str(failure), attempts=1)
            _audit(
                agent=agent,
                actor=actor,
                reason=f"Google disconnected {why}: tokens deleted; Google could not be "
                "reached, so the revoke is retried in the background",
            )
    return Disconnected(was_connected=True, revoked=failure is None)


def _revoke_later(*, agent: Agent, token: str, error: str, attempts: int = 0) -> None:
    """Keep ``token`` sealed until a Celery task has revoked it at Google
    (within the caller's transaction; the task is queued once it commits)."""
    pending = PendingRevocation(agent=agent, attempts=attempts, last_error=error[:200])
    pending.last_attempt_at = timezone.now()
    pending.token = token
    pending.save()
    pending_id = str(pending.pk)
    transaction.on_commit(lambda: _tasks().revoke_google_token.delay(pending_id))


def retry_revocation(*, pending: PendingRevocation) -> None:
    """Try the revoke again; raises GoogleFailed when Google still does not take it."""
    try:
        client.revoke_token(token=pending.token)
    except GoogleFailed as exc:
        PendingRevocation.objects.filter(pk=pending.pk).update(
            attempts=F("attempts") + 1, last_error=str(exc)[:200], last_attempt_at=timezone.now()
        )
        raise
    if PendingRevocation.objects.filter(pk=pending.pk).delete()[0]:
        _audit(agent=pending.agent, actor=None, reason="Google access revoked (after a retry)")


def disconnect_deleted_agents() -> int:
    """A deleted agent keeps no Google grant: revoke and delete what is left."""
    count = 0
    for integration in GoogleIntegration.objects.filter(
        agent__status=AgentStatus.DELETED
    ).select_related("agent"):
        disconnect_google(agent=integration.agent, actor=None, why="because the agent was deleted")
        count += 1
    return count


def _tasks() -> Any:
    # Tasks call these services; imported late to keep the import graph one-way.
    from integrations.google import tasks

    return tasks
