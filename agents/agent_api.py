"""The API agents call from their containers, authenticated by agent token.

``GET inbox`` (long poll) hands out the run to work on; ``POST
runs/<id>/reply`` ends it; ``GET tools`` lists the tools the agent may call
and ``POST tools/<name>`` calls one; ``POST heartbeat`` says the runtime is
alive while it is busy with a run. Every endpoint reads the token afresh, so
a revocation (the kill switch) refuses the very next call.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers

from agents import inbox_wakeups
from agents.conversation_services import (
    AgentNotServing,
    RunEnded,
    RunNotFound,
    hand_out_run,
    recent_history,
    store_reply,
)
from agents.conversations import Message, Run, StopReason
from agents.models import Agent, AgentStatus, AIProvider
from agents.tokens import token_agent
from agents.tools import TOOL_NAME, Tool, ToolRefused, call_tool, offered_tools
from safer_claw import boundary
from safer_claw.api import error_response, method_not_allowed, only_methods

MAX_BODY_BYTES = 256 * 1024
# Writes to last_activity_at at most this often per agent: polls are frequent.
ACTIVITY_RESOLUTION_SECONDS = 10


def _bearer(request: HttpRequest) -> str:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def _invalid_token() -> JsonResponse:
    return error_response(401, "invalid_token", "Missing, unknown or revoked agent token.")


def touch_activity(agent_id: Any) -> None:
    """Record that the runtime was heard from: its liveness (no Docker health check)."""
    now = timezone.now()
    stale = now - dt.timedelta(seconds=ACTIVITY_RESOLUTION_SECONDS)
    Agent.objects.filter(
        Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=stale), pk=agent_id
    ).update(last_activity_at=now)


def _json_body(request: HttpRequest) -> Any:
    """The request's JSON, or an error response to send instead."""
    if len(request.body) > MAX_BODY_BYTES:
        return error_response(413, "too_large", f"The body is over {MAX_BODY_BYTES} bytes.")
    try:
        return boundary.loads(request.body or b"null")
    except boundary.BadInput as exc:
        return error_response(400, "invalid_json", exc.message)


@csrf_exempt  # token-authenticated, never a browser session
@only_methods("POST")
def heartbeat(request: HttpRequest) -> HttpResponse:
    agent = token_agent(_bearer(request))
    if agent is None:
        return _invalid_token()
    touch_activity(agent.pk)
    return HttpResponse(status=204)


# --- Inbox (long poll) ------------------------------------------------------------------------


