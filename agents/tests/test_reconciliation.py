"""Reconciliation repairs drift between the database and real engines."""

from __future__ import annotations

import re
import threading
import uuid

import pytest
from django.db import connection

from agents.models import Agent, AgentEvent, AgentStatus
from agents.reconciliation import REDEPLOY_LIMIT, UNPAID_REASON, reconcile_droplet
from agents.services import (
    LEASE_KEY_MASK,
    DeployFailed,
    container_name_for,
    create_agent,
    deploy_agent,
)
from agents.tasks import reconcile_agents, tell_owner_agent_failed
from agents.tests.factories import paid
from droplets.containers import ContainerSpec, container_state, run_container
from droplets.models import Droplet
from safer_claw.models import OutboxTask

pytestmark = [pytest.mark.docker]
S = AgentStatus


def running_agent(owner, name="helper") -> Agent:
    agent = paid(create_agent(owner=owner, name=name, provider_key="sk-test"))
    return deploy_agent(agent=agent)


@pytest.mark.django_db
def test_a_paid_agent_whose_container_was_removed_is_deployed_again(alice, local_droplet, engines):
    agent = running_agent(alice)
    engines["d1"].containers.get(agent.container_id).remove(force=True)

    repairs = reconcile_droplet(local_droplet)

    agent.refresh_from_db()
    assert (repairs.redeployed, repairs.failed) == ([str(agent.id)], [])
    assert agent.status == S.PROVISIONING
    assert agent.status_reason == "redeploying: its container disappeared from the droplet"
    assert [(e.to_status, e.source) for e in agent.events.all()][-2:] == [
        (S.FAILED, "reconcile"),
        (S.PROVISIONING, "reconcile"),
    ]
    # Its deploy waits in the outbox for this transaction's commit.
    assert list(OutboxTask.objects.values_list("task", "args")) == [
        ("billing.tasks.deploy_paid_agent", [str(agent.pk)])
    ]
    local_droplet.refresh_from_db()
    assert local_droplet.active_container_count == 0
    assert not agent.tokens.filter(revoked_at__isnull=True).exists()


@pytest.mark.django_db
def test_an_unpaid_agent_whose_container_was_removed_is_failed(alice, local_droplet, engines):
    agent = running_agent(alice)
    Agent.objects.filter(pk=agent.pk).update(billing_active=False)
    engines["d1"].containers.get(agent.container_id).remove(force=True)

    repairs = reconcile_droplet(local_droplet)

    agent.refresh_from_db()
    assert (repairs.redeployed, repairs.failed) == ([], [str(agent.id)])
    assert (agent.status, agent.status_reason) == (
        S.FAILED,
        "its container disappeared from the droplet",
    )
    # No deploy waits in the outbox; only the owner's mail saying it failed.
    assert list(OutboxTask.objects.values_list("task", flat=True)) == [
        "agents.tasks.tell_owner_agent_failed"
    ]


@pytest.mark.django_db
def test_an_agent_that_keeps_losing_its_container_is_failed(alice, local_droplet, engines):
    agent = running_agent(alice)
    for _ in range(REDEPLOY_LIMIT):
        AgentEvent.objects.create(agent=agent, source="reconcile", to_status=S.PROVISIONING)
    engines["d1"].containers.get(agent.container_id).remove(force=True)

    assert reconcile_droplet(local_droplet).failed == [str(agent.id)]


@pytest.mark.django_db
def test_orphan_container_is_removed(alice, local_droplet, engines, settings):
    orphan = run_container(
        local_droplet,
        ContainerSpec(
            name="saferclaw-agent-orphan",
            image=settings.RUNTIME_IMAGE,
            environment={},
            labels={"saferclaw.agent": str(uuid.uuid4()), "saferclaw.owner": "?"},
            cpus=0.1,
            memory_bytes=64 * 1024**2,
            pids_limit=20,
        ),
    )
    kept = running_agent(alice)

    repairs = reconcile_droplet(local_droplet)

    assert repairs.removed_orphans == [orphan]
    ours = [
        c.id for c in engines["d1"].containers.list(all=True, filters={"label": "saferclaw.agent"})
    ]
    assert ours == [kept.container_id]
    assert local_droplet.events.filter(kind="orphan_removed").exists()


@pytest.mark.django_db
def test_wrong_count_is_recomputed(alice, local_droplet):
    running_agent(alice)
    Droplet.objects.filter(pk=local_droplet.pk).update(active_container_count=4)

    repairs = reconcile_droplet(local_droplet)

    assert repairs.count_fixed == (4, 1)
    local_droplet.refresh_from_db()
    assert local_droplet.active_container_count == 1
    assert local_droplet.events.filter(kind="count_fixed").exists()


