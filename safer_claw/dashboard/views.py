"""Dashboard pages: the list of agents, each agent's page, and "stop all my agents".

Every view finds the agent through ``_owned_agent``: another user's agent, or a
deleted one, is a 404. Every change is a POST with CSRF; the service does the work.
"""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents import schedule_services
from agents.conversation_services import AgentNotServing, InboxFull, send_owner_message
from agents.conversations import Schedule
from agents.kill_switch import rotate_kill_secret
from agents.models import Agent, AgentStatus, InvalidTransition
from agents.services import DeployFailed, delete_agent, start_agent, stop_agent
from droplets.docker_client import DropletError
from safer_claw.dashboard import pages
from safer_claw.dashboard.forms import DeleteForm, InstructionsForm, MessageForm, ScheduleForm

S = AgentStatus


def _owned_agent(request: HttpRequest, agent_id: uuid.UUID) -> Agent:
    agents = Agent.objects.select_related("droplet").exclude(status=S.DELETED)
    return get_object_or_404(agents, pk=agent_id, owner=request.user)


def _to_page(agent: Agent) -> HttpResponse:
    return redirect("dashboard:agent", agent_id=agent.pk)


@login_required
@require_GET
def dashboard_home(request: HttpRequest) -> HttpResponse:
    agents = Agent.objects.filter(owner=request.user).exclude(status=S.DELETED)
    return render(request, "dashboard/home.html", {"agents": agents})


# --- The agent's page ---------------------------------------------------------------------


def _page(request: HttpRequest, agent: Agent, *, status: int = 200, **extra) -> HttpResponse:
    context = {
        **_live_context(agent),
        "schedules": pages.schedules_of(agent),
        "events": pages.recent_events(agent),
        "message_form": MessageForm(),
        "schedule_form": ScheduleForm(),
        "settings_form": InstructionsForm(
            initial={"instructions": agent.instructions, "time_zone": agent.time_zone}
        ),
        **extra,
    }
    return render(request, "agents/agent.html", context, status=status)


