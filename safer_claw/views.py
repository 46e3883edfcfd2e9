"""Project-wide views: the root redirect and error pages (JSON under /api/)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static

from safer_claw.api import error_response

JSON_PREFIXES = ("/api/", "/webhooks/", "/gateway/", "/agent-api/")


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
    if _wants_json(request):
        return error_response(500, "server_error", "Something went wrong on our side.")
    return render(request, "errors/500.html", status=500)
