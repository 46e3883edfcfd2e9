"""The agent's integrations page, and connecting and disconnecting Google."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from agents.models import Agent, AgentStatus
from integrations.google import selectors, services
from integrations.google.capabilities import CAPABILITIES, google_configured
from integrations.google.client import GoogleFailed
from integrations.google.flow import start_flow, take_flow
from integrations.google.models import PendingRevocation

MAX_CODE_LENGTH = 2048


class _SeeOther(HttpResponseRedirect):
    status_code = 303  # the browser follows a POST's answer with a GET


def _owned_agent(request: HttpRequest, agent_id: uuid.UUID | str) -> Agent:
    """The agent if it is the user's; anyone else's answers 404."""
    return get_object_or_404(
        Agent.objects.exclude(status=AgentStatus.DELETED), pk=agent_id, owner=request.user
    )


def _page(agent: Agent) -> HttpResponse:
    return redirect("integrations:agent", agent_id=agent.pk)


def _redirect_uri(request: HttpRequest) -> str:
    return settings.GOOGLE_REDIRECT_URI or request.build_absolute_uri(
        reverse("integrations:google-callback")
    )


@login_required
@require_GET
def agent_integrations(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    integration, rows = selectors.capability_states(agent=agent)
    return render(
        request,
        "integrations/agent_integrations.html",
        {
            "agent": agent,
            "configured": google_configured(),
            "integration": integration,
            "rows": rows,
            "revocation_pending": PendingRevocation.objects.filter(agent=agent).exists(),
        },
    )


@login_required
@require_POST
def google_connect(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    capability = CAPABILITIES.get(request.POST.get("capability", ""))
    if capability is None:
        messages.error(request, "Choose Calendar, Gmail or Drive to connect.")
        return _page(agent)
    flow = start_flow(request.session, agent_id=str(agent.pk), capability=capability.key)
    try:
        url = services.connect_url(
            agent=agent,
            capability=capability,
            state=flow.state,
            code_verifier=flow.code_verifier,
            redirect_uri=_redirect_uri(request),
        )
    except services.Unavailable as exc:
        take_flow(request.session, flow.state)
        messages.error(request, str(exc))
        return _page(agent)
    return _SeeOther(url)


@login_required
@require_GET
def google_callback(request: HttpRequest) -> HttpResponse:
    """Where Google sends the owner back, with a code (or an error) and the state."""
    flow = take_flow(request.session, request.GET.get("state", "")[:256])
    if flow is None:
        # Forged, replayed, from another browser, or expired: nothing happens.
        return render(request, "integrations/google_callback_refused.html", status=400)
    agent = _owned_agent(request, flow.agent_id)
    capability = CAPABILITIES[flow.capability]
    error = request.GET.get("error", "")
    code = request.GET.get("code", "")
    if error or not code or len(code) > MAX_CODE_LENGTH:
        services.record_not_granted(
            agent=agent, actor=request.user, capability=capability, error=error or "no code"
        )
        messages.warning(request, f"{capability.label} was not connected: access was not granted.")
        return _page(agent)
    try:
        granted = services.complete_connect(
            agent=agent,
            actor=request.user,
            capability=capability,
            code=code,
            code_verifier=flow.code_verifier,
            redirect_uri=_redirect_uri(request),
        )
    except GoogleFailed as exc:
        messages.error(request, f"{capability.label} was not connected: {exc}. Please try again.")
        return _page(agent)
    if granted:
        messages.success(request, f"{capability.label} is connected, read-only.")
    else:
        messages.warning(
            request,
            f"{capability.label} was not granted at Google, so its tools stay off.",
        )
    return _page(agent)


@login_required
@require_POST
def google_disconnect(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    result = services.disconnect_google(agent=agent, actor=request.user)
    if not result.was_connected:
        messages.info(request, "Google was not connected.")
    elif result.revoked:
        messages.success(
            request, "Google is disconnected: access was revoked at Google and the tokens deleted."
        )
    else:
        messages.warning(
            request,
            "Google is disconnected: the tokens are deleted and no tool can use them. Google "
            "could not be reached to revoke the access; we keep trying in the background.",
        )
    return _page(agent)
