"""Keeping the droplet table in step with the droplets DigitalOcean lists under a tag.

The tag names the fleet. A droplet that carries it and is not known yet gets a
row in ``maintenance``: it has no Docker TLS material, so it must get no agents
until an operator adds its CA, client certificate and key and sets it active.
A known droplet gets DigitalOcean's name, address and size. A known droplet
that is no longer listed goes to ``maintenance`` and is never deleted: it may
still host containers. Each row changes in its own transaction, with its
DropletEvent, and a second run over the same listing changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q

from droplets.digitalocean import DODroplet, list_tagged_droplets
from droplets.models import Droplet, DropletStatus
from droplets.services import record_droplet_event

DOCKER_TLS_PORT = 2376
# A first guess at an agent container's share of a droplet's memory; the
# operator sets the real capacity when they make the droplet active.
MEMORY_MB_PER_AGENT = 512
SYNCED_FIELDS = ("name", "ip_address", "docker_url", "vcpus", "memory_mb")


class SyncAction(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    MISSING = "missing"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class SyncOutcome:
    """What the sync did with one droplet, and why, in an operator's words."""

    action: SyncAction
    digitalocean_id: int
    name: str
    detail: str = ""


@dataclass
class SyncReport:
    tag: str
    outcomes: list[SyncOutcome] = field(default_factory=list)

    def count(self, action: SyncAction) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action == action)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(action)} {action}" for action in SyncAction)
        return f'DigitalOcean tag "{self.tag}": {counts}'


class SyncRefused(Exception):
    """The listing looks wrong enough that acting on it would do harm."""


def sync_droplets_from_digitalocean(
    *, tag: str | None = None, allow_empty: bool = False
) -> SyncReport:
    """Bring the droplet rows in line with DigitalOcean's droplets tagged ``tag``.

    ``tag`` defaults to DIGITALOCEAN_DROPLET_TAG. Rows are matched by
    ``digitalocean_id``; rows without one (hosts outside DigitalOcean) are
    never touched. Raises DigitalOceanError when the listing cannot be read,
    and SyncRefused when DigitalOcean lists nothing under the tag while
    droplets synced from it are in service (a mistyped tag would otherwise take
    the whole fleet out of placement) unless ``allow_empty``; nothing changes
    in either case.
    """
    tag = tag or settings.DIGITALOCEAN_DROPLET_TAG
    # A droplet added while the pages were read can show up twice; keep one.
    listed = {remote.id: remote for remote in list_tagged_droplets(tag=tag)}
    if not listed and not allow_empty:
        _refuse_empty_listing(tag)
    report = SyncReport(tag=tag)
    for remote_id in sorted(listed):
        report.outcomes.append(_sync_one(listed[remote_id], tag=tag))
    gone = (
        Droplet.objects.filter(digitalocean_id__isnull=False)
        .exclude(digitalocean_id__in=list(listed))
        .order_by("digitalocean_id")
        .values_list("pk", flat=True)
    )
    for pk in list(gone):
        outcome = _mark_missing(pk, tag=tag)
        if outcome:
            report.outcomes.append(outcome)
    return report