@pytest.mark.django_db
def test_stopped_agent_whose_container_runs_is_stopped(alice, local_droplet, engines):
    agent = running_agent(alice)
    agent.transition(S.STOPPED, source="owner")  # as if the Docker stop had failed

    repairs = reconcile_droplet(local_droplet)

    assert repairs.stopped == [str(agent.id)]
    assert container_state(local_droplet, agent.container_id).status == "exited"


@pytest.mark.django_db
def test_a_running_agent_nothing_pays_for_is_paused_and_its_container_stopped(
    alice, local_droplet, engines
):
    agent = running_agent(alice)
    paying = running_agent(alice, name="paying")
    Agent.objects.filter(pk=agent.pk).update(billing_active=False)  # drift, however it came

    repairs = reconcile_droplet(local_droplet)

    assert repairs.paused_unpaid == [str(agent.id)]
    agent.refresh_from_db()
    assert (agent.status, agent.status_reason) == (S.PAUSED, UNPAID_REASON)
    assert agent.events.last().source == "reconcile"
    assert container_state(local_droplet, agent.container_id).status == "exited"
    assert agent.droplet_id == local_droplet.pk  # paused: its slot is kept for when it pays
    assert Agent.objects.get(pk=paying.pk).status == S.RUNNING
    assert container_state(local_droplet, paying.container_id).running
    assert reconcile_droplet(local_droplet).paused_unpaid == []


@pytest.mark.django_db
def test_a_container_stopped_from_outside_is_replaced_with_the_reason(
    alice, local_droplet, engines
):
    agent = running_agent(alice)
    container = agent.container_id
    engines["d1"].containers.get(container).stop(timeout=5)

    assert reconcile_droplet(local_droplet).redeployed == [str(agent.id)]

    agent.refresh_from_db()
    assert agent.status == S.PROVISIONING
    # 0, or 143 when SIGTERM lands before the runtime has set its handler
    assert re.fullmatch(
        r"redeploying: its container was stopped outside Safer-Claw \(exit code (0|143)\)",
        agent.status_reason,
    )
    assert container not in [c.id for c in engines["d1"].containers.list(all=True)]


@pytest.mark.django_db
@pytest.mark.django_db
def test_oom_killed_agent_is_failed_with_a_reason_the_owner_understands(
    alice, local_droplet, mailoutbox, django_capture_on_commit_callbacks
):
    from droplets.tests.test_containers import MEMORY_HOG, wait_until

    agent = paid(create_agent(owner=alice, name="hog", provider_key="sk-test", memory_limit="48m"))
    agent = deploy_agent(agent=agent)
    # Replace its container with a memory hog under the same name and labels.
    import docker

    engine = docker.DockerClient(base_url=local_droplet.docker_url)
    engine.containers.get(agent.container_id).remove(force=True)
    hog = run_container(
        local_droplet,
        ContainerSpec(
            name=f"saferclaw-agent-{agent.id}",
            image=agent_image(),
            environment={},
            labels={"saferclaw.agent": str(agent.id), "saferclaw.owner": str(alice.id)},
            cpus=0.5,
            memory_bytes=48 * 1024**2,
            pids_limit=50,
            command=["python3", "-c", MEMORY_HOG],
            healthcheck={"Test": ["NONE"]},
        ),
    )
    Agent.objects.filter(pk=agent.pk).update(container_id=hog)
    wait_until(
        lambda: container_state(local_droplet, hog).status == "exited",
        timeout=60,
        what="the hog to exhaust its restarts",
    )

    with django_capture_on_commit_callbacks(execute=True):
        reconcile_droplet(local_droplet)

    agent.refresh_from_db()
    assert agent.status == S.FAILED
    assert "exit code 137, killed for using more memory than its limit, after 3 restart(s)" in (
        agent.status_reason
    )
    # The owner is told, once: the task run again (a worker lost before its ack) sends nothing.
    [mail] = mailoutbox
    assert (mail.to, mail.subject) == ([alice.email], "Safer-Claw: your agent hog has stopped")
    assert agent.status_reason in mail.body
    tell_owner_agent_failed(str(agent.pk))
    assert len(mailoutbox) == 1


def agent_image() -> str:
    from django.conf import settings

    return settings.RUNTIME_IMAGE


