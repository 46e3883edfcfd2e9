"""python manage.py sync_droplets [--tag TAG] [--allow-empty]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from droplets.digitalocean import DigitalOceanError
from droplets.sync import SyncOutcome, SyncRefused, sync_droplets_from_digitalocean


def describe(outcome: SyncOutcome) -> str:
    line = f"{outcome.action:<9} {outcome.name} (DigitalOcean id {outcome.digitalocean_id})"
    return f"{line}: {outcome.detail}" if outcome.detail else line


class Command(BaseCommand):
    help = (
        "Sync droplet rows with the DigitalOcean droplets that carry a tag: new ones are "
        "added in maintenance (no TLS material yet), known ones get their name, address "
        "and size, and ones no longer tagged go to maintenance. Nothing is deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tag",
            help="The DigitalOcean tag that names the fleet (default: DIGITALOCEAN_DROPLET_TAG). "
            "Synced droplets without it are taken out of placement.",
        )
        parser.add_argument(
            "--allow-empty",
            action="store_true",
            help="Go ahead when DigitalOcean lists no droplet under the tag, putting every "
            "synced droplet in maintenance.",
        )

    def handle(self, *args: object, **options: object) -> None:
        try:
            report = sync_droplets_from_digitalocean(
                tag=options["tag"], allow_empty=options["allow_empty"]
            )
        except DigitalOceanError as exc:
            retry = "" if exc.permanent else " This may pass: try again later."
            raise CommandError(f"Nothing was synced: {exc}.{retry}") from exc
        except SyncRefused as exc:
            raise CommandError(str(exc)) from exc
        for outcome in report.outcomes:
            self.stdout.write(describe(outcome))
        self.stdout.write(report.summary())
