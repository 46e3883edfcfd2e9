"""Agent lifecycle services against real Docker engines."""

from __future__ import annotations

import io
import subprocess
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from agents.models import Agent, AgentStatus, InvalidTransition, PaymentRequired
from agents.services import (
    DeployFailed,
    create_agent,
    delete_agent,
    deploy_agent,
    start_agent,
    stop_agent,
)
from agents.tests.factories import paid
from agents.tokens import token_agent
from droplets.containers import container_state
from droplets.docker_client import DropletError
from droplets.models import Droplet, DropletStatus

pytestmark = [pytest.mark.docker, pytest.mark.django_db]
S = AgentStatus


@pytest.fixture
def droplets(local_droplet, tls_droplet):
    return local_droplet, tls_droplet


def new_agent(owner, name="helper", **limits) -> Agent:
    return paid(
        create_agent(owner=owner, name=name, provider_key="sk-live-provider-secret-0001", **limits)
    )


def env_of(engines, agent: Agent) -> dict[str, str]:
    engine = engines["d1"] if agent.droplet.name == "d1-local" else engines["d2"]
    env = engine.api.inspect_container(agent.container_id)["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)


def test_deploy_runs_a_labelled_container_holding_only_its_token(alice, droplets, engines):
    agent = deploy_agent(agent=new_agent(alice), source="operator")

    assert agent.status == S.RUNNING
    state = container_state(agent.droplet, agent.container_id)
    assert state.running
    env = env_of(engines, agent)
    assert token_agent(env["AGENT_TOKEN"]) == agent
    assert env["CONTROL_PLANE_URL"] == agent.droplet.control_plane_url
    assert not any("sk-live-provider-secret" in value for value in env.values())
    assert [e.to_status for e in agent.events.all()] == [
        "pending_payment",
        "provisioning",
        "running",
    ]


def test_placement_prefers_the_droplet_with_most_free_slots(alice, droplets):
    local, tls = droplets
    Droplet.objects.filter(pk=local.pk).update(active_container_count=3)
    agent = deploy_agent(agent=new_agent(alice))
    assert agent.droplet == tls
    tls.refresh_from_db()
    assert tls.active_container_count == 1


def test_deploy_is_idempotent(alice, droplets):
    agent = deploy_agent(agent=new_agent(alice))
    container_id = agent.container_id
    again = deploy_agent(agent=agent)
    assert again.container_id == container_id
    assert Droplet.objects.get(pk=agent.droplet_id).active_container_count == 1


def test_stop_then_start_keeps_the_container_and_its_slot(alice, droplets):
    agent = deploy_agent(agent=new_agent(alice))
    stop_agent(agent=agent, actor=alice, source="owner")
    assert container_state(agent.droplet, agent.container_id).status == "exited"
    assert Agent.objects.get(pk=agent.pk).status == S.STOPPED
    assert Droplet.objects.get(pk=agent.droplet_id).active_container_count == 1

    start_agent(agent=agent, actor=alice)
    assert container_state(agent.droplet, agent.container_id).running
    assert Agent.objects.get(pk=agent.pk).status == S.RUNNING


def test_a_stopped_agent_whose_payment_lapsed_is_not_started(alice, droplets):
    agent = deploy_agent(agent=new_agent(alice))
    stop_agent(agent=agent, actor=alice, source="owner")
    Agent.objects.filter(pk=agent.pk).update(billing_active=False)  # as billing leaves it
    before = agent.events.count()

    with pytest.raises(PaymentRequired, match="nothing pays for it"):
        start_agent(agent=agent, actor=alice)

    assert container_state(agent.droplet, agent.container_id).status == "exited"
    assert Agent.objects.get(pk=agent.pk).status == S.STOPPED
    assert agent.events.count() == before


def test_a_deploy_whose_payment_lapses_meanwhile_leaves_no_container(
    alice, droplets, engines, monkeypatch
):
    import agents.services as services

    agent = new_agent(alice)
    real_run = services.run_container

    def payment_fails_while_the_container_starts(droplet, spec):
        container_id = real_run(droplet, spec)
        Agent.objects.filter(pk=agent.pk).update(billing_active=False)
        return container_id

    # The seam is the engine call: the payment lapses between create and the state change.
    monkeypatch.setattr(services, "run_container", payment_fails_while_the_container_starts)

    with pytest.raises(PaymentRequired):
        deploy_agent(agent=agent)

    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id, agent.container_id) == (S.PROVISIONING, None, "")
    labelled = {"label": f"saferclaw.agent={agent.pk}"}
    assert engines["d1"].containers.list(all=True, filters=labelled) == []
    assert engines["d2"].containers.list(all=True, filters=labelled) == []
    assert not agent.tokens.filter(revoked_at__isnull=True).exists()
    assert sum(Droplet.objects.values_list("active_container_count", flat=True)) == 0


