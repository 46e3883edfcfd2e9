"""Faults: the process deploying an agent is killed (kill -9) half-way.

The kill point is made exact, not timed: the test locks the agent-token table,
so the deployer stops right after it has taken the agent's droplet slot (its
next step issues the container's token) and waits there, which
pg_stat_activity shows; only then is it killed.

- a Celery worker's child: the worker requeues the task (acks_late, reject on
  worker lost), it runs again and finishes the deploy;
- ``manage.py deploy_agent``: reconciliation finds the slot without a container
  and a free deploy lease, cleans up and deploys again.

Either way the agent ends running with exactly one container, the droplet's
count is exact, and the agent went to `running` once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from agents.models import Agent, AgentEvent, AgentStatus
from agents.reconciliation import reconcile_droplet
from agents.tests.factories import paid
from billing.tasks import deploy_paid_agent
from droplets.models import Droplet
from safer_claw.tests.faults.conftest import ours
from safer_claw.tests.faults.harness import (
    PYTHON,
    Service,
    celery_worker,
    run_database_url,
    service_env,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.worker]


def open_test_db() -> psycopg.Connection:
    return psycopg.connect(run_database_url(), autocommit=True)


class TokenTableLock:
    """Holds agents_agenttoken locked: a deployer stops at issuing the token."""

    def __enter__(self) -> TokenTableLock:
        self.conn = open_test_db()
        self.conn.autocommit = False
        self.conn.execute("LOCK TABLE agents_agenttoken IN EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


def deployer_waiting(agent: Agent) -> bool:
    """The deployer has the slot and waits on the token table's lock."""
    with open_test_db() as conn:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE %s",
            ["%agents_agenttoken%"],
        ).fetchone()[0]
        droplet = conn.execute(
            "SELECT droplet_id FROM agents_agent WHERE id = %s", [agent.pk]
        ).fetchone()[0]
    return waiting == 1 and droplet is not None


def provisioning_agent(alice) -> Agent:
    from agents.services import create_agent

    agent = paid(create_agent(owner=alice, name="half", provider_key="sk-test"))
    agent.transition(AgentStatus.PROVISIONING, source="billing", reason="paid")
    return agent


def assert_deployed_once(agent: Agent, droplet: Droplet, client) -> None:
    agent.refresh_from_db()
    assert agent.status == AgentStatus.RUNNING
    assert ours(client, agent) == [agent.container_id]
    droplet.refresh_from_db()
    assert droplet.active_container_count == 1
    assert AgentEvent.objects.filter(agent=agent, to_status=AgentStatus.RUNNING).count() == 1


def worker_child(worker: Service) -> int:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children  # --concurrency=1: the one pool process
    return int(children[0])


def test_a_worker_killed_mid_deploy_runs_the_task_again_and_deploys_once(
    transactional_db, alice, own_droplet, own_engine, own_docker, own_broker, tmp_path
):
    server, queue = own_broker
    agent = provisioning_agent(alice)
    worker = celery_worker(
        service_env(
            database_url=run_database_url(),
            redis_url=server.url,
            RUNTIME_IMAGE=own_engine.IMAGE,
        ),
        tmp_path / "worker.log",
        queue=queue,
    ).start()
    try:
        with TokenTableLock():
            deploy_paid_agent.delay(str(agent.pk))
            wait_until(lambda: deployer_waiting(agent), what="the deployer to take the slot")
            first_child = worker_child(worker)
            subprocess.run(["kill", "-9", str(first_child)], check=True)
        # The worker replaces its child and the task, requeued, runs again.
        wait_until(
            lambda: Agent.objects.get(pk=agent.pk).status == AgentStatus.RUNNING,
            what=f"the agent to run; worker said:\n{worker.output()}",
            seconds=120,
        )
        assert worker_child(worker) != first_child
    finally:
        worker.stop()
    assert_deployed_once(agent, own_droplet, own_docker)


def test_a_deploy_command_killed_mid_deploy_is_finished_by_reconciliation(
    transactional_db, alice, own_droplet, own_engine, own_docker, tmp_path, settings
):
    agent = provisioning_agent(alice)
    command = Service(
        [PYTHON, "manage.py", "deploy_agent", str(agent.pk)],
        service_env(
            database_url=run_database_url(),
            RUNTIME_IMAGE=own_engine.IMAGE,
            with_static=False,
        ),
        tmp_path / "deploy.log",
    )
    with TokenTableLock():
        command.start()
        wait_until(lambda: deployer_waiting(agent), what="the deployer to take the slot")
        command.kill9()
    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id, agent.container_id) == (
        AgentStatus.PROVISIONING,
        own_droplet.pk,
        "",
    )

    # Beat's reconciliation (tasks run inline here: eager mode).
    connection.close()  # this test's session holds no lease either way
    repairs = reconcile_droplet(own_droplet)

    assert repairs.redeployed == [str(agent.pk)]
    assert_deployed_once(agent, own_droplet, own_docker)
