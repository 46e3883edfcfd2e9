"""python manage.py create_agent --owner EMAIL --name NAME [--provider openai|anthropic]"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import AIProvider
from agents.services import create_agent
from safer_claw.errors import describe_validation_error


class Command(BaseCommand):
    help = (
        "Create an agent for an existing user and print its id. The provider key is read "
        "from the AGENT_PROVIDER_KEY environment variable, never from an argument, so it "
        "stays out of shell history and process listings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--owner", required=True, help="The owner's email address.")
        parser.add_argument("--name", required=True)
        parser.add_argument("--provider", choices=AIProvider.values, default=AIProvider.OPENAI)

    def handle(self, *args: object, **options: object) -> None:
        owner = get_user_model().objects.filter(email__iexact=options["owner"]).first()
        if owner is None:
            raise CommandError(f"no user with email {options['owner']}")
        provider_key = os.environ.get("AGENT_PROVIDER_KEY", "")
        try:
            agent = create_agent(
                owner=owner,
                name=options["name"],
                provider=options["provider"],
                provider_key=provider_key,
                source="operator",
            )
        except ValidationError as exc:
            raise CommandError(describe_validation_error(exc)) from exc
        if not provider_key:
            self.stderr.write(
                "WARNING: AGENT_PROVIDER_KEY is not set; this agent has no provider key and "
                "its model calls will be refused until one is set."
            )
        self.stderr.write(f"Created agent {agent.name} for {owner.email} ({agent.status})")
        self.stdout.write(str(agent.id))