async def _in_db(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` (database work) off the event loop, then give its connection back.

    A waiting poll must not hold a pooled connection for its whole wait: with
    200 agents polling that would exhaust the pool.
    """

    def step() -> Any:
        try:
            return fn(*args)
        finally:
            if not connection.in_atomic_block:  # (a test's transaction)
                connection.close()

    return await sync_to_async(step)()


def _polling_agent(token: str) -> Agent | JsonResponse:
    agent = token_agent(token)
    if agent is None:
        return _invalid_token()
    touch_activity(agent.pk)
    if agent.status != AgentStatus.RUNNING or not agent.billing_active:
        return error_response(409, "agent_not_running", f"This agent is {agent.status}.")
    return agent


def _handout(agent: Agent) -> dict[str, Any] | JsonResponse | None:
    try:
        run = hand_out_run(agent=agent)
    except AgentNotServing as exc:
        return error_response(409, "agent_not_running", str(exc))
    if run is None:
        return None
    return inbox_payload(Agent.objects.get(pk=agent.pk), run)


async def inbox(request: HttpRequest) -> HttpResponse:
    """Long poll: the run to work on (200), or 204 when nothing came within ``wait`` s."""
    if request.method != "GET":
        return method_not_allowed("GET")
    try:
        wait = float(request.GET.get("wait", settings.AGENT_INBOX_WAIT_SECONDS))
    except ValueError:
        wait = -1
    if not 0 <= wait <= settings.AGENT_INBOX_WAIT_SECONDS:
        return error_response(
            400, "invalid_wait", f"wait must be 0 to {settings.AGENT_INBOX_WAIT_SECONDS} seconds."
        )
    agent = await _in_db(_polling_agent, _bearer(request))
    if isinstance(agent, JsonResponse):
        return agent
    # Subscribed before the first look, so a message landing in between still wakes us.
    waiter = inbox_wakeups.subscribe(agent.pk)
    try:
        deadline = time.monotonic() + wait
        while True:
            found = await _in_db(_handout, agent)
            if isinstance(found, JsonResponse):
                return found
            if found is not None:
                return JsonResponse(found)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return HttpResponse(status=204)
            await waiter.wait(inbox_wakeups.wait_slice(remaining))
    finally:
        inbox_wakeups.unsubscribe(waiter)


def model_for(agent: Agent) -> dict[str, str]:
    name = (
        settings.AGENT_MODEL_ANTHROPIC
        if agent.ai_provider == AIProvider.ANTHROPIC
        else settings.AGENT_MODEL_OPENAI
    )
    return {"provider": agent.ai_provider, "name": name}


def tool_json(tool: Tool) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}


def inbox_payload(agent: Agent, run: Run) -> dict[str, Any]:
    """Everything the runtime needs for one run; it imports nothing of ours."""
    message = run.message
    history = recent_history(
        run, limit=settings.AGENT_HISTORY_MESSAGES, max_chars=settings.AGENT_HISTORY_MAX_CHARS
    )
    return {
        "run": {
            "id": str(run.id),
            "handed_out": run.handed_out,
            "started_at": run.started_at.isoformat(),
            "deadline": run.deadline.isoformat(),
            "limits": {
                "max_model_steps": agent.max_model_steps_per_run,
                "max_tool_calls": agent.max_tool_calls_per_run,
                "max_runtime_seconds": agent.max_runtime_seconds,
                "max_tokens_per_call": agent.max_tokens_per_request,
            },
            # A run handed out again continues from what it has used.
            "used": {"model_calls": run.model_calls, "tool_calls": run.tool_calls},
        },
        "message": {
            "id": message.id,
            "role": message.role,
            "content": message.content,
            "created_at": message.created_at.isoformat(),
        },
        "history": [{"role": m.role, "content": m.content} for m in history],
        "model": model_for(agent),
        "system_prompt": settings.AGENT_SYSTEM_PROMPT,
        "owner": {"instructions": agent.instructions, "time_zone": agent.time_zone},
        "tools": [tool_json(tool) for tool in offered_tools(agent)],
    }


# --- Reply ------------------------------------------------------------------------------------


class ReplySerializer(serializers.Serializer):
    content = serializers.CharField(max_length=Message.MAX_CONTENT_CHARS, trim_whitespace=False)
    stop_reason = serializers.ChoiceField(
        choices=[
            StopReason.COMPLETED,
            StopReason.MAX_MODEL_STEPS,
            StopReason.MAX_TOOL_CALLS,
            StopReason.MAX_RUNTIME,
            StopReason.MAX_TOKENS,
            StopReason.ERROR,
        ],
        default=StopReason.COMPLETED,
    )
    # The runtime's own count, kept beside the control plane's (never instead of it).
    model_steps = serializers.IntegerField(min_value=0, max_value=1_000_000, required=False)
    tool_calls = serializers.IntegerField(min_value=0, max_value=1_000_000, required=False)


@csrf_exempt
@only_methods("POST")
def reply(request: HttpRequest, run_id: Any) -> HttpResponse:
    agent = token_agent(_bearer(request))
    if agent is None:
        return _invalid_token()
    touch_activity(agent.pk)
    body = _json_body(request)
    if isinstance(body, JsonResponse):
        return body
    data = ReplySerializer(data=body if isinstance(body, dict) else {})
    if not data.is_valid():
        field, problems = next(iter(data.errors.items()))
        return error_response(400, "invalid", f"{field}: {problems[0]}")
    values = dict(data.validated_data)
    try:
        message = store_reply(
            agent=agent,
            run_id=run_id,
            content=values.pop("content"),
            stop_reason=values.pop("stop_reason"),
            account=values,
        )
    except RunNotFound:
        return error_response(404, "not_found", "No such run for this agent.")
    except RunEnded as exc:
        return error_response(
            409, "run_ended", str(exc), run_status=exc.run.status, stop_reason=exc.run.stop_reason
        )
    return JsonResponse({"message_id": message.id, "run": {"id": str(run_id), "status": "done"}})


# --- Tools --------------------------------------------------------------------------------------


@only_methods("GET")
def tools(request: HttpRequest) -> HttpResponse:
    agent = token_agent(_bearer(request))
    if agent is None:
        return _invalid_token()
    return JsonResponse({"tools": [tool_json(tool) for tool in offered_tools(agent)]})


@csrf_exempt
@only_methods("POST")
def tool_call(request: HttpRequest, name: str) -> HttpResponse:
    """One tool call; the result is data from outside, so it is marked untrusted."""
    agent = token_agent(_bearer(request))
    if agent is None:
        return _invalid_token()
    touch_activity(agent.pk)
    if not TOOL_NAME.match(name):
        return error_response(404, "unknown_tool", "No tool has that name.")
    body = _json_body(request)
    if isinstance(body, JsonResponse):
        return body
    if not isinstance(body, dict) or set(body) - {"arguments"}:
        return error_response(400, "invalid", 'The body must be {"arguments": {...}}.')
    try:
        outcome = call_tool(agent=agent, name=name, arguments=body.get("arguments", {}))
    except ToolRefused as refusal:
        return error_response(refusal.status, refusal.code, str(refusal))
    if outcome.error is not None:
        return error_response(
            502, "tool_failed", str(outcome.error), retryable=not outcome.error.permanent
        )
    return JsonResponse({"result": outcome.result, "untrusted": True})
