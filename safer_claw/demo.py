"""`./dev demo`: this machine's Docker engine as a droplet, and a user to sign in with.

The one thing a local run gets wrong by default is the address agents dial: inside a
container 127.0.0.1 is the container itself. Here the droplet's control-plane URL is
the agents' network gateway (the host, as its containers see it), the address the
server is bound to and the firewall opens.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.db import transaction

from droplets.containers import AGENT_NETWORK, ensure_agent_network
from droplets.docker_client import operation
from droplets.models import Droplet, DropletStatus
from safer_claw.accounts.services import mint_api_token

DEMO_DROPLET = "local"
# Clear of Docker's default pools (172.17-31.x.0/16 are taken whole, /24s of 172.31 are
# not): the same subnet as the test suite's droplet 1, so on a machine that runs both
# they share one agents' network instead of fighting over it.
DEFAULT_SUBNET = "172.31.1.0/24"


@dataclass(frozen=True)
class Demo:
    subnet: str
    gateway: str
    control_plane_url: str
    email: str
    password: str
    api_token: str


def _existing_network(client) -> tuple[str, str] | None:
    """The subnet and gateway of the agents' network if the engine has one already."""
    for network in client.networks.list(names=[AGENT_NETWORK]):
        for pool in network.attrs.get("IPAM", {}).get("Config") or []:
            if pool.get("Subnet") and pool.get("Gateway"):
                return pool["Subnet"], pool["Gateway"]
    return None


def _local_droplet(*, docker_url: str, subnet: str, control_plane_url: str) -> Droplet:
    droplet = Droplet.objects.filter(name=DEMO_DROPLET).first() or Droplet(
        name=DEMO_DROPLET, ip_address="127.0.0.1", max_capacity=4, vcpus=1
    )
    droplet.docker_url = docker_url
    droplet.agent_subnet = subnet
    droplet.control_plane_url = control_plane_url
    droplet.status = DropletStatus.ACTIVE
    droplet.consecutive_failures = 0
    droplet.tls_client_key = droplet.tls_client_key or None
    droplet.full_clean()
    droplet.save()
    return droplet


def _demo_user(email: str) -> tuple[object, str]:
    """The demo user with a fresh password (printed once) and a verified address."""
    user = get_user_model().objects.filter(email__iexact=email).first()
    if user is None:
        user = get_user_model().objects.create_user(email=email)
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    user.save()
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user, password


def prepare_demo(*, docker_url: str, port: int, email: str) -> Demo:
    """Register (or refresh) the local engine as a droplet and make the demo user."""
    probe = Droplet(name=DEMO_DROPLET, docker_url=docker_url)
    with operation(probe, "look for the agents' network") as client:
        found = _existing_network(client)
    subnet, gateway = found or (
        DEFAULT_SUBNET,
        str(next(ipaddress.ip_network(DEFAULT_SUBNET).hosts())),
    )
    control_plane_url = f"http://{gateway}:{port}"
    with transaction.atomic():
        droplet = _local_droplet(
            docker_url=docker_url, subnet=subnet, control_plane_url=control_plane_url
        )
        user, password = _demo_user(email)
        _, token = mint_api_token(user=user)
    # The network now, not at the first deploy: the server binds to its gateway.
    with operation(droplet, "create the agents' network") as client:
        ensure_agent_network(client, droplet)
    return Demo(subnet, gateway, control_plane_url, email, password, token)
