"""Project-wide views: the root redirect and error pages (JSON under /api/)."""

from __future__ import annotations

import sys

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.templatetags.static import static

from safer_claw.api import error_response
from safer_claw.log_filters import DATABASE_DOWN

JSON_PREFIXES = ("/api/", "/webhooks/", "/gateway/", "/agent-api/")
RETRY_AFTER_SECONDS = "5"


def root(request: HttpRequest) -> HttpResponse:
    return redirect("dashboard:home")


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask every site for /favicon.ico (admin's pages name none)."""
    return redirect(static("favicon.svg"), permanent=True)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(JSON_PREFIXES)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return error_response(404, "not_found", "Not found.")
    return render(request, "errors/404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls this inside the failed request's `except` (on ASGI too:
    # asgiref re-raises it in the handler's thread), so the error is at hand.
    if isinstance(sys.exc_info()[1], DATABASE_DOWN):
        return database_unavailable(request)
    if _wants_json(request):
        return error_response(500, "server_error", "Something went wrong on our side.")
    return render(request, "errors/500.html", status=500)


def database_unavailable(request: HttpRequest) -> HttpResponse:
    """503 while the database is away: a clear, retryable answer in the path's
    own shape. The page is static HTML: rendering the site's layout would ask
    the database for the user again."""
    if _wants_json(request):
        response = error_response(
            503, "service_unavailable", "The service is briefly unavailable; retry shortly."
        )
    else:
        response = HttpResponse(
            render_to_string("errors/503.html"), status=503, content_type="text/html"
        )
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response
