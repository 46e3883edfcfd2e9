"""python manage.py stop_agent AGENT_ID"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.management.commands._lookup import agent_from_argument
from agents.models import InvalidTransition
from agents.services import stop_agent
from droplets.docker_client import DropletError


class Command(BaseCommand):
    help = "Stop an agent's container (graceful, then killed after the grace period)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")

    def handle(self, *args: object, **options: object) -> None:
        agent = agent_from_argument(options["agent_id"])
        try:
            agent = stop_agent(agent=agent, source="operator", reason="stopped by an operator")
        except InvalidTransition as exc:
            raise CommandError(str(exc)) from exc
        except DropletError as exc:
            raise CommandError(
                f"the agent is marked stopped, but its container could not be stopped yet "
                f"({exc}); reconciliation will stop it when the droplet answers"
            ) from exc
        self.stdout.write(f"stopped {agent.id}")
