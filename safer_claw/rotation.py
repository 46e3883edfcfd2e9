"""Re-sealing every encrypted column with the newest key of the ring.

Rows are re-sealed one at a time with a compare-and-swap update (only if the
stored ciphertext is still the one that was read), so a concurrent save is
never overwritten and an interrupted run simply continues where it stopped:
rows already on the newest key are not selected again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.apps import apps
from django.db import models

from safer_claw.accounts.adapter import MFA_CONTEXT
from safer_claw.encryption import FORMAT, current_ring, open_sealed, seal
from safer_claw.fields import EncryptedTextField


@dataclass
class ColumnReport:
    label: str
    resealed: int = 0
    skipped_concurrent: int = 0


def encrypted_columns() -> Iterator[tuple[type[models.Model], EncryptedTextField]]:
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                yield model, field


def stale_rows(model: type[models.Model], field: EncryptedTextField) -> models.QuerySet:
    """Rows of ``model`` whose ``field`` is sealed with a key other than the newest."""
    current_prefix = f"{FORMAT}:{current_ring().current_id}:"
    return (
        model._base_manager.exclude(**{f"{field.attname}__isnull": True})
        .exclude(**{f"{field.attname}__startswith": current_prefix})
        .only("pk", field.attname)
        .order_by("pk")
    )


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


def rotate_mfa_secrets() -> ColumnReport:
    """Re-seal allauth's MFA secrets (TOTP secret, recovery-code seed) in its JSON data."""
    from allauth.mfa.models import Authenticator

    ring = current_ring()
    current_prefix = f"{FORMAT}:{ring.current_id}:"
    report = ColumnReport(label="mfa.Authenticator.data")
    for authenticator in Authenticator.objects.order_by("pk").iterator():
        stale = {
            key: value
            for key, value in authenticator.data.items()
            if isinstance(value, str)
            and value.startswith(f"{FORMAT}:")
            and not value.startswith(current_prefix)
        }
        if not stale:
            continue
        data = dict(authenticator.data)
        for key, value in stale.items():
            data[key] = seal(
                open_sealed(value, context=MFA_CONTEXT, ring=ring), context=MFA_CONTEXT, ring=ring
            )
        changed = Authenticator.objects.filter(pk=authenticator.pk, data=authenticator.data).update(
            data=data
        )
        report.resealed += changed
        report.skipped_concurrent += 1 - changed
    return report
