"""python manage.py rotate_encryption_keys [--dry-run]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from safer_claw.encryption import DecryptionError, current_ring
from safer_claw.rotation import (
    encrypted_columns,
    rotate_column,
    rotate_mfa_secrets,
    stale_rows,
)


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted column with the newest key in ENCRYPTION_KEYS. "
        "Safe to interrupt and run again; afterwards older keys can leave the ring."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only count stale values.")
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: object, **options: object) -> None:
        self.stdout.write(f"Newest key: {current_ring().current_id}")
        total = 0
        for model, field in encrypted_columns():
            label = f"{model._meta.label}.{field.name}"
            if options["dry_run"]:
                count = stale_rows(model, field).count()
                total += count
                self.stdout.write(f"{label}: {count} value(s) on an older key")
                continue
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
        if not options["dry_run"]:
            try:
                report = rotate_mfa_secrets()
            except DecryptionError as exc:
                raise CommandError(f"MFA secrets: {exc}") from exc
            total += report.resealed
            self.stdout.write(f"{report.label}: {report.resealed} re-encrypted")
        verb = "to re-encrypt" if options["dry_run"] else "re-encrypted"
        self.stdout.write(self.style.SUCCESS(f"Done: {total} value(s) {verb}."))
