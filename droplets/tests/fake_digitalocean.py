"""A local stand-in for the DigitalOcean API's droplet listing, for tests.

It speaks the real wire format of ``GET /v2/droplets`` (droplet objects with
``networks.v4``, ``region.slug`` and ``tags``; ``links.pages`` and
``meta.total``; DigitalOcean's ``{"id": ..., "message": ...}`` error bodies),
filters by ``tag_name``, pages by ``per_page``/``page``, accepts only its own
bearer token, can be told to fail, and records every request it gets. Import
the fixtures ``fake_digitalocean`` and ``digitalocean_api`` (their functions
end in ``_fixture``) into a test module.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

TOKEN = "dop_v1_fake_0123456789abcdef0123456789abcdef"
TAG = "saferclaw"
DEFAULT_PER_PAGE = 20  # DigitalOcean's default and maximum page sizes
MAX_PER_PAGE = 200

# DigitalOcean's error bodies, as its API sends them.
ERRORS: dict[int, dict[str, str]] = {
    401: {"id": "Unauthorized", "message": "Unable to authenticate you"},
    403: {"id": "forbidden", "message": "You do not have access for the attempted action."},
    404: {"id": "not_found", "message": "The resource you were accessing could not be found."},
    429: {"id": "too_many_requests", "message": "API Rate limit exceeded."},
    500: {"id": "server_error", "message": "Unexpected server-side error"},
    503: {"id": "service_unavailable", "message": "Service is currently unavailable."},
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None


def droplet_json(
    droplet_id: int,
    name: str,
    public_ip: str | None,
    *,
    tags: Sequence[str] = (TAG,),
    memory: int = 2048,
    vcpus: int = 2,
    region: str = "fra1",
    status: str = "active",
    private_ip: str | None = "10.110.0.2",
) -> dict[str, Any]:
    """A droplet object as ``GET /v2/droplets`` lists it (the fields that matter, and more)."""
    v4 = []
    # DigitalOcean often lists the private address first; clients must pick by type.
    if private_ip:
        v4.append(
            {"ip_address": private_ip, "netmask": "255.255.240.0", "gateway": "", "type": "private"}
        )
    if public_ip:
        gateway = public_ip.rsplit(".", 1)[0] + ".1"
        v4.append(
            {
                "ip_address": public_ip,
                "netmask": "255.255.240.0",
                "gateway": gateway,
                "type": "public",
            }
        )
    return {
        "id": droplet_id,
        "name": name,
        "memory": memory,
        "vcpus": vcpus,
        "disk": 50,
        "locked": False,
        "status": status,
        "kernel": None,
        "created_at": "2025-01-21T18:37:44Z",
        "features": ["monitoring", "droplet_agent"],
        "backup_ids": [],
        "snapshot_ids": [],
        "image": {"id": 161430941, "distribution": "Debian", "slug": "debian-12-x64"},
        "volume_ids": [],
        "size": {"slug": f"s-{vcpus}vcpu-{memory // 1024}gb", "memory": memory, "vcpus": vcpus},
        "size_slug": f"s-{vcpus}vcpu-{memory // 1024}gb",
        "networks": {"v4": v4, "v6": []},
        "region": {"name": region.upper(), "slug": region, "available": True},
        "tags": list(tags),
        "vpc_uuid": "760e09ef-dc84-11e8-981e-3cfdfeaae000",
    }


class FakeDigitalOcean:
    """The fake API on ``host`` (a free port). Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.droplets: list[dict[str, Any]] = []
        self.token = TOKEN
        self.max_per_page = MAX_PER_PAGE  # lower it to get several pages from a few droplets
        self.fail_with: int | None = None
        self.fail_on_page: int | None = None  # None: every page fails
        self.link_base: str | None = None  # where `links.pages` point; default: here
        self.redirect_to: str | None = None  # answer 302 with this Location
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((host, 0), handler)
        self.url = f"http://{host}:{self._server.server_port}"
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeDigitalOcean:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def add(self, droplet_id: int, name: str, public_ip: str | None, **kwargs: Any) -> None:
        """List one more droplet (see :func:`droplet_json` for the options)."""
        self.droplets.append(droplet_json(droplet_id, name, public_ip, **kwargs))

    def fail(self, status: int, *, on_page: int | None = None) -> None:
        """Answer ``status`` with DigitalOcean's error body (on one page or all)."""
        self.fail_with, self.fail_on_page = status, on_page

    def pages_requested(self) -> list[int]:
        return [int(request.query.get("page", "1")) for request in self.requests]

    def respond(self, request: RecordedRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The status, JSON body and extra headers for ``request``."""
        with self._lock:
            self.requests.append(request)
        if self.redirect_to:
            return 302, {}, {"Location": self.redirect_to}
        if request.authorization != f"Bearer {self.token}":
            return 401, ERRORS[401], {}
        if request.path.rstrip("/") != "/v2/droplets":
            return 404, ERRORS[404], {}
        page = max(_int(request.query.get("page"), 1), 1)
        if self.fail_with and self.fail_on_page in (None, page):
            headers = {"Retry-After": "60"} if self.fail_with == 429 else {}
            body = ERRORS.get(self.fail_with, {"id": "error", "message": "Injected failure"})
            return self.fail_with, body, headers
        return 200, self._listing(request.query, page), {}

    def _listing(self, query: dict[str, str], page: int) -> dict[str, Any]:
        per_page = min(max(_int(query.get("per_page"), DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
        per_page = min(per_page, self.max_per_page)
        tag = query.get("tag_name")
        matching = [d for d in self.droplets if tag is None or tag in d["tags"]]
        last = max(math.ceil(len(matching) / per_page), 1)
        start = (page - 1) * per_page

        def link(to_page: int) -> str:
            base = self.link_base or self.url
            return f"{base}/v2/droplets?{urlencode({**query, 'page': to_page})}"

        pages: dict[str, str] = {}
        if page > 1:
            pages.update(first=link(1), prev=link(page - 1))
        if page < last:
            pages.update(next=link(page + 1), last=link(last))
        return {
            "droplets": matching[start : start + per_page],
            "links": {"pages": pages},
            "meta": {"total": len(matching)},
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDigitalOcean

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method="GET",
            path=parts.path,
            query=dict(parse_qsl(parts.query)),
            authorization=self.headers.get("Authorization"),
        )
        status, body, headers = self.fake.respond(request)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("RateLimit-Limit", "5000")
        self.send_header("RateLimit-Remaining", "0" if status == 429 else "4999")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads ``fake.requests`` instead of stderr."""


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


# Named apart from their fixture names, so a test module can import them
# without its test arguments shadowing the import.
@pytest.fixture(name="fake_digitalocean")
def fake_digitalocean_fixture() -> Iterator[FakeDigitalOcean]:
    """A running fake DigitalOcean API on 127.0.0.1."""
    with FakeDigitalOcean() as fake:
        yield fake


@pytest.fixture(name="digitalocean_api")
def digitalocean_api_fixture(
    fake_digitalocean: FakeDigitalOcean, settings: Any
) -> FakeDigitalOcean:
    """The fake, with DIGITALOCEAN_API_URL, the token and the tag pointing at it."""
    settings.DIGITALOCEAN_API_URL = fake_digitalocean.url
    settings.DIGITALOCEAN_API_TOKEN = TOKEN
    settings.DIGITALOCEAN_DROPLET_TAG = TAG
    return fake_digitalocean
