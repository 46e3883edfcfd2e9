"""The one place that talks to a droplet's Docker engine.

``connect(droplet)`` yields a ``docker.DockerClient`` for the droplet: mutual TLS
for ``tcp://`` endpoints (the server's certificate checked against the droplet's
CA, our client certificate presented), or the unix socket of a local engine.
The client key is decrypted only for the life of the client, into a 0600 file
in a private temporary folder (on /dev/shm when there is one) that is removed
right after. Every Docker or network failure leaves this module as a
:class:`DropletError` whose ``permanent`` flag says whether retrying can help.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from django.conf import settings

from droplets.models import Droplet

# The oldest Engine API we support (Debian's Docker 20.10). Pinning it skips
# the version negotiation round trip on every connection.
DOCKER_API_VERSION = "1.41"


class DropletError(Exception):
    """A droplet operation failed; ``permanent`` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool, not_found: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.not_found = not_found


class DropletUnreachable(DropletError):
    """The engine did not answer (network, TLS, timeout): worth retrying later."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


def translate(exc: Exception, *, action: str, droplet: Droplet) -> DropletError:
    """Our error for a failure of ``action`` on ``droplet``."""
    where = f"{action} on droplet {droplet.name}"
    if isinstance(exc, docker.errors.NotFound):
        detail = exc.explanation or "not found"
        return DropletError(f"{where}: {detail}", permanent=True, not_found=True)
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        detail = exc.explanation or str(exc)
        return DropletError(f"{where}: {detail}", permanent=400 <= status < 500)
    if isinstance(exc, requests.exceptions.SSLError):
        return DropletUnreachable(f"{where}: TLS handshake failed ({_short(exc)})")
    if isinstance(exc, requests.exceptions.Timeout):
        return DropletUnreachable(f"{where}: timed out")
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return DropletUnreachable(f"{where}: unreachable ({_short(exc)})")
    if isinstance(exc, docker.errors.DockerException):
        return DropletError(f"{where}: {exc}", permanent=False)
    raise exc


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"


def _private_dir() -> str | None:
    shm = Path("/dev/shm")  # noqa: S108 - memory-backed; the folder inside is private
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@contextlib.contextmanager
def connect(droplet: Droplet, *, timeout: float | None = None) -> Iterator[docker.DockerClient]:
    """A Docker client for ``droplet``, closed (and its key file gone) on exit."""
    timeout = timeout or settings.DOCKER_TIMEOUT_SECONDS
    if not droplet.uses_tls:
        client = docker.DockerClient(
            base_url=droplet.docker_url, version=DOCKER_API_VERSION, timeout=timeout
        )
        try:
            yield client
        finally:
            client.close()
        return

    with tempfile.TemporaryDirectory(prefix="saferclaw-tls-", dir=_private_dir()) as folder:
        paths = {name: Path(folder) / name for name in ("ca.pem", "cert.pem", "key.pem")}
        for name, text in (
            ("ca.pem", droplet.tls_ca_cert),
            ("cert.pem", droplet.tls_client_cert),
            ("key.pem", droplet.tls_client_key),
        ):
            fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text or "")
        # verify=True: without it docker-py does not check the server at all.
        tls = docker.tls.TLSConfig(
            client_cert=(str(paths["cert.pem"]), str(paths["key.pem"])),
            ca_cert=str(paths["ca.pem"]),
            verify=True,
        )
        client = docker.DockerClient(
            base_url=droplet.docker_url.replace("tcp://", "https://", 1),
            tls=tls,
            version=DOCKER_API_VERSION,
            timeout=timeout,
        )
        # Otherwise REQUESTS_CA_BUNDLE (or a proxy) from the environment would
        # silently replace the droplet's CA (docker-py #2433).
        client.api.trust_env = False
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def operation(droplet: Droplet, action: str, **kwargs: object) -> Iterator[docker.DockerClient]:
    """``connect`` plus error translation, for one named operation."""
    try:
        with connect(droplet, **kwargs) as client:
            yield client
    except DropletError:
        raise
    except Exception as exc:  # translate() re-raises what it does not know
        raise translate(exc, action=action, droplet=droplet) from exc
