"""python manage.py demo_setup --port PORT [--docker-url URL] [--email EMAIL] (for ./dev demo)"""

from __future__ import annotations

import shlex
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from droplets.docker_client import DropletError
from safer_claw.demo import prepare_demo
from safer_claw.errors import describe_validation_error


class Command(BaseCommand):
    help = (
        "Register this machine's Docker engine as the droplet 'local', its agents dialling "
        "the control plane at their network's gateway on PORT, and make the demo user (a "
        "new password and API token each run). Prints shell assignments for ./dev demo."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--docker-url", default="unix:///var/run/docker.sock")
        parser.add_argument("--email", default="demo@example.com")

    def handle(self, *args: object, **options: Any) -> None:
        try:
            demo = prepare_demo(
                docker_url=options["docker_url"], port=options["port"], email=options["email"]
            )
        except ValidationError as exc:
            raise CommandError(describe_validation_error(exc)) from exc
        except DropletError as exc:
            raise CommandError(f"the local Docker engine: {exc}") from exc
        values = {
            "DEMO_SUBNET": demo.subnet,
            "DEMO_GATEWAY": demo.gateway,
            "DEMO_CONTROL_PLANE_URL": demo.control_plane_url,
            "DEMO_EMAIL": demo.email,
            "DEMO_PASSWORD": demo.password,
            "DEMO_API_TOKEN": demo.api_token,
        }
        for name, value in values.items():
            self.stdout.write(f"{name}={shlex.quote(value)}")
