"""Placement: the most free droplet, slots reserved atomically under concurrency."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from droplets.models import Droplet, DropletStatus
from droplets.placement import NoCapacity, release_slot, select_droplet_for_new_container
from droplets.tests.factories import DropletFactory


def test_most_free_capacity_wins(db):
    DropletFactory(name="a", max_capacity=5, active_container_count=3)
    DropletFactory(name="b", max_capacity=4, active_container_count=0)
    assert select_droplet_for_new_container().name == "b"
    assert Droplet.objects.get(name="b").active_container_count == 1


@pytest.mark.parametrize(
    "status", [DropletStatus.FULL, DropletStatus.UNREACHABLE, DropletStatus.MAINTENANCE]
)
def test_unhealthy_droplets_are_skipped(db, status):
    DropletFactory(name="sick", max_capacity=10, status=status)
    DropletFactory(name="ok", max_capacity=2, active_container_count=1)
    assert select_droplet_for_new_container().name == "ok"
    with pytest.raises(NoCapacity, match="no capacity"):
        select_droplet_for_new_container()
    assert Droplet.objects.get(name="sick").active_container_count == 0


def test_release_gives_the_slot_back_and_never_goes_negative(db):
    droplet = DropletFactory(max_capacity=1)
    select_droplet_for_new_container()
    release_slot(droplet.pk)
    release_slot(droplet.pk)
    droplet.refresh_from_db()
    assert droplet.active_container_count == 0


def test_twenty_concurrent_reservations_never_exceed_capacity(transactional_db):
    droplet = DropletFactory(max_capacity=5)
    barrier = threading.Barrier(20)
    placed, refused, errors = [], [], []

    def reserve():
        try:
            barrier.wait()
            placed.append(select_droplet_for_new_container().pk)
        except NoCapacity:
            refused.append(1)
        except Exception as exc:  # surfaced below: a database error is a failure
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=reserve) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert (len(placed), len(refused)) == (5, 15)
    droplet.refresh_from_db()
    assert droplet.active_container_count == 5
