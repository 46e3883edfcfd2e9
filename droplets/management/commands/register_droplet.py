"""python manage.py register_droplet --name NAME --ip IP --capacity N [TLS files…]"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from droplets.services import register_droplet
from safer_claw.errors import describe_validation_error


def _read(path: str | None, what: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {what} file {path}: {exc.strerror}") from exc


class Command(BaseCommand):
    help = "Register a pre-provisioned droplet (a Docker host) and print its id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--ip", required=True, help="The droplet's IP address.")
        parser.add_argument("--capacity", type=int, required=True, help="Max agent containers.")
        parser.add_argument(
            "--docker-url", default="", help="Default tcp://IP:2376; unix:///… for a local host."
        )
        parser.add_argument("--tls-ca", help="PEM file: the CA that signed the daemon's cert.")
        parser.add_argument("--tls-cert", help="PEM file: our client certificate.")
        parser.add_argument("--tls-key", help="PEM file: our client key (stored encrypted).")
        parser.add_argument("--vcpus", type=int, default=1)
        parser.add_argument("--memory-mb", type=int, default=1024)
        parser.add_argument("--digitalocean-id", type=int)
        parser.add_argument(
            "--agent-subnet",
            default="",
            help="The agents' network, as the bootstrap's firewall covers it (e.g. 172.31.1.0/24).",
        )
        parser.add_argument(
            "--control-plane-url",
            default="",
            help="The control plane as this droplet's containers reach it (default: "
            "CONTROL_PLANE_URL).",
        )

    def handle(self, *args: object, **options: object) -> None:
        try:
            droplet = register_droplet(
                name=options["name"],
                ip_address=options["ip"],
                max_capacity=options["capacity"],
                docker_url=options["docker_url"],
                tls_ca_cert=_read(options["tls_ca"], "--tls-ca"),
                tls_client_cert=_read(options["tls_cert"], "--tls-cert"),
                tls_client_key=_read(options["tls_key"], "--tls-key"),
                vcpus=options["vcpus"],
                memory_mb=options["memory_mb"],
                digitalocean_id=options["digitalocean_id"],
                agent_subnet=options["agent_subnet"],
                control_plane_url=options["control_plane_url"],
            )
        except ValidationError as exc:
            raise CommandError(describe_validation_error(exc)) from exc
        self.stderr.write(f"Registered droplet {droplet.name} at {droplet.docker_url}")
        self.stdout.write(str(droplet.id))
