"""Request-wide middleware: the input boundary (first in the stack) and the trailing-slash rule."""

from __future__ import annotations

import logging

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware

from safer_claw import boundary
from safer_claw.api import error_response
from safer_claw.views import JSON_PREFIXES

logger = logging.getLogger("safer_claw.boundary")


class BoundaryMiddleware:
    """Refuse a request whose path, query, headers, cookies or Host break the rules in
    ``safer_claw.boundary``, before the session lookup or any view reads them.

    A 400 in the path's own shape (JSON under the API, webhook and agent paths),
    logged as a warning: a bad request is the client's problem, not an error of ours.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = request_problem(request)
        if problem is not None:
            logger.warning("refused %s %r: %s", request.method, request.path[:200], problem)
            return bad_request(request, problem)
        return self.get_response(request)


def request_problem(request: HttpRequest) -> str | None:
    """What is wrong with the request, in words, or None."""
    try:
        boundary.check_path(request.path)
        boundary.check_query(_query_pairs(request))
        boundary.check_headers(_raw_headers(request))
    except boundary.BadInput as exc:
        return exc.message
    problem = boundary.cookie_problem(request.COOKIES)
    if problem is not None:
        return problem.message
    try:
        request.get_host()
    except DisallowedHost:
        return "The Host header names a host this service does not answer for."
    return None


def _query_pairs(request: HttpRequest) -> list[tuple[str, str]]:
    return [(key, value) for key, values in request.GET.lists() for value in values]


def _raw_headers(request: HttpRequest) -> list[tuple[bytes, bytes]]:
    # WSGI (and Django's ASGI handler) hand header values over as latin-1 text.
    return [
        (name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
        for name, value in request.META.items()
        if name.startswith("HTTP_") and isinstance(value, str)
    ]


def bad_request(request: HttpRequest, message: str) -> HttpResponse:
    if request.path.startswith(JSON_PREFIXES):
        return error_response(400, "bad_request", message)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


class CommonMiddleware(DjangoCommonMiddleware):
    """Django's, except that a write to an API path without its trailing slash is
    told the right URL (a JSON 404) instead of redirected: a client following a
    301 or 302 resends it as a GET, and the write is lost."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if (
            response.status_code == 404
            and request.method not in ("GET", "HEAD")
            and request.path.startswith(JSON_PREFIXES)
            and self.should_redirect_with_slash(request)
        ):
            url = f"{request.path}/"
            return error_response(
                404, "not_found", f"Not found. The URL ends with a slash: {url}", url=url
            )
        return super().process_response(request, response)
