"""Agent writes that span rows or leave the process."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from agents.models import (
    ALLOWED_TRANSITIONS,
    Agent,
    AgentEvent,
    AgentStatus,
    AIProvider,
    InvalidTransition,
    PaymentRequired,
)
from agents.tokens import issue_agent_token, revoke_agent_tokens
from droplets.containers import (
    ContainerSpec,
    remove_container,
    run_container,
    start_container,
    stop_container,
)
from droplets.docker_client import DropletError, DropletUnreachable
from droplets.models import Droplet
from droplets.placement import NoCapacity, release_slot, select_droplet_for_new_container
from droplets.services import record_droplet_failure

logger = logging.getLogger(__name__)


@transaction.atomic
def create_agent(
    *,
    owner: Any,
    name: str,
    provider: str = AIProvider.OPENAI,
    provider_key: str | None = None,
    actor: Any = None,
    source: str = "owner",
    **limits: Any,
) -> Agent:
    """Create an agent awaiting payment; raises ValidationError on bad input.

    ``limits`` are Agent fields such as ``cpu_limit`` or ``daily_token_cap``;
    anything not given takes the model's default.
    """
    agent = Agent(owner=owner, name=name, ai_provider=provider, **limits)
    agent.ai_api_key = provider_key or None
    agent.kill_secret = secrets.token_urlsafe(32)
    agent.full_clean()
    agent.save()
    AgentEvent.objects.create(
        agent=agent, actor=actor, source=source, to_status=agent.status, reason="created"
    )
    return agent


# --- Lifecycle ------------------------------------------------------------------------
# Each service moves the agent through DESIGN.md's lifecycle with
# Agent.transition (row lock + AgentEvent); Docker calls happen outside the lock.

S = AgentStatus
# Agents whose container (existing or being made) holds a slot on their droplet.
HOLDS_SLOT = (S.PROVISIONING, S.RUNNING, S.STOPPED, S.PAUSED, S.KILLED)
LEASE_KEY_MASK = (1 << 63) - 1  # advisory lock keys are signed 64-bit


class DeployFailed(Exception):
    """The agent could not be deployed; ``permanent`` says whether to retry."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def container_name_for(agent: Agent) -> str:
    return f"saferclaw-agent-{agent.id}"


def container_spec_for(agent: Agent, *, droplet: Droplet, token: str) -> ContainerSpec:
    """The container an agent runs in. Its environment holds no long-lived secret:
    only its own revocable token and where the control plane is."""
    control_plane = droplet.control_plane_url or settings.CONTROL_PLANE_URL
    return ContainerSpec(
        name=container_name_for(agent),
        image=settings.RUNTIME_IMAGE,
        environment={"AGENT_TOKEN": token, "CONTROL_PLANE_URL": control_plane},
        extra_hosts=_pinned_host(control_plane),
        labels={"saferclaw.agent": str(agent.id), "saferclaw.owner": str(agent.owner_id)},
        cpus=float(agent.cpu_limit),
        memory_bytes=agent.memory_limit_bytes,
        pids_limit=agent.pids_limit,
        read_only_root=agent.read_only_root,
        drop_all_capabilities=agent.drop_all_capabilities,
    )


def _pinned_host(url: str) -> dict[str, str]:
    """The control plane's name resolved here, for the container's /etc/hosts.

    The droplet firewall drops agents' DNS (a channel out), so a container
    reaches the control plane by a name only through this entry.
    """
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return {}  # already an address
    except ValueError:
        pass
    try:
        return {host: socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]}
    except OSError as exc:
        raise DeployFailed(
            f"cannot resolve the control plane's name {host!r}: {exc}", permanent=False
        ) from exc


def _free_slot(agent: Agent, droplet_id) -> None:
    """Detach the agent from its droplet and give the slot back, once."""
    # One transaction: a process killed between the two would leave the slot
    # counted with no agent on it, and a rerun would not give it back.
    with transaction.atomic():
        released = Agent.objects.filter(pk=agent.pk, droplet_id=droplet_id).update(
            droplet=None, container_id=""
        )
        if released:
            release_slot(droplet_id)
    agent.droplet_id, agent.container_id = None, ""


def deploy_agent(
    *, agent: Agent, actor: Any = None, source: str = "system", mark_failed: bool = True
) -> Agent:
    """Place the agent on a droplet and run its container; returns it `running`.

    Idempotent: an agent already running, or being deployed by someone else,
    is left alone. On failure the slot is given back and, with ``mark_failed``,
    the agent ends `failed` with the reason; without it (a task that will
    retry) it stays `provisioning`. Raises DeployFailed either way, and
    PaymentRequired when nothing pays for the agent (before anything is placed,
    or, if its payment lapsed meanwhile, once its new container is removed).
    """
    with deploy_lease(agent.pk) as ours:
        agent.refresh_from_db()
        if not ours or agent.status == S.RUNNING:
            return agent  # deployed, or being deployed by a process that is alive
        take_over_dead_deploy(agent)
        return _deploy(agent, actor=actor, source=source, mark_failed=mark_failed)


