"""python manage.py deploy_agent AGENT_ID"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.management.commands._lookup import agent_from_argument
from agents.models import InvalidTransition
from agents.services import DeployFailed, deploy_agent


class Command(BaseCommand):
    help = "Deploy an agent now (synchronously) and print its droplet and container id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")

    def handle(self, *args: object, **options: object) -> None:
        agent = agent_from_argument(options["agent_id"])
        try:
            agent = deploy_agent(agent=agent, source="operator")
        except (DeployFailed, InvalidTransition) as exc:
            raise CommandError(f"deploy failed: {exc}") from exc
        self.stdout.write(f"droplet={agent.droplet.name} container={agent.container_id}")
