"""python manage.py kill_agent AGENT_ID [--remove]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.kill_switch import PENDING, kill_agent
from agents.management.commands._lookup import agent_from_argument
from agents.models import InvalidTransition


class Command(BaseCommand):
    help = (
        "Kill an agent now, as the kill switch does: revoke its token and mark it killed, "
        "then stop its container (SIGKILL after a short grace period). Only its owner or "
        "an operator can start it again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")
        parser.add_argument(
            "--remove",
            action="store_true",
            help="Remove the container and free its droplet slot instead of stopping it.",
        )

    def handle(self, *args: object, **options: object) -> None:
        agent = agent_from_argument(options["agent_id"])
        try:
            outcome = kill_agent(
                agent=agent,
                remove=bool(options["remove"]),
                source="operator",
                reason="killed by an operator (kill_agent)",
            )
        except InvalidTransition as exc:
            raise CommandError(str(exc)) from exc
        if outcome.container == PENDING:
            self.stderr.write(
                "The droplet did not answer: the container is not stopped yet. A retry task "
                "(or reconciliation) stops it when the droplet answers."
            )
        self.stdout.write(
            f"killed {agent.id}: token revoked, container {outcome.container}"
            + ("" if outcome.newly_killed else " (it was already killed)")
        )
