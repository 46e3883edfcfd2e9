"""The kill switch: one signed HTTP call stops an agent (DESIGN.md, trust boundary 6).

``handle_kill_call`` verifies a webhook call, kills the agent and writes the
audit row; ``kill_agent`` is the kill itself, shared with the ``kill_agent``
command and the admin. Both need only the database and the droplet: no Redis,
no Celery. A droplet that cannot be reached gets a Celery retry if the broker
answers, and reconciliation (which stops the running container of any agent
that is not `running`) if it does not.

A call is ``X-SaferClaw-Timestamp: <unix seconds>`` and
``X-SaferClaw-Signature: v2=<hex HMAC-SHA256(secret, "<timestamp>.<agent id>.<raw body>")>``,
where the agent id is the one in the URL, exactly as sent. The secret is an
operator secret (``settings.KILL_SWITCH_SECRET``, a list during a rotation),
tried first, or the agent's own kill secret. ``v1=`` over
``"<timestamp>.<raw body>"`` names no agent, so it is accepted only while
``settings.KILL_SWITCH_ACCEPT_V1`` is on and only with a body whose
``agent_id`` is the URL's agent.

The order is what makes it fast: the signature is checked in memory (an
owner's secret needs one query first), then one statement records the
signature and revokes the agent's tokens, so the gateway refuses the agent's
next call before anything slower (the state change, its event, Docker, the
audit row) happens: ``start_kill_call`` is that part, ``finish_kill_call`` the rest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents.models import (
    ALLOWED_TRANSITIONS,
    Agent,
    AgentEvent,
    AgentStatus,
    AgentToken,
    InvalidTransition,
    KillSwitchCall,
    UsedKillSignature,
)
from agents.services import _free_slot
from agents.tokens import revoke_agent_tokens
from droplets.containers import remove_container, stop_container
from droplets.docker_client import DropletError, DropletUnreachable
from droplets.models import DropletStatus
from droplets.services import record_droplet_failure
from safer_claw import boundary
from safer_claw.api import error_body
from safer_claw.encryption import DecryptionError

logger = logging.getLogger(__name__)
S = AgentStatus

TIMESTAMP_HEADER = "X-SaferClaw-Timestamp"
SIGNATURE_HEADER = "X-SaferClaw-Signature"
MAX_SKEW_SECONDS = 300
# A signature passes the timestamp check for at most 600 s after it is first
# seen (its timestamp may be up to 300 s ahead, and stays valid 300 s after
# that), so its replay-store row may go once it is that old.
REPLAY_WINDOW = dt.timedelta(seconds=2 * MAX_SKEW_SECONDS)
BROKER_TIMEOUT_SECONDS = 2
# Beyond a gateway lease's life, the time a call drawn from one at its last moment
# takes to be sent on (a few milliseconds on a worker that is not stalled).
LEASE_MARGIN_SECONDS = 0.1

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^(v1|v2)=([0-9a-fA-F]{64})$")
# An id no agent has (uuid4s never look like this): an unknown or malformed id is
# looked up, and its "secret" decrypted, under it, so it costs what a known one does.
_DECOY_AGENT_ID = uuid.UUID("00000000-0000-4000-8000-00000000dec0")

STOP, REMOVE = "stop", "remove"
# What happened to the container.
STOPPED, REMOVED, NO_CONTAINER, PENDING = "stopped", "removed", "none", "pending"


class KillRefused(Exception):
    """A kill switch call that must change nothing; answered with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, *, agent_pk: uuid.UUID | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.agent_pk = agent_pk  # the agent it named, when known (for the audit row)


@dataclass(frozen=True)
class KillOutcome:
    agent: Agent
    newly_killed: bool
    container: str  # STOPPED, REMOVED, NO_CONTAINER, or PENDING (droplet unreachable)


@dataclass(frozen=True)
class KillCallResult:
    status: int
    body: dict[str, Any]
    deprecated: bool = False  # accepted with a v1 signature


