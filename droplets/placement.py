"""Choosing a droplet for a new container and holding its slot.

The slot is taken with one conditional UPDATE (``count < capacity``), which the
database evaluates row by row under its lock, so concurrent deployments can
never place more containers on a droplet than it holds. A scheduler such as
Swarm or Kubernetes would replace this module and ``containers``, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from droplets.models import Droplet, DropletStatus

MAX_ROUNDS = 10


class NoCapacity(Exception):
    """No active droplet has a free slot (of the size asked for)."""

    def __init__(self, cpus: float = 0) -> None:
        detail = f" with {cpus:g} CPUs" if cpus > 1 else ""
        super().__init__(
            f"no capacity: every droplet{detail} is full, unreachable or in maintenance"
        )


def _with_room(exclude: Iterable, cpus: float) -> list[Droplet]:
    return list(
        Droplet.objects.filter(
            status=DropletStatus.ACTIVE,
            active_container_count__lt=F("max_capacity"),
            vcpus__gte=cpus,
        )
        .exclude(pk__in=list(exclude))
        .annotate(free=F("max_capacity") - F("active_container_count"))
        .order_by("-free", "name")
    )


def select_droplet_for_new_container(*, cpus: float = 0, exclude: Iterable = ()) -> Droplet:
    """Reserve a slot on the healthy droplet with the most free capacity.

    Only droplets with at least ``cpus`` vCPUs are considered.

    Raises NoCapacity when none is left. The caller owns the slot from here
    on and must give it back with :func:`release_slot` if the container does
    not come up.
    """
    excluded = set(exclude)
    for _ in range(MAX_ROUNDS):
        candidates = _with_room(excluded, cpus)
        if not candidates:
            break
        for droplet in candidates:
            taken = Droplet.objects.filter(
                pk=droplet.pk,
                status=DropletStatus.ACTIVE,
                active_container_count__lt=F("max_capacity"),
            ).update(
                active_container_count=F("active_container_count") + 1,
                updated_at=timezone.now(),
            )
            if taken:
                droplet.refresh_from_db()
                return droplet
    raise NoCapacity(cpus)


def release_slot(droplet_id) -> None:
    """Give a slot back (never below zero)."""
    Droplet.objects.filter(pk=droplet_id).update(
        active_container_count=Greatest(F("active_container_count") - 1, 0),
        updated_at=timezone.now(),
    )