def _deploy(agent: Agent, *, actor: Any, source: str, mark_failed: bool) -> Agent:
    agent.transition(S.PROVISIONING, actor=actor, source=source, reason="deploying")
    tried: set = set()
    unreachable = ""  # the last droplet that did not answer, for the reason shown
    while True:
        try:
            droplet = _reserve_and_claim(agent, exclude=tried)
        except NoCapacity as exc:
            reason = f"{exc} ({unreachable})" if unreachable else str(exc)
            return _deploy_failed(agent, reason, permanent=False, mark_failed=mark_failed)
        if droplet is None:  # another deployment of this agent is under way
            agent.refresh_from_db()
            return agent
        token = issue_agent_token(agent=agent)
        try:
            container_id = run_container(
                droplet, container_spec_for(agent, droplet=droplet, token=token)
            )
        except DeployFailed as exc:
            _free_slot(agent, droplet.pk)
            return _deploy_failed(agent, str(exc), permanent=exc.permanent, mark_failed=mark_failed)
        except DropletError as exc:
            _free_slot(agent, droplet.pk)
            if isinstance(exc, DropletUnreachable):
                record_droplet_failure(droplet, str(exc))
                tried.add(droplet.pk)
                unreachable = str(exc)
                continue  # another droplet may take it
            return _deploy_failed(agent, str(exc), permanent=exc.permanent, mark_failed=mark_failed)
        try:
            # Only from provisioning: a kill (or delete) that landed while the
            # container was being made wins, and the container goes again.
            agent.transition(
                S.RUNNING,
                actor=actor,
                source=source,
                reason=f"running on {droplet.name}",
                allowed_from=frozenset({S.PROVISIONING}),
                container_id=container_id,
            )
        except InvalidTransition as exc:
            revoke_agent_tokens(agent=agent)
            remove_container(droplet, container_id)
            _free_slot(agent, droplet.pk)
            agent.refresh_from_db()
            if isinstance(exc, PaymentRequired):
                raise
        return agent


