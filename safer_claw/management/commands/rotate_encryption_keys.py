"""python manage.py rotate_encryption_keys [--dry-run]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from safer_claw.encryption import DecryptionError, current_ring
from safer_claw.rotation import (
    MFA_LABEL,
    encrypted_columns,
    rotate_column,
    rotate_mfa_secrets,
    stale_counts,
)


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted value (columns and MFA secrets) with the newest key in "
        "ENCRYPTION_KEYS. Safe to interrupt and run again. It says done only when nothing "
        "is left on an older key; until then it exits non-zero and older keys must stay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the values still on an older key (exits non-zero if any).",
        )
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: object, **options: object) -> None:
        newest = current_ring().current_id
        self.stdout.write(f"Newest key: {newest}")
        if options["dry_run"]:
            counts = stale_counts()
            for label, count in counts.items():
                self.stdout.write(f"{label}: {count} value(s) on an older key")
            self._finish(counts, newest, done="Dry run")
            return
        total = 0
        for model, field in encrypted_columns():
            label = f"{model._meta.label}.{field.name}"
            try:
                report = rotate_column(
                    model,
                    field,
                    batch_size=options["batch_size"],
                    progress=lambda r: self.stdout.write(f"{r.label}: {r.resealed} re-encrypted…"),
                )
            except DecryptionError as exc:
                raise CommandError(f"{label}: {exc}") from exc
            total += report.resealed
            self.stdout.write(f"{label}: {report.resealed} re-encrypted")
        try:
            report = rotate_mfa_secrets()
        except DecryptionError as exc:
            raise CommandError(f"{MFA_LABEL}: {exc}") from exc
        total += report.resealed
        self.stdout.write(f"{report.label}: {report.resealed} re-encrypted")
        self._finish(stale_counts(), newest, done=f"Done: {total} value(s) re-encrypted")

    def _finish(self, counts: dict[str, int], newest: str, *, done: str) -> None:
        """Say done only when nothing is left on an older key; otherwise fail, saying what."""
        left = {label: count for label, count in counts.items() if count}
        if left:
            listed = ", ".join(f"{label}: {count}" for label, count in left.items())
            raise CommandError(
                f"{sum(left.values())} value(s) still on an older key ({listed}). "
                "Keep the older keys in ENCRYPTION_KEYS and run rotate_encryption_keys again."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"{done}: nothing is left on an older key, so keys other than {newest!r} "
                "may leave ENCRYPTION_KEYS."
            )
        )
