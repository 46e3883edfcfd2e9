"""python manage.py create_agent --owner EMAIL --name NAME [--provider openai|anthropic]
[--plan NAME [--complimentary REASON]] [--site-url URL]"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import Agent, AIProvider
from agents.services import create_agent
from billing.models import Plan
from billing.services import BillingError, grant_complimentary, start_checkout
from safer_claw.errors import describe_validation_error


class Command(BaseCommand):
    help = (
        "Create an agent for an existing user and print its id. The provider key is read "
        "from the AGENT_PROVIDER_KEY environment variable, never from an argument, so it "
        "stays out of shell history and process listings. An agent runs only while a plan "
        "is paid for it: with --plan the owner pays at the printed Stripe checkout URL "
        "(in development mode the plan is active at once); with --plan and --complimentary "
        "an operator grants the plan without payment, the reason kept in the agent's audit "
        "trail. Without --plan the agent waits for payment and cannot be deployed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--owner", required=True, help="The owner's email address.")
        parser.add_argument("--name", required=True)
        parser.add_argument("--provider", choices=AIProvider.values, default=AIProvider.OPENAI)
        parser.add_argument("--plan", help="The name of the plan that pays for the agent.")
        parser.add_argument(
            "--complimentary",
            metavar="REASON",
            help="Grant the plan without payment; REASON is kept in the agent's audit trail.",
        )
        parser.add_argument(
            "--site-url",
            default=None,
            help="Where the owner reaches this service, for Stripe's links back "
            "(default: CONTROL_PLANE_URL).",
        )

    def handle(self, *args: object, **options: Any) -> None:
        owner = get_user_model().objects.filter(email__iexact=options["owner"]).first()
        if owner is None:
            raise CommandError(f"no user with email {options['owner']}")
        plan = self._plan(options["plan"])
        if options["complimentary"] is not None and plan is None:
            raise CommandError("--complimentary grants a plan: name it with --plan")
        provider_key = os.environ.get("AGENT_PROVIDER_KEY", "") or None
        new = {
            "owner": owner,
            "name": options["name"],
            "provider": options["provider"],
            "provider_key": provider_key,
        }
        checkout_url = None
        try:
            if plan is None:
                agent = create_agent(**new, source="operator")
            elif options["complimentary"] is not None:
                agent = grant_complimentary(**new, plan=plan, reason=options["complimentary"])
            else:
                site = options["site_url"] or settings.CONTROL_PLANE_URL
                started = start_checkout(
                    **new,
                    plan=plan,
                    actor=None,
                    source="operator",
                    absolute_url=lambda path: urljoin(site, path),
                )
                agent, checkout_url = started.agent, started.checkout_url
        except ValidationError as exc:
            raise CommandError(describe_validation_error(exc)) from exc
        except BillingError as exc:
            raise CommandError(str(exc)) from exc
        self._report(agent, plan=plan, checkout_url=checkout_url, provider_key=provider_key)
        self.stdout.write(str(agent.id))

    def _plan(self, name: str | None) -> Plan | None:
        if name is None:
            return None
        plan = Plan.objects.filter(name=name).first()
        if plan is None:
            names = ", ".join(Plan.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"no plan called {name!r} (plans: {names})")
        return plan

    def _report(
        self, agent: Agent, *, plan: Plan | None, checkout_url: str | None, provider_key: str | None
    ) -> None:
        if not provider_key:
            self.stderr.write(
                "WARNING: AGENT_PROVIDER_KEY is not set; this agent has no provider key and "
                "its model calls will be refused until one is set."
            )
        on = f" on the {plan.name} plan" if plan else ""
        self.stderr.write(
            f"Created agent {agent.name} for {agent.owner.email}{on} ({agent.status})"
        )
        if plan is None:
            self.stderr.write(
                "No plan pays for this agent: it cannot be deployed or started. "
                "Create it with --plan to have it paid for."
            )
        elif checkout_url:
            self.stderr.write(f"It runs once paid for. The owner pays at: {checkout_url}")
