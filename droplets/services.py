"""Writes to droplets that operators and other apps call."""

from __future__ import annotations

from django.db import transaction

from droplets.models import Droplet


@transaction.atomic
def register_droplet(
    *,
    name: str,
    ip_address: str,
    max_capacity: int,
    docker_url: str = "",
    tls_ca_cert: str = "",
    tls_client_cert: str = "",
    tls_client_key: str = "",
    vcpus: int = 1,
    memory_mb: int = 1024,
    digitalocean_id: int | None = None,
) -> Droplet:
    """Validate and store a droplet; raises ValidationError on bad input."""
    droplet = Droplet(
        name=name,
        ip_address=ip_address,
        max_capacity=max_capacity,
        docker_url=docker_url or f"tcp://{ip_address}:2376",
        tls_ca_cert=tls_ca_cert,
        tls_client_cert=tls_client_cert,
        tls_client_key=tls_client_key or None,
        vcpus=vcpus,
        memory_mb=memory_mb,
        digitalocean_id=digitalocean_id,
    )
    droplet.full_clean()
    droplet.save()
    return droplet