def test_delete_removes_the_container_frees_the_slot_and_keeps_the_trail(alice, droplets):
    agent = deploy_agent(agent=new_agent(alice))
    droplet, container_id = agent.droplet, agent.container_id
    delete_agent(agent=agent, actor=alice)

    with pytest.raises(DropletError) as excinfo:
        container_state(droplet, container_id)
    assert excinfo.value.not_found
    droplet.refresh_from_db()
    assert droplet.active_container_count == 0
    agent.refresh_from_db()
    assert (agent.status, agent.droplet, agent.container_id) == (S.DELETED, None, "")
    assert agent.events.last().to_status == S.DELETED
    assert agent.tokens.filter(revoked_at__isnull=True).count() == 0


def test_wrong_state_is_refused_and_changes_nothing(alice, droplets):
    agent = new_agent(alice)
    with pytest.raises(
        InvalidTransition, match="agent is pending_payment; it cannot go to stopped"
    ):
        stop_agent(agent=agent)
    with pytest.raises(InvalidTransition):
        start_agent(agent=agent)
    assert Agent.objects.get(pk=agent.pk).status == S.PENDING_PAYMENT
    assert agent.events.count() == 1


def test_no_capacity_fails_the_deploy_with_its_reason(alice, droplets):
    Droplet.objects.update(active_container_count=5)
    agent = new_agent(alice)
    with pytest.raises(DeployFailed, match="no capacity"):
        deploy_agent(agent=agent)
    agent.refresh_from_db()
    assert agent.status == S.FAILED
    assert "no capacity" in agent.status_reason


def test_full_unreachable_and_maintenance_droplets_are_skipped(alice, droplets):
    local, tls = droplets
    Droplet.objects.filter(pk=tls.pk).update(status=DropletStatus.MAINTENANCE)
    assert deploy_agent(agent=new_agent(alice, "a")).droplet == local
    Droplet.objects.filter(pk=local.pk).update(status=DropletStatus.UNREACHABLE)
    with pytest.raises(DeployFailed, match="no capacity"):
        deploy_agent(agent=new_agent(alice, "b"))


def test_a_permanent_error_ends_failed_and_frees_the_slot(alice, droplets, settings):
    settings.RUNTIME_IMAGE = "saferclaw/no-such-image:1"
    agent = new_agent(alice)
    with pytest.raises(DeployFailed) as excinfo:
        deploy_agent(agent=agent)
    assert excinfo.value.permanent
    agent.refresh_from_db()
    assert agent.status == S.FAILED
    assert "no-such-image" in agent.status_reason
    assert sum(Droplet.objects.values_list("active_container_count", flat=True)) == 0


def test_more_cpu_than_any_droplet_has_is_refused_before_anything_runs(alice, droplets):
    agent = new_agent(alice, cpu_limit=Decimal("3"))  # the test droplets have 2 vCPUs
    with pytest.raises(DeployFailed, match="no capacity: every droplet with 3 CPUs"):
        deploy_agent(agent=agent)
    assert sum(Droplet.objects.values_list("active_container_count", flat=True)) == 0


def test_negative_limits_are_refused_with_a_clear_message(alice, droplets):
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.01"):
        new_agent(alice, cpu_limit=Decimal("-1"))
    assert not Agent.objects.exists()


def test_tls_engine_stopping_mid_run_sends_new_agents_to_the_other(
    alice, droplets, restart_d2_after, settings
):
    from droplets.services import check_droplet_health
    from droplets.tests.fixtures import droplets_script

    local, tls = droplets
    Droplet.objects.filter(pk=local.pk).update(active_container_count=2)  # tls is preferred
    first = deploy_agent(agent=new_agent(alice, "first"))
    assert first.droplet == tls

    droplets_script("stop-d2")
    for _ in range(settings.DROPLET_UNREACHABLE_AFTER_FAILURES):
        assert check_droplet_health(tls) is False
    tls.refresh_from_db()
    assert tls.status == DropletStatus.UNREACHABLE
    assert tls.events.filter(kind="unreachable").exists()

    second = deploy_agent(agent=new_agent(alice, "second"))
    assert second.droplet == local

    droplets_script("start-d2")
    assert check_droplet_health(tls) is True
    tls.refresh_from_db()
    assert tls.status == DropletStatus.ACTIVE