# --- The kill ----------------------------------------------------------------------------


def kill_agent(
    *,
    agent: Agent,
    remove: bool = False,
    actor: Any = None,
    source: str = "kill_switch",
    reason: str = "killed",
    outlast_leases: bool = True,
) -> KillOutcome:
    """Revoke the agent's tokens and mark it `killed`, then stop (or remove) its container.

    The tokens are revoked first, in a statement of their own that waits for
    no lock on the agent's row, so the gateway refuses the agent's very next
    call even while something else holds the row or the droplet never
    answers. The state change follows (revoking again, in case a deploy issued
    a token meanwhile), then the container gets a short grace period before
    SIGKILL; with ``remove`` it is removed and the droplet slot freed. If the
    droplet cannot be reached the kill still stands: the container step is
    retried by a Celery task (or, if the broker is down too, by
    reconciliation) and the outcome is PENDING. Raises InvalidTransition when
    the agent cannot be killed (deleted); its tokens are revoked regardless.
    Killing a killed agent again retries the container step.

    It returns GATEWAY_LEASE_SECONDS after the revocation at the earliest: the gateway
    admits a busy agent's calls from leases taken for that long (gateway.leases), so
    by then no lease taken before the revocation admits another call. A caller killing
    several agents passes ``outlast_leases=False`` and waits once (``outlast_leases``).
    """
    revoke_agent_tokens(agent=agent)
    leases_over = time.monotonic() + lease_life()
    with transaction.atomic():
        revoke_agent_tokens(agent=agent)
        newly_killed = agent.transition(S.KILLED, actor=actor, source=source, reason=reason)
    try:
        container = _stop_or_remove(agent, remove=remove, skip_unreachable=True)
    except DropletError as exc:
        if isinstance(exc, DropletUnreachable):
            record_droplet_failure(agent.droplet, str(exc))
        logger.warning(
            "kill: agent %s is killed; its container is not stopped yet: %s", agent.pk, exc
        )
        container = PENDING
    if container == PENDING:
        _enqueue_container_retry(agent, remove=remove)
    if outlast_leases:
        time.sleep(max(leases_over - time.monotonic(), 0))
    return KillOutcome(agent=agent, newly_killed=newly_killed, container=container)


def finish_kill(*, agent_id: str, remove: bool) -> str:
    """Stop (or remove) a killed agent's container; the retry task's service.

    Does nothing once the agent has been started again. Raises DropletError.
    """
    agent = Agent.objects.select_related("droplet").filter(pk=agent_id).first()
    if agent is None or agent.status != S.KILLED:
        return NO_CONTAINER
    return _stop_or_remove(agent, remove=remove, skip_unreachable=False)


def lease_life() -> float:
    """How long after an agent's tokens are revoked a gateway lease may still admit a call."""
    return settings.GATEWAY_LEASE_SECONDS + LEASE_MARGIN_SECONDS


def kill_agents_of_owner(*, owner: Any, actor: Any, remove: bool = False) -> list[KillOutcome]:
    """Kill every agent of ``owner`` that can be killed (the operator's big red button)."""
    killable = [status for status, allowed in ALLOWED_TRANSITIONS.items() if S.KILLED in allowed]
    outcomes = []
    for agent in Agent.objects.filter(owner=owner, status__in=killable).select_related("droplet"):
        try:
            outcomes.append(
                kill_agent(
                    agent=agent,
                    remove=remove,
                    actor=actor,
                    source="operator",
                    reason="killed by an operator (all agents of this user)",
                    outlast_leases=False,
                )
            )
        except InvalidTransition:
            continue  # deleted (or killed) meanwhile: nothing left to kill
    time.sleep(lease_life())  # once, after the last revocation, for them all
    return outcomes


