"""Keeping the database and the droplets in agreement.

For each reachable droplet the containers labelled as ours are compared with
the agents placed there, and drift is repaired:

- a running agent whose container is gone, or was stopped from outside (an
  engine restart its restart policy did not survive), is deployed again if it
  is paid for (the events say why), else marked `failed`; one whose container
  died for good (out of memory, its restarts used up), or that keeps losing
  it, is marked `failed` with the reason; either way its slot is given back;
- an agent that should not be running (stopped, paused, killed) but whose
  container runs has it stopped;
- a running agent that nothing pays for any more (``billing_active`` off) is
  paused and its container stopped: the backstop of the paid-only rule;
- a labelled container that no live agent owns is removed;
- a deployment that died half-way (a slot held, no container, its deployer's
  lease free) is cleaned up and, if the agent is paid for, deployed again;
- the droplet's container count is recomputed from the agents that hold a slot.

Every repair writes an AgentEvent or a DropletEvent.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent, AgentStatus
from agents.services import HOLDS_SLOT, _free_slot, deploy_lease, take_over_dead_deploy
from agents.signals import redeploy_wanted
from agents.tokens import revoke_agent_tokens
from droplets.containers import (
    ContainerSummary,
    container_state,
    list_containers,
    remove_container,
    stop_container,
)
from droplets.docker_client import DropletError
from droplets.models import Droplet, DropletStatus
from droplets.services import record_droplet_event, record_droplet_failure
from safer_claw.outbox import after_commit

logger = logging.getLogger(__name__)
S = AgentStatus
AGENT_LABEL = "saferclaw.agent"
STALLED_DEPLOY_AFTER = dt.timedelta(minutes=10)
# A paid agent that keeps losing its container is failed rather than redeployed
# without end.
REDEPLOY_LIMIT, REDEPLOY_WINDOW = 3, dt.timedelta(hours=1)
UNPAID_REASON = "paused: nothing pays for it (its subscription is not active)"


@dataclass
class Repairs:
    failed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    paused_unpaid: list[str] = field(default_factory=list)
    removed_orphans: list[str] = field(default_factory=list)
    redeployed: list[str] = field(default_factory=list)
    count_fixed: tuple[int, int] | None = None


def reconcile_droplet(droplet: Droplet) -> Repairs:
    """Repair drift on one droplet; raises DropletError if it cannot be listed."""
    repairs = Repairs()
    try:
        containers = {c.id: c for c in list_containers(droplet, label=AGENT_LABEL)}
    except DropletError as exc:
        record_droplet_failure(droplet, str(exc))
        raise
    placed = list(Agent.objects.filter(droplet=droplet, status__in=HOLDS_SLOT))
    owned = {agent.container_id for agent in placed if agent.container_id}

    for agent in placed:
        _reconcile_agent(agent, containers.get(agent.container_id), repairs)
    for container in containers.values():
        if container.id not in owned:
            _remove_orphan(droplet, container, repairs)
    _recount(droplet, repairs)
    return repairs


def _reconcile_agent(agent: Agent, container: ContainerSummary | None, repairs: Repairs) -> None:
    if agent.status == S.PROVISIONING:
        if not agent.container_id:
            _finish_dead_deploy(agent, repairs)
        return
    if container is None:
        if agent.status == S.RUNNING:
            _lost_container(agent, "its container disappeared from the droplet", repairs)
        else:
            _free_slot(agent, agent.droplet_id)  # nothing left to start again
        return
    if agent.status == S.RUNNING and container.status in ("exited", "dead"):
        reason, for_good = _why_it_died(agent.droplet, container.id)
        remove_container(agent.droplet, container.id)
        if for_good:
            _fail(agent, reason, repairs)
        else:
            _lost_container(agent, reason, repairs)
    elif agent.status == S.RUNNING and not agent.billing_active:
        _pause_unpaid(agent, container, repairs)
    elif agent.status != S.RUNNING and container.status in ("running", "restarting"):
        stop_container(agent.droplet, container.id)
        repairs.stopped.append(str(agent.id))
        logger.info("reconcile: stopped the container of %s agent %s", agent.status, agent.id)


def _finish_dead_deploy(agent: Agent, repairs: Repairs) -> None:
    """A provisioning agent holds a slot but has no container. If its deployer
    died (its lease is free: see agents.services.deploy_lease), what it left is
    cleaned up and a paid agent is deployed again; an unpaid one is failed."""
    with deploy_lease(agent.pk) as free:
        if not free or connection.vendor != "postgresql":
            # Alive (or, without leases, unknowable until it is long overdue).
            if free and agent.updated_at < timezone.now() - STALLED_DEPLOY_AFTER:
                _fail(agent, "deploy did not finish (the deploying process stopped)", repairs)
            return
        agent.refresh_from_db()
        if not take_over_dead_deploy(agent):
            return
    if agent.billing_active:
        _ask_for_redeploy(agent)
        repairs.redeployed.append(str(agent.id))
    else:
        _fail(agent, "deploy did not finish, and nothing pays for it any more", repairs)


def _why_it_died(droplet: Droplet, container_id: str) -> tuple[str, bool]:
    """Why the container exited, and whether for good: killed for its memory, or
    its restart policy gave up. Otherwise it was stopped from outside (its engine
    restarted and the policy did not bring it back, or someone stopped it)."""
    state = container_state(droplet, container_id)
    if not (state.oom_killed or state.restart_count >= settings.AGENT_RESTART_MAX_RETRIES):
        return f"its container was stopped outside Safer-Claw (exit code {state.exit_code})", False
    reason = f"its container stopped for good: exit code {state.exit_code}"
    if state.oom_killed:
        reason += ", killed for using more memory than its limit"
    if state.restart_count:
        reason += f", after {state.restart_count} restart(s)"
    return reason, True


def _lost_container(agent: Agent, reason: str, repairs: Repairs) -> None:
    """A running agent has no working container, for a reason that is not its own
    (an engine restarted, a container removed): a paid agent is deployed again,
    its owner seeing why in its events; an unpaid one, or one that keeps losing
    its container, is failed with the reason."""
    if not agent.billing_active or _recent_redeploys(agent) >= REDEPLOY_LIMIT:
        _fail(agent, reason, repairs)
        return
    revoke_agent_tokens(agent=agent)
    droplet_id = agent.droplet_id
    with transaction.atomic():  # the deploy is in the outbox exactly if this happened
        agent.transition(S.FAILED, source="reconcile", reason=reason)
        agent.transition(S.PROVISIONING, source="reconcile", reason=f"redeploying: {reason}")
        _free_slot(agent, droplet_id)
        _ask_for_redeploy(agent)
    repairs.redeployed.append(str(agent.id))
    logger.warning("reconcile: redeploying agent %s: %s", agent.id, reason)


def _ask_for_redeploy(agent: Agent) -> None:
    """Billing deploys what is paid for: it hears of this agent and queues its deploy."""
    if not redeploy_wanted.send(sender=Agent, agent=agent):
        # Nothing listens (billing's receiver is not connected): nothing will deploy
        # the agent, which stays provisioning, so say so where operators look.
        logger.error("reconcile: nothing queued the redeploy of agent %s", agent.id)


def _recent_redeploys(agent: Agent) -> int:
    since = timezone.now() - REDEPLOY_WINDOW
    return agent.events.filter(
        source="reconcile", to_status=S.PROVISIONING, created_at__gte=since
    ).count()


def _pause_unpaid(agent: Agent, container: ContainerSummary, repairs: Repairs) -> None:
    with transaction.atomic():
        # Read again under the lock: billing may have activated it since the listing.
        row = Agent.objects.select_for_update().get(pk=agent.pk)
        if row.billing_active or row.status != S.RUNNING:
            return
        row.transition(S.PAUSED, source="reconcile", reason=UNPAID_REASON)
    if container.status in ("running", "restarting"):
        stop_container(agent.droplet, container.id)
    repairs.paused_unpaid.append(str(agent.id))
    logger.warning("reconcile: paused agent %s, which nothing pays for", agent.id)


def _fail(agent: Agent, reason: str, repairs: Repairs) -> None:
    from agents.tasks import tell_owner_agent_failed  # the tasks module imports this one

    revoke_agent_tokens(agent=agent)
    droplet_id = agent.droplet_id
    with transaction.atomic():  # the owner is told exactly if this happened
        agent.transition(S.FAILED, source="reconcile", reason=reason)
        _free_slot(agent, droplet_id)
        after_commit(tell_owner_agent_failed, str(agent.id))
    repairs.failed.append(str(agent.id))


def _remove_orphan(droplet: Droplet, container: ContainerSummary, repairs: Repairs) -> None:
    remove_container(droplet, container.id)
    repairs.removed_orphans.append(container.id)
    record_droplet_event(
        droplet,
        "orphan_removed",
        f"removed container {container.name} ({container.id[:12]}), labelled for agent "
        f"{container.labels.get(AGENT_LABEL, '?')}, which holds no slot here",
    )


def _recount(droplet: Droplet, repairs: Repairs) -> None:
    # Under the droplet's row lock: placement reserves and claims a slot in one
    # transaction holding the same lock, so no deployment is half-counted.
    with transaction.atomic():
        row = Droplet.objects.select_for_update().get(pk=droplet.pk)
        actual = Agent.objects.filter(droplet=droplet, status__in=HOLDS_SLOT).count()
        before = row.active_container_count
        if before == actual:
            return
        row.active_container_count = actual
        row.save(update_fields=["active_container_count", "updated_at"])
    repairs.count_fixed = (before, actual)
    record_droplet_event(
        droplet, "count_fixed", f"container count was {before}; {actual} really hold a slot"
    )


def reconcile_all() -> dict[str, Repairs]:
    """Reconcile every droplet that is not in maintenance or unreachable."""
    results = {}
    for droplet in Droplet.objects.exclude(
        status__in=[DropletStatus.MAINTENANCE, DropletStatus.UNREACHABLE]
    ):
        try:
            results[droplet.name] = reconcile_droplet(droplet)
        except DropletError as exc:
            logger.warning("reconcile: skipped droplet %s: %s", droplet.name, exc)
    return results
