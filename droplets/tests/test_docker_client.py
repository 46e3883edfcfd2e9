"""Mutual TLS to a droplet: the server is verified, the client is required."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from pathlib import Path

import docker
import pytest

from droplets.containers import ping
from droplets.docker_client import DropletUnreachable, connect
from droplets.models import Droplet

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


class PingHandler(http.server.BaseHTTPRequestHandler):
    """Answers like a Docker engine would, so only TLS can make a client refuse it."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Api-Version", "1.41")
        self.end_headers()
        self.wfile.write(b"OK")

    def do_HEAD(self):
        self.do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def impostor_engine(cert: str, key: str):
    """A TLS 'engine' on 127.0.0.3 whose certificate comes from another CA."""
    server = http.server.ThreadingHTTPServer(("127.0.0.3", 0), PingHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.3:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def droplet_at(url: str, ca: str, tls_droplet: Droplet) -> Droplet:
    return Droplet(
        name="impostor",
        ip_address="127.0.0.3",
        max_capacity=1,
        docker_url=url,
        tls_ca_cert=Path(ca).read_text(),
        tls_client_cert=tls_droplet.tls_client_cert,
        tls_client_key=tls_droplet.tls_client_key,
    )


@pytest.mark.parametrize("requests_ca_bundle", [False, True], ids=["plain", "REQUESTS_CA_BUNDLE"])
def test_client_refuses_an_impostor_engine(
    droplet_env, tls_droplet, monkeypatch, requests_ca_bundle
):
    impostor_ca = droplet_env["SAFERCLAW_IMPOSTOR_CA"]
    if requests_ca_bundle:  # the trap of docker-py #2433: the environment's CA wins
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", impostor_ca)
        monkeypatch.setenv("CURL_CA_BUNDLE", impostor_ca)
    with impostor_engine(
        droplet_env["SAFERCLAW_IMPOSTOR_CERT"], droplet_env["SAFERCLAW_IMPOSTOR_KEY"]
    ) as url:
        # Control: trusting the impostor's CA, the same server answers the ping.
        ping(droplet_at(url, impostor_ca, tls_droplet))
        with pytest.raises(DropletUnreachable, match="TLS handshake failed"):
            ping(droplet_at(url, droplet_env["SAFERCLAW_TLS_CA"], tls_droplet))


def test_real_engine_is_trusted_through_its_own_ca_whatever_the_environment_says(
    droplet_env, tls_droplet, monkeypatch
):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", droplet_env["SAFERCLAW_IMPOSTOR_CA"])
    ping(tls_droplet)


def test_engine_refuses_a_client_without_a_certificate(droplet_env):
    tls = docker.tls.TLSConfig(ca_cert=droplet_env["SAFERCLAW_TLS_CA"], verify=True)
    client = docker.DockerClient(
        base_url="https://127.0.0.3:2376", tls=tls, version="1.41", timeout=5
    )
    client.api.trust_env = False
    with pytest.raises(Exception, match=r"(?i)certificate|ssl|connection"):
        client.ping()


def test_engine_refuses_a_client_certificate_from_another_ca(droplet_env, tls_droplet):
    droplet = Droplet(
        name="wrong-client",
        ip_address="127.0.0.3",
        max_capacity=1,
        docker_url=tls_droplet.docker_url,
        tls_ca_cert=tls_droplet.tls_ca_cert,
        tls_client_cert=Path(droplet_env["SAFERCLAW_IMPOSTOR_CLIENT_CERT"]).read_text(),
        tls_client_key=Path(droplet_env["SAFERCLAW_IMPOSTOR_CLIENT_KEY"]).read_text(),
    )
    with pytest.raises(DropletUnreachable):
        ping(droplet)


def test_the_client_key_exists_on_disk_only_while_connected(tls_droplet):
    with connect(tls_droplet) as client:
        key_path = Path(client.api.cert[1])
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert key_path.parent.stat().st_mode & 0o777 == 0o700
        assert key_path.read_text() == tls_droplet.tls_client_key
        client.ping()
    assert not key_path.exists()
    assert not key_path.parent.exists()