@contextlib.contextmanager
def deploy_lease(agent_id: Any) -> Iterator[bool]:
    """Whether this process may deploy the agent: held for the whole deploy.

    On PostgreSQL it is a session advisory lock, which the database releases
    when the holder's connection ends, so a deployer killed mid-way (kill -9,
    a worker's child lost) leaves it free at once: whoever takes it next knows
    that a slot held with no container is a dead deploy's, and finishes it.
    Elsewhere (SQLite, local runs) it is always granted.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    key = uuid.UUID(str(agent_id)).int & LEASE_KEY_MASK
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        ours = cursor.fetchone()[0]
    try:
        yield ours
    finally:
        if ours:
            _release_lease(key)


def _release_lease(key: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
    except DatabaseError:
        # Inside a transaction that failed: end the database session itself, which
        # frees the lease, rather than hand a session holding it back to the pool.
        logger.warning("deploy lease %s: ending the session to release it", key)
        if connection.connection is not None:
            connection.connection.close()
        connection.close()


def take_over_dead_deploy(agent: Agent) -> bool:
    """With the agent's deploy lease held: if a deploy died after taking a slot
    (provisioning, a droplet, no container id), remove whatever container it
    may have made and give the slot back, so deploying again starts clean.
    Returns whether there was one."""
    if not (agent.status == S.PROVISIONING and agent.droplet_id and not agent.container_id):
        return False
    logger.warning("agent %s: a deploy died after taking a slot; finishing it", agent.pk)
    remove_container(agent.droplet, container_name_for(agent))
    revoke_agent_tokens(agent=agent)
    _free_slot(agent, agent.droplet_id)
    return True


def _reserve_and_claim(agent: Agent, *, exclude: set) -> Droplet | None:
    """Take a slot and attach the agent to it in one transaction.

    Only one deployment may attach the agent (the conditional update is the
    claim); a loser's reservation rolls back with its transaction. Holding the
    droplet row until commit also keeps reconciliation's recount from running
    between the reservation and the claim.
    """
    with transaction.atomic():
        droplet = select_droplet_for_new_container(cpus=float(agent.cpu_limit), exclude=exclude)
        claimed = Agent.objects.filter(
            pk=agent.pk, status=S.PROVISIONING, droplet__isnull=True
        ).update(droplet=droplet)
        if not claimed:
            transaction.set_rollback(True)
            return None
    return droplet


def _deploy_failed(agent: Agent, reason: str, *, permanent: bool, mark_failed: bool) -> Agent:
    revoke_agent_tokens(agent=agent)
    if mark_failed:
        agent.transition(S.FAILED, source="system", reason=f"deploy failed: {reason}")
    raise DeployFailed(reason, permanent=permanent)


def start_agent(*, agent: Agent, actor: Any = None, source: str = "owner") -> Agent:
    """Run a stopped, paused or killed agent again (its container if it still has one).

    Raises PaymentRequired, before any droplet is touched, when nothing pays for it.
    """
    agent.refresh_from_db()
    if agent.status == S.RUNNING:
        return agent
    agent.check_paid_for(S.RUNNING)
    if agent.status not in (S.STOPPED, S.PAUSED, S.KILLED):
        raise InvalidTransition(agent.status, S.RUNNING)
    # A killed agent's container holds the token the kill revoked: start afresh.
    if agent.status == S.KILLED or not agent.container_id:
        _discard_container(agent)
        return deploy_agent(agent=agent, actor=actor, source=source)
    try:
        start_container(agent.droplet, agent.container_id)
    except DropletError as exc:
        if not exc.not_found:
            raise
        _discard_container(agent)  # removed behind our back: deploy anew
        return deploy_agent(agent=agent, actor=actor, source=source)
    try:
        agent.transition(S.RUNNING, actor=actor, source=source, reason="started")
    except InvalidTransition:
        # Killed, deleted or no longer paid for while the container started: it
        # must not run. If the droplet stops answering, reconciliation stops it.
        with contextlib.suppress(DropletError):
            stop_container(agent.droplet, agent.container_id)
        raise
    return agent


def _discard_container(agent: Agent) -> None:
    if agent.container_id and agent.droplet_id:
        remove_container(agent.droplet, agent.container_id)
    if agent.droplet_id:
        _free_slot(agent, agent.droplet_id)


def stop_agent(
    *,
    agent: Agent,
    actor: Any = None,
    source: str = "owner",
    reason: str = "stopped",
    to: str = S.STOPPED,
) -> Agent:
    """Stop the agent's container (SIGTERM, then SIGKILL after the grace period).

    The state changes first, so the agent counts as stopped even if the
    droplet cannot be reached; the error is then raised and reconciliation
    stops the container once the droplet answers.
    """
    agent.refresh_from_db()
    agent.transition(to, actor=actor, source=source, reason=reason)
    if agent.container_id and agent.droplet_id:
        try:
            stop_container(agent.droplet, agent.container_id)
        except DropletError as exc:
            if not exc.not_found:
                raise
            # Gone already (removed behind our back): stopped, as asked.
    return agent


def delete_agent(*, agent: Agent, actor: Any = None, source: str = "owner") -> Agent:
    """Remove the container, free the slot, end `deleted`; the audit trail stays."""
    agent.refresh_from_db()
    if agent.status == S.DELETED:
        return agent
    if S.DELETED not in ALLOWED_TRANSITIONS[agent.status]:
        raise InvalidTransition(agent.status, S.DELETED)
    revoke_agent_tokens(agent=agent)
    _discard_container(agent)
    agent.transition(S.DELETED, actor=actor, source=source, reason="deleted")
    return agent


# --- Limits, billing periods and pauses (called by billing; agents knows no plans) ---


def apply_agent_limits(
    *,
    agent: Agent,
    limits: dict[str, Any],
    actor: Any = None,
    source: str = "system",
    reason: str = "limits changed",
) -> Agent:
    """Set limit fields (``cpu_limit``, ``daily_token_cap``…) under a row lock.

    Validated like a new agent (raises ValidationError); records an AgentEvent
    naming what changed, or nothing when nothing does. Container limits apply
    from the agent's next deploy.
    """
    with transaction.atomic():
        row = Agent.objects.select_for_update().get(pk=agent.pk)
        changed = {name: value for name, value in limits.items() if getattr(row, name) != value}
        if changed:
            for name, value in changed.items():
                setattr(row, name, value)
            row.full_clean()
            row.save(update_fields=[*changed, "updated_at"])
            described = ", ".join(f"{name}={value}" for name, value in changed.items())
            AgentEvent.objects.create(
                agent=row, actor=actor, source=source, reason=f"{reason}: {described}"
            )
    agent.refresh_from_db()
    return agent


def start_new_billing_period(*, agent: Agent, started_at: Any, source: str = "billing") -> bool:
    """Start the monthly cost counter afresh for a period beginning at ``started_at``.

    Ordered and idempotent: a period that does not begin after the current one
    (a redelivered or late renewal) changes nothing. Returns whether it started one.
    """
    with transaction.atomic():
        row = Agent.objects.select_for_update().get(pk=agent.pk)
        if row.period_started_at is not None and started_at <= row.period_started_at:
            return False
        spent = row.cost_this_period
        row.cost_this_period = 0
        row.period_started_at = started_at
        row.save(update_fields=["cost_this_period", "period_started_at", "updated_at"])
        AgentEvent.objects.create(
            agent=row,
            source=source,
            reason=f"new billing period from {started_at:%Y-%m-%d %H:%M} UTC "
            f"(the last one cost ${spent:.2f})",
        )
    agent.refresh_from_db()
    return True


def pause_agent(*, agent: Agent, reason: str, actor: Any = None, source: str = "system") -> Agent:
    """Pause the agent with the reason its owner sees: its container stops, its slot
    and token stay, so starting it again is quick. Raises like :func:`stop_agent`."""
    return stop_agent(agent=agent, actor=actor, source=source, reason=reason, to=S.PAUSED)
