"""rotate_encryption_keys: a populated table moves to the newest key, resumably."""

from __future__ import annotations

import io
import os

import pytest
from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP
from django.core.management import call_command

from agents.models import Agent
from agents.tests.factories import AgentFactory
from droplets.models import Droplet
from droplets.tests.factories import DropletFactory
from safer_claw.rotation import rotate_column
from safer_claw.tests.test_encryption import raw_column

T2, T1 = os.environ["ENCRYPTION_KEYS"].split(",")  # the test ring: t2 newest, t1 older


class Interrupted(Exception):
    pass


@pytest.fixture
def populated_on_t1(settings, alice):
    """25 agents and a droplet, all sealed while t1 was the newest key."""
    settings.ENCRYPTION_KEYS = T1
    agents = [AgentFactory(owner=alice, ai_api_key=f"sk-key-{i:02d}") for i in range(25)]
    for agent in agents[:5]:
        agent.integrations_config = {"google": {"refresh_token": f"r-{agent.name}"}}
        agent.save()
    droplet = DropletFactory(tls_client_key="-----PRIVATE KEY-----\nfake")
    TOTP.activate(alice, "JBSWY3DPEHPK3PXP")
    settings.ENCRYPTION_KEYS = f"{T2},{T1}"
    return agents, droplet


def test_rotation_reseals_every_column_with_the_newest_key(settings, populated_on_t1):
    agents, droplet = populated_on_t1
    out = io.StringIO()
    call_command("rotate_encryption_keys", "--batch-size", "10", stdout=out)

    assert "agents.Agent.ai_api_key: 25 re-encrypted" in out.getvalue()
    assert "agents.Agent.integrations_config: 5 re-encrypted" in out.getvalue()
    assert "droplets.Droplet.tls_client_key: 1 re-encrypted" in out.getvalue()
    assert all(raw_column(a).startswith("scv1:t2:") for a in agents)
    assert raw_column(droplet, "tls_client_key").startswith("scv1:t2:")
    assert "mfa.Authenticator.data: 1 re-encrypted" in out.getvalue()
    assert Authenticator.objects.get().data["secret"].startswith("scv1:t2:")

    settings.ENCRYPTION_KEYS = T2  # the old key can now leave the ring
    assert sorted(a.ai_api_key for a in Agent.objects.all()) == [
        f"sk-key-{i:02d}" for i in range(25)
    ]
    assert Droplet.objects.get().tls_client_key == "-----PRIVATE KEY-----\nfake"
    assert get_adapter().decrypt(Authenticator.objects.get().data["secret"]) == "JBSWY3DPEHPK3PXP"


def test_rotation_resumes_after_an_interruption(populated_on_t1):
    agents, _ = populated_on_t1
    field = Agent._meta.get_field("ai_api_key")

    def stop_after_first_batch(report):
        raise Interrupted

    with pytest.raises(Interrupted):
        rotate_column(Agent, field, batch_size=10, progress=stop_after_first_batch)
    on_new_key = sum(raw_column(a).startswith("scv1:t2:") for a in agents)
    assert on_new_key == 10

    out = io.StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "agents.Agent.ai_api_key: 15 re-encrypted" in out.getvalue()
    assert all(raw_column(a).startswith("scv1:t2:") for a in agents)


def test_dry_run_counts_and_changes_nothing(populated_on_t1):
    agents, _ = populated_on_t1
    out = io.StringIO()
    call_command("rotate_encryption_keys", "--dry-run", stdout=out)
    assert "agents.Agent.ai_api_key: 25 value(s) on an older key" in out.getvalue()
    assert all(raw_column(a).startswith("scv1:t1:") for a in agents)


def test_rotation_stops_with_a_clear_error_on_a_value_it_cannot_open(settings, populated_on_t1):
    settings.ENCRYPTION_KEYS = T2  # t1 removed before rotating: nothing can be opened
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not in ENCRYPTION_KEYS"):
        call_command("rotate_encryption_keys", stdout=io.StringIO())