def half_deployed(alice, droplet, *, name: str, paid_for: bool = True) -> Agent:
    """What a deployer killed after taking the slot leaves: provisioning, a droplet,
    no container id (and, here, the container it had just made)."""
    agent = create_agent(owner=alice, name=name, provider_key="sk-test")
    agent = paid(agent)
    agent.transition(S.PROVISIONING)
    Droplet.objects.filter(pk=droplet.pk).update(active_container_count=1)
    Agent.objects.filter(pk=agent.pk).update(droplet=droplet, billing_active=paid_for)
    run_container(
        droplet,
        ContainerSpec(
            name=container_name_for(agent),
            image=agent_image(),
            environment={},
            labels={"saferclaw.agent": str(agent.id)},
            cpus=0.1,
            memory_bytes=64 * 1024**2,
            pids_limit=20,
        ),
    )
    return agent


def lease_holder(agent: Agent):
    """Another live session holding the agent's deploy lease (a deploy under way)."""
    import psycopg

    db = connection.settings_dict
    conn = psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        dbname=db["NAME"],
        autocommit=True,
    )
    conn.execute("SELECT pg_advisory_lock(%s)", [agent.pk.int & LEASE_KEY_MASK])
    return conn


@pytest.mark.django_db
def test_a_dead_deploy_of_a_paid_agent_is_finished(
    alice, local_droplet, engines, django_capture_on_commit_callbacks
):
    agent = half_deployed(alice, local_droplet, name="half")

    with django_capture_on_commit_callbacks(execute=True):
        repairs = reconcile_droplet(local_droplet)

    assert repairs.redeployed == [str(agent.id)]
    agent.refresh_from_db()
    assert agent.status == S.RUNNING
    ours = engines["d1"].containers.list(all=True, filters={"label": f"saferclaw.agent={agent.pk}"})
    assert [c.id for c in ours] == [agent.container_id]  # the stray one went first
    local_droplet.refresh_from_db()
    assert local_droplet.active_container_count == 1


@pytest.mark.django_db
def test_a_dead_deploy_of_an_unpaid_agent_is_failed_and_its_slot_freed(alice, local_droplet):
    agent = half_deployed(alice, local_droplet, name="unpaid", paid_for=False)

    reconcile_droplet(local_droplet)

    agent.refresh_from_db()
    assert agent.status == S.FAILED
    local_droplet.refresh_from_db()
    assert local_droplet.active_container_count == 0


@pytest.mark.django_db
def test_a_deploy_whose_deployer_is_alive_is_left_alone(alice, local_droplet):
    agent = half_deployed(alice, local_droplet, name="alive")
    holder = lease_holder(agent)
    try:
        repairs = reconcile_droplet(local_droplet)
    finally:
        holder.close()

    assert repairs.redeployed == []
    assert repairs.failed == []
    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id) == (S.PROVISIONING, local_droplet.pk)


@pytest.mark.django_db
def test_healthy_state_needs_no_repair(alice, local_droplet):
    running_agent(alice)
    repairs = reconcile_droplet(local_droplet)
    assert (repairs.failed, repairs.stopped, repairs.removed_orphans, repairs.count_fixed) == (
        [],
        [],
        [],
        None,
    )


@pytest.mark.django_db
def test_the_beat_task_reconciles_every_droplet(alice, local_droplet, tls_droplet, engines):
    agent = running_agent(alice)
    engines["d1" if agent.droplet == local_droplet else "d2"].containers.get(
        agent.container_id
    ).remove(force=True)
    reconcile_agents.delay()
    agent.refresh_from_db()
    assert agent.status == S.PROVISIONING  # redeployed once this test's transaction commits


def test_twenty_concurrent_deploys_place_exactly_the_capacity(
    transactional_db, alice, local_droplet, engines
):
    agents = [
        paid(create_agent(owner=alice, name=f"a{i}", provider_key="sk-test")) for i in range(20)
    ]
    barrier = threading.Barrier(20)
    outcomes: list[str] = []

    def deploy(agent):
        try:
            barrier.wait()
            deploy_agent(agent=agent)
            outcomes.append("running")
        except DeployFailed as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=deploy, args=(a,)) for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("running") == 5
    assert all("no capacity" in o for o in outcomes if o != "running")
    local_droplet.refresh_from_db()
    assert local_droplet.active_container_count == 5
    assert len(engines["d1"].containers.list(filters={"label": "saferclaw.agent"})) == 5
    assert Agent.objects.filter(status=S.FAILED).count() == 15
