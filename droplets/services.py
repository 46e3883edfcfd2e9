"""Writes to droplets that operators and other apps call."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from droplets.containers import ping
from droplets.docker_client import DropletError
from droplets.models import Droplet, DropletEvent, DropletStatus

logger = logging.getLogger(__name__)


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
    agent_subnet: str = "",
    control_plane_url: str = "",
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
        agent_subnet=agent_subnet,
        control_plane_url=control_plane_url,
    )
    droplet.full_clean()
    droplet.save()
    return droplet


def record_droplet_event(droplet: Droplet, kind: str, message: str) -> None:
    logger.info("droplet %s: %s: %s", droplet.name, kind, message)
    DropletEvent.objects.create(droplet=droplet, kind=kind, message=message)


def check_droplet_health(droplet: Droplet) -> bool:
    """Ping the droplet's engine and move it in or out of `unreachable`.

    A droplet is marked unreachable after DROPLET_UNREACHABLE_AFTER_FAILURES
    failed checks in a row, and gets no new containers until it answers again.
    Returns whether it answered.
    """
    try:
        ping(droplet)
    except DropletError as exc:
        record_droplet_failure(droplet, str(exc))
        return False
    with transaction.atomic():
        row = Droplet.objects.select_for_update().get(pk=droplet.pk)
        row.consecutive_failures = 0
        row.last_seen_at = timezone.now()
        came_back = row.status == DropletStatus.UNREACHABLE
        if came_back:
            row.status = DropletStatus.ACTIVE
        row.save(update_fields=["consecutive_failures", "last_seen_at", "status", "updated_at"])
    if came_back:
        record_droplet_event(
            row, "reachable", "the engine answers again; placing agents here again"
        )
    return True


def record_droplet_failure(droplet: Droplet, reason: str) -> None:
    """Count a failed contact; past the threshold the droplet becomes unreachable."""
    with transaction.atomic():
        row = Droplet.objects.select_for_update().get(pk=droplet.pk)
        row.consecutive_failures += 1
        newly_unreachable = (
            row.consecutive_failures >= settings.DROPLET_UNREACHABLE_AFTER_FAILURES
            and row.status in (DropletStatus.ACTIVE, DropletStatus.FULL)
        )
        if newly_unreachable:
            row.status = DropletStatus.UNREACHABLE
        row.save(update_fields=["consecutive_failures", "status", "updated_at"])
    if newly_unreachable:
        record_droplet_event(
            row,
            "unreachable",
            f"{row.consecutive_failures} failed contacts in a row; no new agents go here. "
            f"Last error: {reason}",
        )
