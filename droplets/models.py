"""Droplets: the pre-provisioned Docker hosts that agent containers run on.

This app is infrastructure. It knows Docker endpoints and capacity, nothing of
agents, plans or users.
"""

from __future__ import annotations

import ipaddress
import uuid
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from safer_claw.fields import EncryptedTextField


class DropletStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    MAINTENANCE = "maintenance", "Maintenance"
    FULL = "full", "Full"
    UNREACHABLE = "unreachable", "Unreachable"


def validate_docker_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme == "unix" and parts.path:
        return
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        return
    raise ValidationError(
        "Docker URL must be tcp://HOST:PORT (mutual TLS) or unix:///path/to/docker.sock.",
        code="invalid_docker_url",
    )


def validate_pem_certificate(value: str) -> None:
    if not value:
        return
    try:
        x509.load_pem_x509_certificate(value.encode())
    except ValueError as exc:
        raise ValidationError("not a PEM certificate", code="invalid_certificate") from exc


def validate_pem_private_key(value: str) -> None:
    try:
        load_pem_private_key(value.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            "not an unencrypted PEM private key", code="invalid_private_key"
        ) from exc


class Droplet(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    digitalocean_id = models.BigIntegerField(
        "DigitalOcean id",
        null=True,
        blank=True,
        unique=True,
        help_text="Empty for a host that is not a DigitalOcean droplet.",
    )
    name = models.CharField(max_length=100, unique=True)
    ip_address = models.GenericIPAddressField("IP address", unique=True)
    status = models.CharField(
        max_length=16, choices=DropletStatus.choices, default=DropletStatus.ACTIVE
    )
    vcpus = models.PositiveSmallIntegerField("vCPUs", default=1, validators=[MinValueValidator(1)])
    memory_mb = models.PositiveIntegerField(
        "memory (MiB)", default=1024, validators=[MinValueValidator(64)]
    )
    max_capacity = models.PositiveIntegerField("max containers", validators=[MinValueValidator(1)])
    active_container_count = models.PositiveIntegerField(default=0)
    docker_url = models.CharField(
        "Docker URL",
        max_length=255,
        validators=[validate_docker_url],
        help_text="tcp://IP:2376 (mutual TLS) or unix:///var/run/docker.sock for a local host.",
    )
    tls_ca_cert = models.TextField(
        "TLS CA certificate", blank=True, validators=[validate_pem_certificate]
    )
    tls_client_cert = models.TextField(
        "TLS client certificate", blank=True, validators=[validate_pem_certificate]
    )
    tls_client_key = EncryptedTextField("TLS client key")
    agent_subnet = models.CharField(
        max_length=43,
        blank=True,
        help_text="Subnet of the agents' network, as the bootstrap script's firewall expects "
        "(e.g. 172.31.1.0/24). Empty: the engine picks one.",
    )
    control_plane_url = models.URLField(
        blank=True,
        help_text="The control plane as this droplet's containers reach it. "
        "Empty: CONTROL_PLANE_URL.",
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_capacity__gte=1), name="droplet_capacity_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(active_container_count__lte=models.F("max_capacity")),
                name="droplet_count_within_capacity",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.ip_address})"

    @property
    def uses_tls(self) -> bool:
        return self.docker_url.startswith("tcp://")

    @property
    def free_slots(self) -> int:
        return max(self.max_capacity - self.active_container_count, 0)

    def clean(self) -> None:
        if self.agent_subnet:
            try:
                ipaddress.ip_network(self.agent_subnet)
            except ValueError as exc:
                raise ValidationError({"agent_subnet": "not a subnet like 172.31.1.0/24"}) from exc
        # A TCP Docker endpoint without mutual TLS would hand root on the
        # droplet to anyone who can reach the port: refuse it.
        if self.docker_url and self.uses_tls:
            missing = [
                label
                for label, value in (
                    ("tls_ca_cert", self.tls_ca_cert),
                    ("tls_client_cert", self.tls_client_cert),
                    ("tls_client_key", self.tls_client_key),
                )
                if not value
            ]
            if missing:
                raise ValidationError(
                    {name: "required for a tcp:// Docker URL (mutual TLS)" for name in missing}
                )
        if self.tls_client_key:
            try:
                validate_pem_private_key(self.tls_client_key)
            except ValidationError as exc:
                raise ValidationError({"tls_client_key": exc.messages}) from exc


class DropletEvent(models.Model):
    """Something that happened to a droplet: health changes, repaired drift."""

    droplet = models.ForeignKey(Droplet, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.droplet.name}: {self.kind}"
