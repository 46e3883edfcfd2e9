"""The operator command register_droplet (create_agent: billing/tests/test_commands.py)."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import CommandError, call_command

from droplets.models import Droplet
from droplets.tests.pki import TestCA

pytestmark = pytest.mark.django_db


def run(*args, **env):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


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
