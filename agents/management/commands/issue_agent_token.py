"""python manage.py issue_agent_token AGENT_ID"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from agents.management.commands._lookup import agent_from_argument
from agents.tokens import issue_agent_token


class Command(BaseCommand):
    help = (
        "Issue a new token for an agent, revoking its previous ones, and print it. "
        "It is shown this once; only its hash is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")

    def handle(self, *args: object, **options: object) -> None:
        agent = agent_from_argument(options["agent_id"])
        self.stdout.write(issue_agent_token(agent=agent))