@login_required
@require_GET
def agent_page(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    return _page(request, _owned_agent(request, agent_id))


@login_required
@require_GET
@never_cache
def agent_live(request: HttpRequest, agent_id: uuid.UUID) -> JsonResponse:
    """What the page polls: its state, and the conversation when it changed."""
    agent = _owned_agent(request, agent_id)
    version = pages.conversation_version(agent)
    body = {
        "status": agent.status,
        "label": agent.get_status_display(),
        "reason": agent.status_reason,
        "version": version,
    }
    if request.GET.get("version") != version:
        context = _live_context(agent)
        for part in ("conversation", "usage", "actions"):
            body[part] = render_to_string(f"agents/_{part}.html", context, request)
    return JsonResponse(body)


def _live_context(agent: Agent) -> dict:
    """What the parts of the page that follow the agent live are rendered from."""
    since = pages.spending_since(agent)
    return {
        "agent": agent,
        "usage": pages.usage_of(agent),
        "charts": pages.usage_charts(agent),
        "since": since,
        "breakdown": pages.spending_breakdown(agent, since=since),
        "messages_list": pages.conversation(agent),
        "version": pages.conversation_version(agent),
        "can_start": agent.status in pages.STARTABLE,
        "can_stop": agent.status in pages.STOPPABLE_ONE,
    }


# --- Talking to it ------------------------------------------------------------------------


@login_required
@require_POST
def send_message(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """The chat box. The page's script posts it too and asks for JSON back."""
    agent = _owned_agent(request, agent_id)
    wants_json = "application/json" in request.headers.get("Accept", "")
    form = MessageForm(request.POST)
    error = None
    if not form.is_valid():
        error = " ".join(e for errors in form.errors.values() for e in errors)
    else:
        try:
            send_owner_message(agent=agent, content=form.cleaned_data["content"])
        except (AgentNotServing, InboxFull, ValidationError) as exc:
            error = _words(exc)
    if wants_json:
        return JsonResponse({"ok": error is None, "error": error}, status=400 if error else 201)
    if error:
        messages.error(request, f"Not sent: {error}")
    return _to_page(agent)


# --- Lifecycle ----------------------------------------------------------------------------


@login_required
@require_POST
def start(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    try:
        start_agent(agent=agent, actor=request.user, source="owner")
    except (InvalidTransition, DropletError, DeployFailed) as exc:
        messages.error(request, f"{agent.name} could not start: {_words(exc)}")
    else:
        messages.success(request, f"{agent.name} is starting.")
    return _to_page(agent)


@login_required
@require_POST
def stop(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    try:
        stop_agent(agent=agent, actor=request.user, source="owner", reason="stopped by its owner")
    except (InvalidTransition, DropletError) as exc:
        messages.error(request, f"{agent.name} could not stop: {_words(exc)}")
    else:
        messages.success(request, f"{agent.name} is stopped.")
    return _to_page(agent)


@login_required
@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    form = DeleteForm(request.POST or None, agent_name=agent.name)
    if request.method == "POST" and form.is_valid():
        try:
            delete_agent(agent=agent, actor=request.user, source="owner")
        except (InvalidTransition, DropletError) as exc:
            form.add_error(None, f"{agent.name} could not be deleted: {_words(exc)}")
        else:
            messages.success(request, f"{agent.name} was deleted; its plan is canceled.")
            return redirect("dashboard:home")
    return render(request, "agents/delete.html", {"agent": agent, "form": form})


@login_required
@require_http_methods(["GET", "POST"])
def stop_all(request: HttpRequest) -> HttpResponse:
    """The control in every page's header: a confirmation, then every agent stopped."""
    running = Agent.objects.filter(owner=request.user, status__in=pages.STOPPABLE)
    if request.method == "POST":
        outcomes = pages.stop_all_agents(owner=request.user)
        names = ", ".join(o.agent.name for o in outcomes) or "none were running"
        messages.success(request, f"Stopped all your agents ({names}).")
        return redirect("dashboard:home")
    return render(request, "agents/stop_all.html", {"running": running})


# --- Kill switch ----------------------------------------------------------------------------


@login_required
@require_POST
@never_cache
def kill_switch(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """Shows the agent's kill secret and a filled-in curl, only in answer to this POST
    (never in a page anyone can reload or a cache can keep); "rotate" makes a new one."""
    agent = _owned_agent(request, agent_id)
    if request.POST.get("action") == "rotate":
        secret = rotate_kill_secret(agent=agent, actor=request.user)
        messages.success(request, "A new kill secret is in place; the old one no longer works.")
    else:
        secret = agent.kill_secret  # None when it cannot be decrypted any more
    if not secret:
        messages.error(request, "This agent's kill secret cannot be read: make a new one.")
        return _to_page(agent)
    recipe = pages.kill_switch_recipe(
        agent=agent, base_url=request.build_absolute_uri("/"), secret=secret
    )
    return _page(request, agent, kill_secret=secret, kill_recipe=recipe)


# --- Schedules ----------------------------------------------------------------------------


@login_required
@require_POST
def add_schedule(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    return _apply_form(
        request,
        agent,
        ScheduleForm(request.POST),
        schedule_services.create_schedule,
        done="Schedule added.",
        form_name="schedule_form",
    )


@login_required
@require_POST
def delete_schedule(request: HttpRequest, agent_id: uuid.UUID, schedule_id: int) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    schedule = get_object_or_404(Schedule, pk=schedule_id, agent=agent)
    schedule_services.delete_schedule(schedule=schedule)
    messages.success(request, "Schedule deleted.")
    return _to_page(agent)


# --- Settings ----------------------------------------------------------------------------


@login_required
@require_POST
def save_settings(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    return _apply_form(
        request,
        agent,
        InstructionsForm(request.POST),
        schedule_services.set_instructions,
        done="Settings saved; they apply from the next run.",
        form_name="settings_form",
    )


def _apply_form(request, agent, form, service, *, done: str, form_name: str) -> HttpResponse:
    """Run ``service`` with the form's data; on a refusal show the page again with
    the form and its errors (a 400), on success go back to the page."""
    if form.is_valid():
        try:
            service(agent=agent, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, done)
            return _to_page(agent)
    return _page(request, agent, status=400, **{form_name: form})


def _words(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)