def _stop_or_remove(agent: Agent, *, remove: bool, skip_unreachable: bool) -> str:
    if not agent.droplet_id:
        return NO_CONTAINER
    droplet = agent.droplet
    if skip_unreachable and droplet.status == DropletStatus.UNREACHABLE:
        # Known down: answer now rather than after a connection timeout.
        return PENDING
    try:
        if remove:
            if agent.container_id:
                remove_container(droplet, agent.container_id)
            _free_slot(agent, droplet.pk)
            return REMOVED
        if not agent.container_id:
            return NO_CONTAINER
        stop_container(
            droplet, agent.container_id, timeout=settings.KILL_SWITCH_STOP_TIMEOUT_SECONDS
        )
    except DropletError as exc:
        if not exc.not_found:
            raise
        return NO_CONTAINER  # removed behind our back: nothing left to stop
    return STOPPED


def _enqueue_container_retry(agent: Agent, *, remove: bool) -> bool:
    """Queue ``retry_stop_container``, never letting a dead broker hold up the kill."""
    from agents.tasks import retry_stop_container  # the task module imports this one

    app = retry_stop_container.app
    if app.conf.task_always_eager:
        # Eager mode would run every retry inline, before the kill answers.
        logger.warning("kill: no broker (eager mode); reconciliation will stop %s", agent.pk)
        return False
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS
            )
            retry_stop_container.apply_async(
                (str(agent.pk), remove), connection=connection, retry=False
            )
    except Exception as exc:  # any broker failure: the kill has happened regardless
        logger.warning(
            "kill: could not queue the container retry for %s (%s); "
            "reconciliation will stop it when the droplet answers",
            agent.pk,
            exc,
        )
        return False
    return True


# --- The owner's kill secret ---------------------------------------------------------------


def rotate_kill_secret(*, agent: Agent, actor: Any) -> str:
    """Give the agent a new kill secret and return it (the only time it is shown)."""
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        row = Agent.objects.select_for_update().get(pk=agent.pk)
        row.kill_secret = secret
        row.save(update_fields=["kill_secret", "updated_at"])
        AgentEvent.objects.create(
            agent=row, actor=actor, source="owner", reason="kill secret rotated"
        )
    agent.kill_secret = secret
    return secret


# --- How to call it ---------------------------------------------------------------------

# A shell recipe that signs and sends a kill with v2 (bash, openssl, curl), for
# the README and the dashboard. AGENT_ID and SECRET come from the environment.
_CURL_RECIPE = """\
body='{"action": "stop"}'     # or {"action": "remove"}
ts=$(date +%s)
sig=$(printf '%s.%s.%s' "$ts" "$AGENT_ID" "$body" |
    openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //')
curl -sS -X POST "BASE_URL/webhooks/agent-kill/$AGENT_ID" \\
    -H "X-SaferClaw-Timestamp: $ts" -H "X-SaferClaw-Signature: v2=$sig" \\
    -H "Content-Type: application/json" --data-binary "$body"
"""


def curl_recipe(*, base_url: str) -> str:
    """The kill call for ``base_url`` as a bash/openssl/curl recipe (README, dashboard)."""
    return _CURL_RECIPE.replace("BASE_URL", base_url.rstrip("/"))


# --- The webhook call ----------------------------------------------------------------------


@dataclass(frozen=True)
class KillCall:
    """One call to the kill switch webhook, as a front received it."""

    agent_id: str  # the URL's path segment, as sent
    method: str
    headers: Mapping[str, str]  # case-insensitive
    body: bytes  # at most KILL_SWITCH_MAX_BODY_BYTES + 1 bytes: the front stops reading there
    source_ip: str | None


@dataclass(frozen=True)
class _Verified:
    agent_pk: uuid.UUID
    signature: str
    version: str  # "v1" or "v2"
    signed_with: str  # "operator" or "owner"
    action: str


@dataclass(frozen=True)
class StartedKill:
    """What ``start_kill_call`` decided: verified (tokens revoked), or refused."""

    call: KillCall
    verified: _Verified | None = None
    refused: KillRefused | None = None


def handle_kill_call(call: KillCall) -> KillCallResult:
    """Verify a kill switch call, kill the agent if it is genuine, and audit it.

    A refused call changes nothing but its audit row.
    """
    return finish_kill_call(start_kill_call(call))


