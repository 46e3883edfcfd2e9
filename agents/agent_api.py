"""The API agents call from their containers, authenticated by agent token."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from agents.models import Agent
from agents.tokens import token_agent
from safer_claw.api import error_response


def _bearer(request: HttpRequest) -> str:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


@csrf_exempt  # token-authenticated, never a browser session
@require_POST
def heartbeat(request: HttpRequest) -> HttpResponse:
    agent = token_agent(_bearer(request))
    if agent is None:
        return error_response(401, "invalid_token", "Missing, unknown or revoked agent token.")
    Agent.objects.filter(pk=agent.pk).update(last_activity_at=timezone.now())
    return HttpResponse(status=204)
