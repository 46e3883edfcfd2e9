"""The one place that talks to the DigitalOcean API (plain HTTP with httpx).

Only what the control plane needs: the droplets that carry a tag. Settings are
read on every call, so tests (and a changed environment) take effect at once.
Every failure leaves this module as a :class:`DigitalOceanError` whose
``permanent`` flag says whether retrying can help, and whose message never
contains the API token.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings

# DigitalOcean's largest page. Fewer pages means fewer requests against the
# account's rate limit (5,000 requests an hour, shared by every token).
PER_PAGE = 200
# Short: the sync runs from a command or a periodic task and must not hang on
# an API that does not answer; a retry later is cheap.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# A guard against a server that hands out `next` links forever: 50 pages of
# 200 droplets is far more than this service will ever run.
MAX_PAGES = 50

API_ACCESS_HELP = (
    "create a read-only personal access token at "
    "https://cloud.digitalocean.com/account/api/tokens and set DIGITALOCEAN_API_TOKEN"
)


class DigitalOceanError(Exception):
    """A DigitalOcean API call failed; ``permanent`` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class DODroplet:
    """The fields of a DigitalOcean droplet that the control plane uses."""

    id: int
    name: str
    public_ipv4: str | None  # None while a new droplet has no address yet
    vcpus: int
    memory_mb: int
    status: str  # DigitalOcean's: new, active, off or archive
    region: str  # the region's slug, e.g. "fra1"


def list_tagged_droplets(*, tag: str) -> list[DODroplet]:
    """Every droplet that carries ``tag``, across all pages of the listing.

    Calls ``GET {DIGITALOCEAN_API_URL}/v2/droplets?tag_name=TAG&per_page=200``
    with the bearer token and follows ``links.pages.next`` only while it stays
    on the configured API origin (scheme, host and port): the token is never
    sent anywhere else. Raises DigitalOceanError on any failure, including a
    missing token, so a caller never acts on a partial listing.
    """
    if not tag:
        raise DigitalOceanError("no droplet tag given", permanent=True)
    token = _token()
    base_url = _base_url()
    try:
        return _fetch_all(base_url=base_url, token=token, tag=tag)
    except DigitalOceanError as exc:
        # Belt and braces: text that came from outside (an error body, an
        # httpx message) is scrubbed of the token before it can be logged.
        raise DigitalOceanError(_redact(str(exc), token), permanent=exc.permanent) from None


def _token() -> str:
    token = settings.DIGITALOCEAN_API_TOKEN
    if not token:
        raise DigitalOceanError(
            f"DIGITALOCEAN_API_TOKEN is not set: {API_ACCESS_HELP}", permanent=True
        )
    return token


def _base_url() -> str:
    base_url = settings.DIGITALOCEAN_API_URL.rstrip("/")
    parts = urlsplit(base_url)
    # Plain http would put the token on the wire; only a local stand-in gets it.
    if not parts.hostname or not (
        parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))
    ):
        raise DigitalOceanError(
            f"DIGITALOCEAN_API_URL must be an https:// URL (http:// only on this machine), "
            f"not {base_url!r}",
            permanent=True,
        )
    return base_url


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _fetch_all(*, base_url: str, token: str, tag: str) -> list[DODroplet]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    url = f"{base_url}/v2/droplets"
    params: dict[str, Any] | None = {"tag_name": tag, "per_page": PER_PAGE}
    droplets: list[DODroplet] = []
    # Redirects are not followed: the token goes only where
    # DIGITALOCEAN_API_URL and its own next-page links say.
    with httpx.Client(timeout=TIMEOUT, headers=headers, follow_redirects=False) as client:
        for _ in range(MAX_PAGES):
            body = _get_json(client, url, params=params)
            droplets.extend(_parse_droplet(item) for item in _droplet_items(body))
            next_url = _next_link(body)
            if not next_url:
                return droplets
            url = _same_origin_or_refuse(urljoin(url, next_url), base_url)
            params = None  # the next link carries the query itself
    raise DigitalOceanError(
        f"DigitalOcean's droplet listing did not end after {MAX_PAGES} pages", permanent=False
    )


