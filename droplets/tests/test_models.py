"""Droplet validation and the admin's handling of the client key."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from droplets.models import Droplet
from droplets.services import register_droplet
from droplets.tests.pki import TestCA


@pytest.fixture(scope="module")
def tls():
    ca = TestCA()
    client = ca.issue_client()
    return {
        "tls_ca_cert": ca.cert_pem,
        "tls_client_cert": client.cert_pem,
        "tls_client_key": client.key_pem,
    }


@pytest.mark.django_db
def test_register_tls_droplet_stores_key_encrypted(tls):
    droplet = register_droplet(name="d1", ip_address="203.0.113.10", max_capacity=5, **tls)
    assert droplet.docker_url == "tcp://203.0.113.10:2376"
    stored = Droplet.objects.filter(pk=droplet.pk).values_list("tls_client_key", flat=True)[0]
    assert stored.startswith("scv1:")
    assert "PRIVATE KEY" not in stored
    assert Droplet.objects.get(pk=droplet.pk).tls_client_key == tls["tls_client_key"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"tls_client_key": ""}, "tls_client_key", "mutual TLS"),
        ({"tls_ca_cert": ""}, "tls_ca_cert", "mutual TLS"),
        ({"tls_client_key": "not a key"}, "tls_client_key", "private key"),
        ({"tls_ca_cert": "-----BEGIN CERTIFICATE-----\nnope"}, "tls_ca_cert", "certificate"),
        ({"docker_url": "http://203.0.113.10:2375"}, "docker_url", "tcp://HOST:PORT"),
        ({"docker_url": "tcp://203.0.113.10"}, "docker_url", "tcp://HOST:PORT"),
        ({"max_capacity": 0}, "max_capacity", "greater than or equal to 1"),
        ({"ip_address": "not-an-ip"}, "ip_address", "valid IPv4 or IPv6"),
    ],
)
def test_register_droplet_rejects_bad_input(tls, changes, field, message):
    with pytest.raises(ValidationError) as excinfo:
        register_droplet(
            **{"name": "d1", "ip_address": "203.0.113.10", "max_capacity": 5, **tls, **changes}
        )
    assert field in excinfo.value.message_dict
    assert message in " ".join(excinfo.value.message_dict[field])
    assert not Droplet.objects.exists()


@pytest.mark.django_db
def test_local_unix_droplet_needs_no_tls():
    droplet = register_droplet(
        name="local",
        ip_address="127.0.0.1",
        max_capacity=2,
        docker_url="unix:///var/run/docker.sock",
    )
    assert not droplet.uses_tls


@pytest.mark.django_db
def test_admin_never_shows_the_client_key_back(admin_client, tls):
    droplet = register_droplet(name="d1", ip_address="203.0.113.10", max_capacity=5, **tls)
    page = admin_client.get(f"/admin/droplets/droplet/{droplet.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "PRIVATE KEY" not in body
    assert tls["tls_client_key"].splitlines()[1] not in body


@pytest.mark.django_db
def test_admin_edit_keeps_the_key_when_left_empty_and_replaces_it_when_given(admin_client, tls):
    droplet = register_droplet(name="d1", ip_address="203.0.113.10", max_capacity=5, **tls)
    form = {
        "name": "d1-renamed",
        "ip_address": "203.0.113.10",
        "status": "active",
        "vcpus": 2,
        "memory_mb": 2048,
        "max_capacity": 6,
        "docker_url": droplet.docker_url,
        "tls_ca_cert": tls["tls_ca_cert"],
        "tls_client_cert": tls["tls_client_cert"],
        "tls_client_key": "",
    }
    response = admin_client.post(f"/admin/droplets/droplet/{droplet.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    droplet.refresh_from_db()
    assert droplet.name == "d1-renamed"
    assert droplet.tls_client_key == tls["tls_client_key"]

    new_client = TestCA().issue_client()
    form["tls_client_key"] = new_client.key_pem
    admin_client.post(f"/admin/droplets/droplet/{droplet.pk}/change/", form)
    droplet.refresh_from_db()
    assert droplet.tls_client_key == new_client.key_pem.strip()

    form["tls_client_key"] = "garbage"
    response = admin_client.post(f"/admin/droplets/droplet/{droplet.pk}/change/", form)
    assert response.status_code == 200
    assert "not an unencrypted PEM private key" in response.content.decode()
