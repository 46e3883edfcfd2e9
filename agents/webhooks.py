"""POST /webhooks/agent-kill/<agent_id>: the kill switch (see agents.kill_switch).

A plain Django view on purpose: no DRF throttling, cache or session, so it
answers with only the database and the droplet up (Redis and Celery may be down).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from agents.kill_switch import handle_kill_call


@csrf_exempt  # authenticated by its HMAC signature, never by a browser session
def agent_kill(request: HttpRequest, agent_id: str) -> HttpResponse:
    # One byte past the limit is enough to refuse; a larger body is never read.
    body = request.read(settings.KILL_SWITCH_MAX_BODY_BYTES + 1)
    result = handle_kill_call(
        agent_id=agent_id,
        method=request.method or "",
        headers=request.headers,
        body=body,
        source_ip=request.META.get("REMOTE_ADDR"),
    )
    response = JsonResponse(result.body, status=result.status)
    if result.status == 405:
        response["Allow"] = "POST"
    if result.deprecated:
        # RFC 9745: the v1 signature that was accepted is deprecated; sign with v2.
        response["Deprecation"] = "true"
    return response