def _get_json(client: httpx.Client, url: str, *, params: dict[str, Any] | None) -> Any:
    try:
        response = client.get(url, params=params)
    except httpx.TimeoutException:
        raise DigitalOceanError("the DigitalOcean API timed out", permanent=False) from None
    except httpx.HTTPError as exc:
        raise DigitalOceanError(
            f"the DigitalOcean API is unreachable ({type(exc).__name__}: {_short(str(exc))})",
            permanent=False,
        ) from None
    if response.status_code != 200:
        raise _status_error(response)
    try:
        return response.json()
    except ValueError:
        raise DigitalOceanError(
            "the DigitalOcean API answered 200 with a body that is not JSON", permanent=False
        ) from None


def _status_error(response: httpx.Response) -> DigitalOceanError:
    status = response.status_code
    detail = f"{status} {_api_message(response)}"
    if status in (401, 403):
        return DigitalOceanError(
            f"DigitalOcean refused the API token ({detail}): {API_ACCESS_HELP}", permanent=True
        )
    if status == 404:
        return DigitalOceanError(
            f"DigitalOcean has no such endpoint ({detail}); check DIGITALOCEAN_API_URL",
            permanent=True,
        )
    if status == 429:
        return DigitalOceanError(f"DigitalOcean's rate limit was hit ({detail})", permanent=False)
    if status >= 500:
        return DigitalOceanError(f"DigitalOcean had a server error ({detail})", permanent=False)
    if 300 <= status < 400:
        return DigitalOceanError(
            f"the DigitalOcean API redirected ({status}) and redirects are not followed; "
            "check DIGITALOCEAN_API_URL",
            permanent=True,
        )
    return DigitalOceanError(f"DigitalOcean refused the request ({detail})", permanent=True)


def _api_message(response: httpx.Response) -> str:
    """DigitalOcean's own words from an error body ``{"id": ..., "message": ...}``."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "error"
    if not isinstance(body, dict):
        return response.reason_phrase or "error"
    parts = [str(body[key]) for key in ("id", "message") if body.get(key)]
    return _short(": ".join(parts)) if parts else response.reason_phrase or "error"


def _droplet_items(body: Any) -> list[Any]:
    items = body.get("droplets") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise DigitalOceanError(
            "the DigitalOcean API answered without a `droplets` list", permanent=False
        )
    return items


def _next_link(body: dict[str, Any]) -> str | None:
    """``links.pages.next``; DigitalOcean leaves it out on the last page."""
    links = body.get("links")
    pages = links.get("pages") if isinstance(links, dict) else None
    next_url = pages.get("next") if isinstance(pages, dict) else None
    return next_url if isinstance(next_url, str) and next_url else None


def _same_origin_or_refuse(url: str, base_url: str) -> str:
    """``url`` when it is on the API's origin; otherwise refuse to follow it.

    Stopping at the foreign link instead would hand the caller a partial
    listing, and the sync would take the droplets it did not see out of service.
    """
    if _origin(url) != _origin(base_url):
        where = urlsplit(url).hostname or "?"
        raise DigitalOceanError(
            f"DigitalOcean's next-page link points to another origin ({where}); "
            "not following it with the API token",
            permanent=True,
        )
    return url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or default_port)


def _parse_droplet(item: Any) -> DODroplet:
    try:
        return DODroplet(
            id=int(item["id"]),
            name=str(item["name"]),
            public_ipv4=_public_ipv4(item.get("networks") or {}),
            vcpus=int(item["vcpus"]),
            memory_mb=int(item["memory"]),
            status=str(item.get("status", "")),
            region=str((item.get("region") or {}).get("slug", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DigitalOceanError(
            "the DigitalOcean API answered with a droplet this client cannot read",
            permanent=False,
        ) from None


def _public_ipv4(networks: dict[str, Any]) -> str | None:
    for network in networks.get("v4") or []:
        if network.get("type") == "public" and network.get("ip_address"):
            return str(network["ip_address"])
    return None


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "…"


def _redact(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text
