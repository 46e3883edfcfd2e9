"""Periodic droplet health checks (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from droplets.models import Droplet, DropletStatus
from droplets.services import check_droplet_health


@shared_task(ignore_result=True)
def check_droplets() -> None:
    for droplet in Droplet.objects.exclude(status=DropletStatus.MAINTENANCE):
        check_droplet_health(droplet)
