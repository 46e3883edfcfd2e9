"""Droplet health checks: unreachable after N failures in a row, back when it answers."""

from __future__ import annotations

import pytest

from droplets.models import Droplet, DropletStatus
from droplets.tasks import check_droplets
from droplets.tests.factories import DropletFactory

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def test_beat_task_checks_every_droplet_but_those_in_maintenance(local_droplet, settings):
    dead = DropletFactory(name="dead", docker_url="unix:///run/nothing-here.sock")
    resting = DropletFactory(
        name="resting",
        docker_url="unix:///run/nothing-here.sock",
        status=DropletStatus.MAINTENANCE,
    )
    for _ in range(settings.DROPLET_UNREACHABLE_AFTER_FAILURES - 1):
        check_droplets.delay()
    dead.refresh_from_db()
    assert (dead.status, dead.consecutive_failures) == (DropletStatus.ACTIVE, 2)

    check_droplets.delay()
    dead.refresh_from_db()
    assert dead.status == DropletStatus.UNREACHABLE
    assert "failed contacts in a row" in dead.events.get(kind="unreachable").message
    local_droplet.refresh_from_db()
    assert local_droplet.status == DropletStatus.ACTIVE
    assert local_droplet.last_seen_at is not None
    assert Droplet.objects.get(pk=resting.pk).consecutive_failures == 0


def test_a_success_resets_the_failure_count(local_droplet):
    Droplet.objects.filter(pk=local_droplet.pk).update(consecutive_failures=2)
    check_droplets.delay()
    local_droplet.refresh_from_db()
    assert local_droplet.consecutive_failures == 0
