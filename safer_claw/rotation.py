"""Re-sealing every encrypted value with the newest key of the ring.

The values: every ``EncryptedTextField`` column, and the secrets allauth keeps
in ``Authenticator.data`` (TOTP secrets, recovery-code seeds), each bound to
its row. Rows are re-sealed one at a time with a compare-and-swap update (only
if the stored value is still the one that was read), so a concurrent save is
never overwritten and an interrupted run simply continues where it stopped:
values already on the newest key are not touched again. ``stale_counts`` says
what is still on an older key; until it says nothing, no key may leave the ring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from allauth.mfa.models import Authenticator
from django.apps import apps
from django.db import models

from safer_claw.accounts import mfa_secrets
from safer_claw.encryption import FORMAT, current_ring, seal
from safer_claw.fields import EncryptedTextField

MFA_LABEL = "mfa.Authenticator.data"


@dataclass
class ColumnReport:
    label: str
    resealed: int = 0
    skipped_concurrent: int = 0


def encrypted_columns() -> Iterator[tuple[type[models.Model], EncryptedTextField]]:
    """Each encrypted column once (a proxy model shares its concrete model's table)."""
    for model in apps.get_models():
        if model._meta.proxy:
            continue
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                yield model, field


def _current_prefix() -> str:
    return f"{FORMAT}:{current_ring().current_id}:"


def stale_rows(model: type[models.Model], field: EncryptedTextField) -> models.QuerySet:
    """Rows of ``model`` whose ``field`` is sealed with a key other than the newest."""
    return (
        model._base_manager.exclude(**{f"{field.attname}__isnull": True})
        .exclude(**{f"{field.attname}__startswith": _current_prefix()})
        .only("pk", field.attname)
        .order_by("pk")
    )


def stale_counts() -> dict[str, int]:
    """Per column (and for the MFA secrets), how many values are on an older key."""
    counts = {
        f"{model._meta.label}.{field.name}": stale_rows(model, field).count()
        for model, field in encrypted_columns()
    }
    counts[MFA_LABEL] = stale_mfa_values()
    return counts


def rotate_column(
    model: type[models.Model],
    field: EncryptedTextField,
    *,
    batch_size: int = 500,
    progress: Callable[[ColumnReport], None] | None = None,
) -> ColumnReport:
    report = ColumnReport(label=f"{model._meta.label}.{field.name}")
    while True:
        batch = list(stale_rows(model, field)[:batch_size])
        if not batch:
            return report
        for row in batch:
            old = field.sealed_value(row)
            new = field.seal_for(row, getattr(row, field.attname))  # opens with the old key
            changed = model._base_manager.filter(pk=row.pk, **{field.attname: old}).update(
                **{field.attname: new}
            )
            if changed:
                report.resealed += 1
            else:
                report.skipped_concurrent += 1  # saved meanwhile, so already on the newest key
        if progress:
            progress(report)


def stale_mfa_values() -> int:
    """MFA secrets (each value, not each row) sealed with a key other than the newest."""
    prefix = _current_prefix()
    return sum(
        not value.startswith(prefix)
        for data in Authenticator.objects.values_list("data", flat=True)
        for value in mfa_secrets.sealed_values(data)
    )


def rotate_mfa_secrets() -> ColumnReport:
    """Re-seal allauth's MFA secrets, each still bound to its own row."""
    ring, prefix = current_ring(), _current_prefix()
    report = ColumnReport(label=MFA_LABEL)
    for authenticator in Authenticator.objects.order_by("pk").iterator():
        stored = authenticator.data
        if all(v.startswith(prefix) for v in mfa_secrets.sealed_values(stored)):
            continue

        def reseal(key: str, value: str) -> str:
            if value.startswith(prefix):
                return value
            plaintext = mfa_secrets.open_value(value)  # bound to this row when it was loaded
            return seal(plaintext.encode(), context=value.context, ring=ring)

        data = mfa_secrets.map_sealed(stored, reseal)
        changed = Authenticator.objects.filter(pk=authenticator.pk, data=stored).update(data=data)
        report.resealed += changed
        report.skipped_concurrent += 1 - changed
    return report