def test_deploy_falls_over_to_another_droplet_when_one_does_not_answer(
    alice, droplets, restart_d2_after
):
    from droplets.tests.fixtures import droplets_script

    local, tls = droplets
    Droplet.objects.filter(pk=local.pk).update(active_container_count=2)
    droplets_script("stop-d2")
    agent = deploy_agent(agent=new_agent(alice))
    assert agent.droplet == local
    tls.refresh_from_db()
    assert tls.active_container_count == 0
    assert tls.consecutive_failures == 1


def test_operator_commands_deploy_and_stop(alice, droplets):
    agent = new_agent(alice)
    out = io.StringIO()
    call_command("deploy_agent", str(agent.id), stdout=out)
    agent.refresh_from_db()
    assert out.getvalue().strip() == f"droplet={agent.droplet.name} container={agent.container_id}"

    call_command("stop_agent", str(agent.id), stdout=io.StringIO())
    assert container_state(agent.droplet, agent.container_id).status == "exited"
    with pytest.raises(CommandError, match="no agent with id"):
        call_command("deploy_agent", "00000000-0000-4000-8000-000000000000")
    with pytest.raises(CommandError, match="not an agent id"):
        call_command("stop_agent", "bogus")


def test_docker_inspect_shows_no_provider_key(alice, droplets):
    agent = deploy_agent(agent=new_agent(alice))
    endpoint = "unix:///var/run/docker.sock" if agent.droplet.name == "d1-local" else None
    if endpoint is None:
        endpoint = "unix:///run/saferclaw-d2/docker.sock"
    inspect = subprocess.run(
        ["docker", "-H", endpoint, "inspect", agent.container_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sk-live-provider-secret" not in inspect
    assert "AGENT_TOKEN=sca_" in inspect


def test_a_named_control_plane_is_pinned_in_the_containers_hosts(alice, droplets, engines):
    Droplet.objects.update(control_plane_url="http://localhost:18000")
    agent = deploy_agent(agent=new_agent(alice))
    engine = engines["d1"] if agent.droplet.name == "d1-local" else engines["d2"]
    hosts = engine.api.inspect_container(agent.container_id)["HostConfig"]["ExtraHosts"]
    assert hosts in (["localhost:127.0.0.1"], ["localhost:::1"])


def test_an_unresolvable_control_plane_fails_the_deploy_and_frees_the_slot(alice, droplets):
    Droplet.objects.update(control_plane_url="http://control-plane.invalid:8000")
    agent = new_agent(alice)
    with pytest.raises(DeployFailed, match="cannot resolve the control plane"):
        deploy_agent(agent=agent)
    assert sum(Droplet.objects.values_list("active_container_count", flat=True)) == 0
    assert Agent.objects.get(pk=agent.pk).status == S.FAILED


def test_a_kill_during_the_deploy_wins(alice, droplets, engines, monkeypatch):
    import agents.services as services

    real_run = services.run_container

    def run_then_kill(droplet, spec):
        container_id = real_run(droplet, spec)
        Agent.objects.get(name="helper").transition(S.KILLED, source="kill_switch")
        return container_id

    # The seam is the engine call: a kill lands between create and the state change.
    monkeypatch.setattr(services, "run_container", run_then_kill)
    agent = deploy_agent(agent=new_agent(alice))

    assert agent.status == S.KILLED
    assert (agent.droplet, agent.container_id) == (None, "")
    assert not engines["d1"].containers.list(all=True, filters={"label": "saferclaw.agent"})
    assert not engines["d2"].containers.list(all=True, filters={"label": "saferclaw.agent"})
    assert not agent.tokens.filter(revoked_at__isnull=True).exists()
    assert sum(Droplet.objects.values_list("active_container_count", flat=True)) == 0


def test_no_capacity_after_an_unreachable_droplet_says_which_and_why(
    alice, droplets, restart_d2_after
):
    from droplets.tests.fixtures import droplets_script

    local, _ = droplets
    Droplet.objects.filter(pk=local.pk).update(active_container_count=5)  # full
    droplets_script("stop-d2")
    agent = new_agent(alice)
    with pytest.raises(DeployFailed, match="no capacity"):
        deploy_agent(agent=agent)
    agent.refresh_from_db()
    assert "create container on droplet d2-tls: unreachable" in agent.status_reason