def start_kill_call(call: KillCall) -> StartedKill:
    """Verify the call and, if it is genuine, record its signature and revoke the agent's tokens.

    The part the gateway's refusal waits for: an operator's signature is
    checked in memory, an owner's after one query for the agent's secret; then
    one statement claims the signature and revokes. Writes nothing else, not
    even for a refused call: ``finish_kill_call`` does the rest.
    """
    try:
        verified = _verify(call)
        _claim_signature_and_revoke(verified)
    except KillRefused as refused:
        return StartedKill(call=call, refused=refused)
    return StartedKill(call=call, verified=verified)


def finish_kill_call(started: StartedKill) -> KillCallResult:
    """Mark the agent killed and stop its container (or audit the refusal); the answer."""
    call = started.call
    ip = _valid_ip(call.source_ip)
    if started.refused is not None:
        refused = started.refused
        named = Agent.objects.filter(pk=refused.agent_pk).first() if refused.agent_pk else None
        _audit(call, ip, refused.status, refused.code, agent=named)
        return KillCallResult(refused.status, error_body(refused.code, refused.message))
    verified = started.verified
    assert verified is not None  # a started kill is either refused or verified
    if verified.version == "v1":
        logger.warning(
            "kill switch: agent %s killed with a deprecated v1 signature; sign with v2",
            verified.agent_pk,
        )
    agent = Agent.objects.select_related("droplet", "owner").filter(pk=verified.agent_pk).first()
    try:
        if agent is None:  # removed from the database meanwhile
            raise InvalidTransition(S.DELETED, S.KILLED)
        outcome = kill_agent(
            agent=agent,
            remove=verified.action == REMOVE,
            actor=agent.owner if verified.signed_with == "owner" else None,
            source="kill_switch",
            reason=f"kill switch ({verified.signed_with} secret) from {ip or '?'}",
        )
    except InvalidTransition as exc:  # deleted meanwhile: its tokens are revoked regardless
        _audit(call, ip, 409, "invalid_state", agent=agent)
        return KillCallResult(409, error_body("invalid_state", str(exc)))
    status = 202 if outcome.container == PENDING else 200
    _audit(
        call,
        ip,
        status,
        "killed" if outcome.newly_killed else "already_killed",
        agent=agent,
        signed_with=verified.signed_with,
        action=verified.action,
        accepted=True,
    )
    return KillCallResult(
        status,
        {
            "agent": str(outcome.agent.pk),
            "status": outcome.agent.status,
            "token_revoked": True,
            "container": outcome.container,
            "already_killed": not outcome.newly_killed,
        },
        deprecated=verified.version == "v1",
    )


def _verify(call: KillCall) -> _Verified:
    body = call.body
    if call.method != "POST":
        raise KillRefused(405, "method_not_allowed", "The kill switch takes POST only.")
    if len(body) > settings.KILL_SWITCH_MAX_BODY_BYTES:
        raise KillRefused(413, "body_too_large", "The body is too large for a kill call.")
    timestamp, version, signature = _parse_headers(call.headers)
    if abs(time.time() - int(timestamp)) > MAX_SKEW_SECONDS:
        raise KillRefused(
            401, "stale_timestamp", f"The timestamp is more than {MAX_SKEW_SECONDS} s off."
        )
    signed = f"{timestamp}.{call.agent_id}." if version == "v2" else f"{timestamp}."
    agent_pk, signed_with = _authenticate(call.agent_id, signed.encode() + body, signature)
    action = _parse_action(body, agent_pk, must_name_agent=version == "v1")
    return _Verified(
        agent_pk=agent_pk,
        signature=signature,
        version=version,
        signed_with=signed_with,
        action=action,
    )


