"""Faults: a Celery worker's child is killed (kill -9) mid-task; the worker
requeues the task (acks late, reject on worker lost), it runs again, and its
effect happens once.

The kill points are made exact, not timed:

- tearing an agent down: the test locks the droplet table, so the task stops
  after removing the container, at giving its slot back, and waits there
  (pg_stat_activity shows it);
- pausing an agent at its cap: the test's mail server accepts the owner's mail
  and does not answer the QUIT that follows, so the task is killed after the
  mail went and before it could be acknowledged.
"""

from __future__ import annotations

import subprocess

import pytest
import redis

from agents.models import Agent, AgentEvent, AgentStatus, OwnerNotification
from agents.services import create_agent, deploy_agent
from agents.tests.factories import paid
from billing.tasks import tear_down_agent
from gateway.tasks import stop_agent_at_cap
from safer_claw.tests.faults.conftest import ours
from safer_claw.tests.faults.harness import (
    SmtpServer,
    celery_worker,
    run_database_url,
    service_env,
    wait_until,
)
from safer_claw.tests.faults.test_deploy_kills import open_test_db, worker_child

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.worker]
S = AgentStatus


class DropletTableLock:
    """Holds droplets_droplet locked against writes: a task stops at a slot."""

    def __enter__(self) -> DropletTableLock:
        self.conn = open_test_db()
        self.conn.autocommit = False
        self.conn.execute("LOCK TABLE droplets_droplet IN EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


def waiting_on(table: str) -> bool:
    with open_test_db() as conn:
        return conn.execute(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE %s",
            [f"%{table}%"],
        ).fetchone()[0]


def end_waiting_session(table: str) -> None:
    with open_test_db() as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query ILIKE %s",
            [f"%{table}%"],
        ).fetchall()
    assert ended == [(True,)]


def running_agent(alice, name: str) -> Agent:
    return deploy_agent(agent=paid(create_agent(owner=alice, name=name, provider_key="sk-test")))


def start_worker(own_broker, own_engine, tmp_path, **extra: str):
    server, queue = own_broker
    env = service_env(
        database_url=run_database_url(),
        redis_url=server.url,
        RUNTIME_IMAGE=own_engine.IMAGE,
        with_static=False,
        **extra,
    )
    return celery_worker(env, tmp_path / "worker.log", queue=queue).start()


def kill_child(worker) -> int:
    child = worker_child(worker)
    subprocess.run(["kill", "-9", str(child)], check=True)
    return child


def test_a_worker_killed_mid_tear_down_removes_the_agent_once(
    transactional_db, alice, own_droplet, own_engine, own_docker, own_broker, tmp_path
):
    agent = running_agent(alice, "leaving")
    container = agent.container_id
    worker = start_worker(own_broker, own_engine, tmp_path)
    try:
        with DropletTableLock():
            tear_down_agent.delay(str(agent.pk))
            wait_until(lambda: waiting_on("droplets_droplet"), what="the tear-down at the slot")
            # Killed with the container gone, the slot not yet given back.
            assert ours(own_docker, agent) == []
            first = kill_child(worker)
            # PostgreSQL would still run the dead child's waiting statement once
            # the lock goes; ending its session makes the kill land between the
            # slot's two writes, the worst place.
            end_waiting_session("droplets_droplet")
        wait_until(
            lambda: Agent.objects.get(pk=agent.pk).status == S.DELETED,
            what=f"the agent deleted; worker said:\n{worker.output()}",
            seconds=120,
        )
        assert worker_child(worker) != first
    finally:
        worker.stop()
    agent.refresh_from_db()
    assert (agent.droplet_id, agent.container_id) == (None, "")
    assert container not in [c.id for c in own_docker.containers.list(all=True)]
    own_droplet.refresh_from_db()
    assert own_droplet.active_container_count == 0  # given back once, not leaked
    assert AgentEvent.objects.filter(agent=agent, to_status=S.DELETED).count() == 1
    assert not agent.tokens.filter(revoked_at__isnull=True).exists()


def test_a_worker_killed_after_mailing_a_pause_stops_the_agent_and_mails_once(
    transactional_db, alice, own_droplet, own_engine, own_docker, own_broker, tmp_path
):
    server, _ = own_broker
    agent = running_agent(alice, "spender")
    agent.transition(S.PAUSED, source="gateway", reason="daily token cap reached (1000 tokens)")
    smtp = SmtpServer(hold_first_quit=True).start()
    worker = start_worker(own_broker, own_engine, tmp_path, EMAIL_URL=smtp.url)
    try:
        task = stop_agent_at_cap.delay(str(agent.pk))
        wait_until(smtp.holding.is_set, what=f"the mail sent; worker said:\n{worker.output()}")
        first = kill_child(worker)
        smtp.stop()  # the rerun must not need it
        # The rerun finishes: its result is stored (the killed run stored none).
        results = redis.Redis.from_url(server.url)
        wait_until(
            lambda: b'"SUCCESS"' in (results.get(f"celery-task-meta-{task.id}") or b""),
            what=f"the task run again; worker said:\n{worker.output()}",
            seconds=120,
        )
        assert worker_child(worker) != first
    finally:
        worker.stop()
        smtp.stop()
    assert len(smtp.messages) == 1
    assert b"is paused" in smtp.messages[0]
    (claim,) = OwnerNotification.objects.filter(agent=agent)
    assert claim.key.startswith(f"paused-at-cap:{agent.pk}:")
    # Killed before it could note the send: the row shows the mail was claimed.
    assert claim.sent_at is None
    agent.refresh_from_db()
    assert agent.status == S.PAUSED
    assert ours(own_docker, agent) == [agent.container_id]
    assert own_docker.containers.get(agent.container_id).status == "exited"
    assert AgentEvent.objects.filter(agent=agent, to_status=S.PAUSED).count() == 1
    own_droplet.refresh_from_db()
    assert own_droplet.active_container_count == 1  # a paused agent keeps its slot
