"""The operator commands named in DESIGN.md: register_droplet and create_agent."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import CommandError, call_command

from agents.models import Agent
from droplets.models import Droplet
from droplets.tests.pki import TestCA

pytestmark = pytest.mark.django_db


def run(*args, **env):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_create_agent_reads_the_key_from_the_environment_and_prints_the_id(alice, monkeypatch):
    monkeypatch.setenv("AGENT_PROVIDER_KEY", "sk-ant-from-env-123")
    out, _ = run(
        "create_agent",
        "--owner",
        "ALICE@example.com",
        "--name",
        "helper",
        "--provider",
        "anthropic",
    )
    agent = Agent.objects.get(pk=uuid.UUID(out))
    assert agent.owner == alice
    assert agent.ai_provider == "anthropic"
    assert agent.ai_api_key == "sk-ant-from-env-123"
    stored = Agent.objects.filter(pk=agent.pk).values_list("ai_api_key", flat=True)[0]
    assert "sk-ant-from-env-123" not in stored


def test_create_agent_has_no_key_argument(alice):
    with pytest.raises(CommandError, match=r"unrecognized arguments"):
        run("create_agent", "--owner", alice.email, "--name", "x", "--key", "sk-secret")


def test_create_agent_without_key_warns(alice, monkeypatch):
    monkeypatch.delenv("AGENT_PROVIDER_KEY", raising=False)
    out, err = run("create_agent", "--owner", alice.email, "--name", "helper")
    assert "AGENT_PROVIDER_KEY is not set" in err
    assert Agent.objects.get(pk=out).ai_api_key is None


def test_create_agent_for_an_unknown_owner_fails_clearly():
    with pytest.raises(CommandError, match=r"no user with email nobody@example\.com"):
        run("create_agent", "--owner", "nobody@example.com", "--name", "x")
    assert not Agent.objects.exists()


def test_create_agent_with_a_bad_name_fails_clearly(alice):
    with pytest.raises(CommandError, match="name: Use letters"):
        run("create_agent", "--owner", alice.email, "--name", "../etc")


def test_register_droplet_reads_tls_files_and_prints_the_id(tmp_path):
    ca = TestCA()
    client = ca.issue_client()
    for name, text in {
        "ca.pem": ca.cert_pem,
        "cert.pem": client.cert_pem,
        "key.pem": client.key_pem,
    }.items():
        (tmp_path / name).write_text(text)
    out, _ = run(
        "register_droplet",
        "--name",
        "fra1-a",
        "--ip",
        "203.0.113.7",
        "--capacity",
        "8",
        "--tls-ca",
        str(tmp_path / "ca.pem"),
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        "--vcpus",
        "4",
    )
    droplet = Droplet.objects.get(pk=uuid.UUID(out))
    assert (droplet.name, droplet.docker_url, droplet.max_capacity, droplet.vcpus) == (
        "fra1-a",
        "tcp://203.0.113.7:2376",
        8,
        4,
    )
    assert droplet.tls_client_key == client.key_pem


def test_register_droplet_without_tls_for_tcp_is_refused():
    with pytest.raises(CommandError, match="mutual TLS"):
        run("register_droplet", "--name", "x", "--ip", "203.0.113.7", "--capacity", "2")
    assert not Droplet.objects.exists()


def test_register_droplet_with_a_missing_file_fails_clearly(tmp_path):
    with pytest.raises(CommandError, match="cannot read --tls-ca file"):
        run(
            "register_droplet",
            "--name",
            "x",
            "--ip",
            "203.0.113.7",
            "--capacity",
            "2",
            "--tls-ca",
            str(tmp_path / "missing.pem"),
        )