def _parse_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """(timestamp, signature version, hex signature) from the call's headers."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise KillRefused(
            401,
            "missing_signature",
            f"Both {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required.",
        )
    match = _SIGNATURE.match(signature.strip())
    if not _TIMESTAMP.match(timestamp.strip()) or not match:
        raise KillRefused(
            401,
            "malformed_signature",
            f"{TIMESTAMP_HEADER} must be unix seconds and {SIGNATURE_HEADER} v2=<64 hex digits>.",
        )
    version, digest = match.groups()
    if version == "v1" and not settings.KILL_SWITCH_ACCEPT_V1:
        raise KillRefused(
            401,
            "unsupported_signature_version",
            'v1 signatures are no longer accepted: sign "<timestamp>.<agent id>.<body>" (v2).',
        )
    return timestamp.strip(), version, digest.lower()


def _authenticate(agent_id: str, message: bytes, signature: str) -> tuple[uuid.UUID, str]:
    """The named agent's id and which secret signed; an unknown agent is a bad signature.

    Operator secrets are tried first and need no database: an operator's kill
    never depends on the agent's own secret opening, and the agent's existence
    is checked when the signature is claimed. Otherwise the agent's secret is
    read and opened (a random one stands in for an unknown agent or a secret
    that cannot be opened), so neither the answer nor its timing tells a
    caller without an operator secret whether the agent exists.
    """
    try:
        agent_pk: uuid.UUID | None = uuid.UUID(agent_id)
    except ValueError:
        agent_pk = None
    operator_ok = False
    for secret in settings.KILL_SWITCH_SECRET:
        operator_ok |= hmac.compare_digest(_sign(secret, message), signature)
    if operator_ok and agent_pk is not None:
        return agent_pk, "operator"
    agent = Agent.objects.only("id", "kill_secret").filter(pk=agent_pk or _DECOY_AGENT_ID).first()
    owner_ok = hmac.compare_digest(_sign(_owner_secret(agent), message), signature)
    if agent is None or not owner_ok:
        raise KillRefused(
            401,
            "invalid_signature",
            "The signature does not match.",
            agent_pk=agent.pk if agent else None,
        )
    return agent.pk, "owner"


def _owner_secret(agent: Agent | None) -> str:
    """The agent's kill secret, or a random one that matches nothing.

    A secret that cannot be opened (its key left the ring too early, a backup
    restored under other keys) counts as no secret: the owner's kill fails
    like a bad signature, and an operator's kill is unaffected.
    """
    if agent is not None:
        try:
            secret = agent.kill_secret
        except DecryptionError as exc:
            logger.error(
                "kill switch: the kill secret of agent %s cannot be opened (%s); "
                "only operator secrets can kill it until its owner rotates it",
                agent.pk,
                exc,
            )
        else:
            if secret:
                return secret
    # Seal and open a random secret, as a real agent's is opened; it matches nothing.
    decoy = Agent(id=_DECOY_AGENT_ID)
    field = Agent._meta.get_field("kill_secret")
    return field.open(decoy, field.seal_for(decoy, secrets.token_urlsafe(32)))


def _sign(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _parse_action(body: bytes, agent_pk: uuid.UUID, *, must_name_agent: bool) -> str:
    """The action from an (optional) JSON body ``{"action": "stop"|"remove"}``.

    A body may also name ``agent_id``; it must then be this agent. A v1
    signature does not cover the agent id, so with v1 the body must name it.
    """
    data: Any = {}
    if body.strip():
        try:
            data = boundary.loads(body)
        except boundary.BadInput:
            data = None
    if not isinstance(data, dict):
        raise KillRefused(400, "invalid_body", "The body must be a JSON object.", agent_pk=agent_pk)
    named = data.get("agent_id")
    if named is None and must_name_agent:
        raise KillRefused(
            401,
            "unbound_signature",
            'A v1 signature does not name the agent: put "agent_id" in the body, or sign with v2.',
            agent_pk=agent_pk,
        )
    if named is not None and str(named).strip().lower() != str(agent_pk):
        raise KillRefused(400, "agent_mismatch", "The body names another agent.", agent_pk=agent_pk)
    action = data.get("action", STOP)
    if action not in (STOP, REMOVE):
        raise KillRefused(
            400, "invalid_action", 'action must be "stop" or "remove".', agent_pk=agent_pk
        )
    return action


# Reads the agent's state, records the signature for it and, only if the agent
# exists, is not deleted and has not seen this signature, revokes its tokens:
# one statement, one round trip, one transaction (PostgreSQL).
_CLAIM_AND_REVOKE_SQL = f"""
WITH target AS (
    SELECT id, status FROM {Agent._meta.db_table} WHERE id = %(agent)s
), claimed AS (
    INSERT INTO {UsedKillSignature._meta.db_table} (agent_id, signature, created_at)
    SELECT id, %(signature)s, %(now)s FROM target WHERE status <> %(deleted)s
    ON CONFLICT DO NOTHING
    RETURNING 1
), revoked AS (
    UPDATE {AgentToken._meta.db_table} SET revoked_at = %(now)s
    WHERE agent_id = %(agent)s AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM claimed)
    RETURNING 1
)
SELECT (SELECT status FROM target), (SELECT count(*) FROM claimed), (SELECT count(*) FROM revoked)
"""  # noqa: S608 - table names are constants; every value is a parameter


def _claim_signature_and_revoke(verified: _Verified) -> None:
    """Record the signature as used for this agent, then revoke the agent's tokens.

    Refuses, revoking nothing, a signature this agent has seen before (the
    replay store), an agent that does not exist (as a bad signature) or is
    deleted. Both writes happen in one transaction: on PostgreSQL in one
    statement, as this is what the gateway's refusal waits for.
    """
    pk, now = verified.agent_pk, timezone.now()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIM_AND_REVOKE_SQL,
                {"agent": pk, "signature": verified.signature, "now": now, "deleted": S.DELETED},
            )
            status, claimed, _ = cursor.fetchone()
    else:
        status = Agent.objects.filter(pk=pk).values_list("status", flat=True).first()
        claimed = 0
        if status not in (None, S.DELETED):
            try:
                with transaction.atomic():
                    UsedKillSignature.objects.create(
                        agent_id=pk, signature=verified.signature, created_at=now
                    )
                    AgentToken.objects.filter(agent_id=pk, revoked_at__isnull=True).update(
                        revoked_at=now
                    )
                claimed = 1
            except IntegrityError:
                pass
    if status is None:
        raise KillRefused(401, "invalid_signature", "The signature does not match.")
    if status == S.DELETED:
        raise KillRefused(409, "invalid_state", "The agent is deleted.", agent_pk=pk)
    if not claimed:
        raise KillRefused(
            409, "replayed_signature", "This signature has been used already.", agent_pk=pk
        )


def forget_expired_signatures() -> int:
    """Drop replay-store rows whose signatures can no longer pass the timestamp check."""
    cutoff = timezone.now() - REPLAY_WINDOW
    return UsedKillSignature.objects.filter(created_at__lt=cutoff).delete()[0]


def _audit(
    call: KillCall,
    ip: str | None,
    status: int,
    outcome: str,
    *,
    agent: Agent | None = None,
    signed_with: str = "",
    action: str = "",
    accepted: bool = False,
) -> None:
    """The call's audit row and log line; also where the replay store is pruned."""
    KillSwitchCall.objects.create(
        agent_id_given=call.agent_id[:64],
        agent=agent,
        source_ip=ip,
        method=call.method[:10],
        accepted=accepted,
        status_code=status,
        outcome=outcome,
        signed_with=signed_with,
        action=action,
    )
    forget_expired_signatures()
    logger.log(
        logging.WARNING if accepted else logging.INFO,
        "kill switch: %s %s agent=%r ip=%s outcome=%s signed_with=%s action=%s",
        "accepted" if accepted else "refused",
        status,
        call.agent_id[:64],
        ip,
        outcome,
        signed_with or "-",
        action or "-",
    )


def _valid_ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(value or ""))
    except ValueError:
        return None