def default_capacity(memory_mb: int) -> int:
    """How many agent containers a droplet of ``memory_mb`` holds at first: at least one."""
    return max(memory_mb // MEMORY_MB_PER_AGENT, 1)


def _refuse_empty_listing(tag: str) -> None:
    in_service = (
        Droplet.objects.filter(digitalocean_id__isnull=False)
        .exclude(status=DropletStatus.MAINTENANCE)
        .count()
    )
    if in_service:
        raise SyncRefused(
            f'DigitalOcean lists no droplet tagged "{tag}", yet {in_service} droplet(s) '
            "synced from it are in service. Check the tag; to take them all out of "
            "placement on purpose, run the sync with --allow-empty."
        )


def _sync_one(remote: DODroplet, *, tag: str) -> SyncOutcome:
    try:
        with transaction.atomic():
            row = Droplet.objects.select_for_update().filter(digitalocean_id=remote.id).first()
            if row is None:
                return _create(remote, tag=tag)
            return _update(row, remote)
    except IntegrityError:
        # Another sync (or an operator) wrote the same name or address between
        # our check and our write; this row's transaction was rolled back.
        return _skipped(remote, "changed by someone else meanwhile; run the sync again")


def _create(remote: DODroplet, *, tag: str) -> SyncOutcome:
    if remote.public_ipv4 is None:
        return _skipped(remote, "no public IPv4 address yet; a later sync adds it")
    conflict = _conflict(remote, name=remote.name, ip_address=remote.public_ipv4)
    if conflict:
        return _skipped(remote, conflict)
    row = Droplet(
        digitalocean_id=remote.id,
        name=remote.name,
        ip_address=remote.public_ipv4,
        status=DropletStatus.MAINTENANCE,
        vcpus=remote.vcpus,
        memory_mb=remote.memory_mb,
        max_capacity=default_capacity(remote.memory_mb),
        docker_url=_docker_url(remote.public_ipv4),
    )
    # Field checks only: the model's clean() rightly refuses a tcp:// URL
    # without TLS material, which is exactly what maintenance stands in for.
    invalid = _invalid_fields(row, SYNCED_FIELDS)
    if invalid:
        return _skipped(remote, invalid)
    row.save()
    record_droplet_event(
        row,
        "created",
        f'found on DigitalOcean under tag "{tag}" (region {remote.region or "?"}). '
        "In maintenance: it gets no agents until an operator adds its Docker TLS CA, "
        "client certificate and client key (droplets/bootstrap/bootstrap.sh makes them), "
        f"checks the capacity ({row.max_capacity}) and sets it active.",
    )
    return SyncOutcome(
        SyncAction.CREATED,
        remote.id,
        row.name,
        f"{row.ip_address}, in maintenance until its TLS material is added",
    )


def _update(row: Droplet, remote: DODroplet) -> SyncOutcome:
    changes = _apply(row, remote)
    if not changes:
        return SyncOutcome(SyncAction.UNCHANGED, remote.id, row.name)
    conflict = _conflict(remote, name=row.name, ip_address=row.ip_address, exclude=row)
    invalid = conflict or _invalid_fields(row, list(changes))
    if invalid:
        return _skipped(remote, invalid)
    row.save(update_fields=[*changes, "updated_at"])
    described = ", ".join(f"{name} {old} → {new}" for name, (old, new) in changes.items())
    message = f"DigitalOcean reports {described}"
    if "ip_address" in changes and row.uses_tls:
        message += "; the Docker server certificate must name the new address (rerun bootstrap)"
    record_droplet_event(row, "synced", message)
    return SyncOutcome(SyncAction.UPDATED, remote.id, row.name, described)


def _apply(row: Droplet, remote: DODroplet) -> dict[str, tuple[object, object]]:
    """Set DigitalOcean's values on ``row``; returns {field: (old, new)} for each change."""
    wanted: dict[str, object] = {
        "name": remote.name,
        "vcpus": remote.vcpus,
        "memory_mb": remote.memory_mb,
    }
    # A droplet's address can be missing from the listing for a moment; keep
    # the last known one rather than blank a working row.
    if remote.public_ipv4:
        wanted["ip_address"] = remote.public_ipv4
        # Follow the address only when the URL is the one derived from it; an
        # operator's own URL (a hostname, another port) stays theirs.
        if row.docker_url == _docker_url(row.ip_address):
            wanted["docker_url"] = _docker_url(remote.public_ipv4)
    changes: dict[str, tuple[object, object]] = {}
    for name, new in wanted.items():
        old = getattr(row, name)
        if old != new:
            changes[name] = (old, new)
            setattr(row, name, new)
    return changes


def _mark_missing(pk: UUID, *, tag: str) -> SyncOutcome | None:
    with transaction.atomic():
        row = Droplet.objects.select_for_update().filter(pk=pk).first()
        if row is None or row.digitalocean_id is None:
            return None  # deleted or unlinked by an operator meanwhile
        if row.status == DropletStatus.MAINTENANCE:
            return SyncOutcome(
                SyncAction.MISSING, row.digitalocean_id, row.name, "already in maintenance"
            )
        previous = row.status
        row.status = DropletStatus.MAINTENANCE
        row.save(update_fields=["status", "updated_at"])
        record_droplet_event(
            row,
            "missing",
            f'DigitalOcean no longer lists it under tag "{tag}" (destroyed or untagged): '
            f"{previous} → maintenance, so no new agents go here. Its "
            f"{row.active_container_count} agent container(s) are left alone; move or "
            "stop them before the droplet is gone for good.",
        )
    return SyncOutcome(
        SyncAction.MISSING, row.digitalocean_id, row.name, f"{previous} → maintenance"
    )


def _conflict(
    remote: DODroplet, *, name: str, ip_address: str, exclude: Droplet | None = None
) -> str:
    """Why ``name`` or ``ip_address`` cannot be used: another row has it ('' if none)."""
    others = Droplet.objects.filter(Q(name=name) | Q(ip_address=ip_address))
    if exclude is not None:
        others = others.exclude(pk=exclude.pk)
    clash = others.first()
    if clash is None:
        return ""
    what = f"name {name}" if clash.name == name else f"IP address {ip_address}"
    message = f"{what} already belongs to droplet {clash.name}"
    if clash.digitalocean_id is None:
        message += (
            f"; if it is the same machine, set its DigitalOcean id to {remote.id} in the admin"
        )
    return message


def _invalid_fields(row: Droplet, fields: Iterable[str]) -> str:
    """The field errors of ``row`` for ``fields`` as one line ('' when valid)."""
    checked = set(fields)
    exclude = [f.name for f in Droplet._meta.concrete_fields if f.name not in checked]
    try:
        row.clean_fields(exclude=exclude)
    except ValidationError as exc:
        return "; ".join(
            f"{name}: {' '.join(messages)}" for name, messages in exc.message_dict.items()
        )
    return ""


def _docker_url(ip_address: str) -> str:
    return f"tcp://{ip_address}:{DOCKER_TLS_PORT}"


def _skipped(remote: DODroplet, reason: str) -> SyncOutcome:
    return SyncOutcome(SyncAction.SKIPPED, remote.id, remote.name, reason)
