"""The agents API (DESIGN.md): a user's own agents, by session (with CSRF) or API token.

Every view goes through ``AgentApi.get_agent``: another user's agent, or one
that is deleted, answers 404, never 403. Lifecycle errors become the API's
error shape in ``AgentApi.handle_exception``: 402 for an agent nothing pays
for, 409 for a wrong state, 503 for a droplet that cannot be reached.
Creating an agent is a billing act: ``POST /api/agents/`` is billing.apis.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from agents.kill_switch import rotate_kill_secret
from agents.models import Agent, AgentStatus, AIProvider, InvalidTransition, PaymentRequired
from agents.services import DeployFailed, delete_agent, start_agent, stop_agent
from droplets.containers import container_logs, container_state, container_stats
from droplets.docker_client import DropletError, DropletUnreachable
from droplets.models import Droplet

# --- Shared pieces -------------------------------------------------------------------------


class AgentsRateThrottle(UserRateThrottle):
    """Per-user rate for the agents API (settings: DEFAULT_THROTTLE_RATES["agents"])."""

    scope = "agents"


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "invalid_state"
    default_detail = "The agent is not in a state that allows this."


class PaymentRequiredError(APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_code = "payment_required"
    default_detail = "Nothing pays for this agent: its subscription is not active."


class DropletUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "droplet_unreachable"
    default_detail = "The agent's droplet cannot be reached; try again shortly."


class DropletFailed(APIException):
    status_code = status.HTTP_502_BAD_GATEWAY
    default_code = "droplet_error"
    default_detail = "The agent's droplet refused the operation."


ErrorSerializer = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorDetail",
            {"code": serializers.CharField(), "message": serializers.CharField()},
        )
    },
)
# Error answers any agent endpoint may give (DESIGN.md's error shape).
ERRORS = {code: ErrorSerializer for code in (401, 403, 404, 429)}


@extend_schema_serializer(component_name="Agent")
class AgentOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=AgentStatus.choices)
    status_reason = serializers.CharField()
    ai_provider = serializers.ChoiceField(choices=AIProvider.choices)
    provider_key_set = serializers.SerializerMethodField()
    droplet = serializers.CharField(source="droplet.name", allow_null=True, default=None)
    cpu_limit = serializers.DecimalField(max_digits=4, decimal_places=2)
    memory_limit = serializers.CharField()
    pids_limit = serializers.IntegerField()
    daily_token_cap = serializers.IntegerField()
    monthly_cost_cap = serializers.DecimalField(max_digits=10, decimal_places=2)
    last_activity_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_provider_key_set(self, agent: Agent) -> bool:
        return agent.ai_api_key is not None


class AgentApi(APIView):
    """Base for views about one user's agents: throttled per user, 404 if not theirs."""

    throttle_classes = [UserRateThrottle, AgentsRateThrottle]

    def get_agent(self, agent_id: Any) -> Agent:
        return get_object_or_404(
            Agent.objects.select_related("droplet").exclude(status=AgentStatus.DELETED),
            pk=agent_id,
            owner=self.request.user,
        )

    def handle_exception(self, exc: Exception) -> Response:
        return super().handle_exception(_api_error(exc))


def _api_error(exc: Exception) -> Exception:
    """The API exception for a lifecycle or droplet error (others pass through)."""
    if isinstance(exc, Http404):
        # The project's handler shapes DRF's own exceptions; Django's 404 is not one.
        return NotFound()
    if isinstance(exc, PaymentRequired):
        return PaymentRequiredError(str(exc))
    if isinstance(exc, InvalidTransition):
        return Conflict(str(exc), code="invalid_state")
    if isinstance(exc, DropletUnreachable):
        return DropletUnavailable(str(exc))
    if isinstance(exc, DropletError):
        return DropletFailed(str(exc))
    if isinstance(exc, DeployFailed):
        if exc.permanent:
            return DropletFailed(f"deploy failed: {exc}", code="deploy_failed")
        return DropletUnavailable(f"deploy failed: {exc}", code="deploy_failed")
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        return serializers.ValidationError(detail)
    return exc


# --- List, get, delete ----------------------------------------------------------------


class AgentListApi(AgentApi):
    @extend_schema(responses={200: AgentOutputSerializer(many=True), **ERRORS})
    def get(self, request: Request) -> Response:
        agents = (
            Agent.objects.filter(owner=request.user)
            .exclude(status=AgentStatus.DELETED)
            .select_related("droplet")
        )
        return Response(AgentOutputSerializer(agents, many=True).data)


class AgentDetailApi(AgentApi):
    @extend_schema(responses={200: AgentOutputSerializer, **ERRORS})
    def get(self, request: Request, agent_id: Any) -> Response:
        return Response(AgentOutputSerializer(self.get_agent(agent_id)).data)

    @extend_schema(
        responses={204: None, 409: ErrorSerializer, 503: ErrorSerializer, **ERRORS},
        description="Stop and remove the container, free its droplet slot; "
        "the agent's audit trail is kept.",
    )
    def delete(self, request: Request, agent_id: Any) -> Response:
        delete_agent(agent=self.get_agent(agent_id), actor=request.user, source="owner")
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Lifecycle actions ---------------------------------------------------------------------

ACTION_RESPONSES = {
    200: AgentOutputSerializer,
    409: ErrorSerializer,
    502: ErrorSerializer,
    503: ErrorSerializer,
    **ERRORS,
}


class AgentStartApi(AgentApi):
    @extend_schema(
        request=None,
        responses={**ACTION_RESPONSES, 402: ErrorSerializer},
        description="Run a stopped, paused or killed agent again. A killed agent "
        "starts afresh in a new container with a new token. 402 when nothing pays "
        "for the agent (its subscription is not active).",
    )
    def post(self, request: Request, agent_id: Any) -> Response:
        agent = start_agent(agent=self.get_agent(agent_id), actor=request.user, source="owner")
        return Response(AgentOutputSerializer(agent).data)


class AgentStopApi(AgentApi):
    @extend_schema(request=None, responses=ACTION_RESPONSES)
    def post(self, request: Request, agent_id: Any) -> Response:
        agent = stop_agent(
            agent=self.get_agent(agent_id),
            actor=request.user,
            source="owner",
            reason="stopped by its owner",
        )
        return Response(AgentOutputSerializer(agent).data)


class AgentKillSecretApi(AgentApi):
    @extend_schema_serializer(component_name="KillSecret")
    class OutputSerializer(serializers.Serializer):
        kill_secret = serializers.CharField()

    @extend_schema(
        request=None,
        responses={200: OutputSerializer, **ERRORS},
        description="Replace the agent's own kill switch secret and return the new one "
        "(shown this once). The old one stops working at once.",
    )
    def post(self, request: Request, agent_id: Any) -> Response:
        secret = rotate_kill_secret(agent=self.get_agent(agent_id), actor=request.user)
        return Response(self.OutputSerializer({"kill_secret": secret}).data)


# --- Status ------------------------------------------------------------------------------------


class AgentStatusApi(AgentApi):
    @extend_schema_serializer(component_name="AgentStatus")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="ContainerState")
        class ContainerSerializer(serializers.Serializer):
            id = serializers.CharField()
            status = serializers.CharField()
            running = serializers.BooleanField()
            exit_code = serializers.IntegerField(allow_null=True)
            oom_killed = serializers.BooleanField()
            restart_count = serializers.IntegerField()
            health = serializers.CharField(allow_null=True)
            started_at = serializers.CharField(allow_null=True)
            error = serializers.CharField(allow_blank=True)

        @extend_schema_serializer(component_name="ContainerResources")
        class ResourcesSerializer(serializers.Serializer):
            cpu_percent = serializers.FloatField()
            memory_bytes = serializers.IntegerField()
            memory_limit_bytes = serializers.IntegerField()

        id = serializers.UUIDField()
        status = serializers.ChoiceField(choices=AgentStatus.choices)
        status_reason = serializers.CharField()
        droplet = serializers.CharField(allow_null=True)
        container = ContainerSerializer(allow_null=True)
        resources = ResourcesSerializer(allow_null=True)
        container_error = serializers.CharField(allow_null=True)
        tokens_today = serializers.IntegerField()
        daily_token_cap = serializers.IntegerField()
        cost_this_period = serializers.DecimalField(max_digits=14, decimal_places=6)
        monthly_cost_cap = serializers.DecimalField(max_digits=10, decimal_places=2)
        period_started_at = serializers.DateTimeField(allow_null=True)
        last_activity_at = serializers.DateTimeField(allow_null=True)
        runtime_alive = serializers.BooleanField(
            help_text="The runtime was heard from (its inbox poll or heartbeat) within "
            "AGENT_LIVENESS_SECONDS: the liveness check, as the image has no HEALTHCHECK."
        )

    @extend_schema(responses={200: OutputSerializer, **ERRORS})
    def get(self, request: Request, agent_id: Any) -> Response:
        return Response(self.OutputSerializer(_status_of(self.get_agent(agent_id))).data)


def _status_of(agent: Agent) -> dict[str, Any]:
    """The agent's state, its container as the droplet reports it, and its spend."""
    today = dt.datetime.now(dt.UTC).date()
    report: dict[str, Any] = {
        "id": agent.id,
        "status": agent.status,
        "status_reason": agent.status_reason,
        "droplet": agent.droplet.name if agent.droplet_id else None,
        "container": None,
        "resources": None,
        "container_error": None,
        "tokens_today": agent.tokens_today if agent.tokens_day == today else 0,
        "daily_token_cap": agent.daily_token_cap,
        "cost_this_period": agent.cost_this_period,
        "monthly_cost_cap": agent.monthly_cost_cap,
        "period_started_at": agent.period_started_at,
        "last_activity_at": agent.last_activity_at,
        "runtime_alive": agent.runtime_alive(),
    }
    if not (agent.droplet_id and agent.container_id):
        return report
    # A status read must not fail because the droplet does not answer: say so instead.
    try:
        state = container_state(agent.droplet, agent.container_id)
        report["container"] = state
        if state.running:
            report["resources"] = container_stats(agent.droplet, agent.container_id)
    except DropletError as exc:
        report["container_error"] = str(exc)
    return report


# --- Logs ----------------------------------------------------------------------------------------

REDACTED = "[REDACTED]"
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BLOCK = re.compile(_PEM_BEGIN.pattern + r".*?" + _PEM_END.pattern)
_SECRETS = [
    # An HTTP credential: keep the scheme, hide the value.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2" + REDACTED),
    # key = value, key: value, "key": "value" for names that hold secrets.
    (
        re.compile(
            r"(?i)((?:api[_-]?key|secret|password|passwd|token|private[_-]?key|credential)s?"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        r"\1" + REDACTED,
    ),
    # Well-known token formats: provider keys (sk-…), our agent and API tokens,
    # Stripe, GitHub, Slack, AWS, Google keys and OAuth tokens, JWTs.
    (
        re.compile(
            r"\b(?:(?:sk|rk|pk)-[A-Za-z0-9_-]{8,}"
            r"|sca_[A-Za-z0-9_-]{8,}|sc_api_[A-Za-z0-9]{8,}"
            r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}|whsec_[A-Za-z0-9]{8,}"
            r"|(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{16,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
            r"|AIza[0-9A-Za-z_-]{30,}|ya29\.[0-9A-Za-z_-]{20,}|1//[0-9A-Za-z_-]{20,}"
            r"|eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,})"
        ),
        REDACTED,
    ),
    # Long hex, and long base64 mixing upper case, lower case and digits (random
    # secrets do; words, paths and UUIDs do not).
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), REDACTED),
    (
        re.compile(
            r"(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+/_-]*[0-9])(?=[A-Za-z0-9+/_-]*[a-z])"
            r"(?=[A-Za-z0-9+/_-]*[A-Z])[A-Za-z0-9+/_-]{32,}={0,2}"
        ),
        REDACTED,
    ),
]


def redact(text: str) -> str:
    """``text`` with anything that looks like a token, key or password masked."""
    text = _PEM_BLOCK.sub("[REDACTED PRIVATE KEY]", text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class LogRedactor:
    """Turns raw log output into redacted lines, holding at most one partial line.

    Private key blocks that span lines are dropped from BEGIN to END.
    """

    MAX_LINE = 16 * 1024  # a line without an end is passed on in pieces this long

    def __init__(self) -> None:
        self._pending = b""
        self._in_key = False

    def feed(self, chunk: bytes) -> bytes:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > self.MAX_LINE:
            lines.append(self._pending)
            self._pending = b""
        return b"".join(self._line(line) for line in lines)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._line(rest) if rest else b""

    def _line(self, raw: bytes) -> bytes:
        text = raw.decode("utf-8", errors="replace")
        if self._in_key:
            end = _PEM_END.search(text)
            if end is None:
                return b""
            self._in_key = False
            text = text[end.end() :]
        text = redact(text)
        begin = _PEM_BEGIN.search(text)
        if begin is not None:
            self._in_key = True
            text = text[: begin.start()] + "[REDACTED PRIVATE KEY]"
        return (text + "\n").encode()


def redacted_logs(
    droplet: Droplet, container_id: str, *, tail: int, follow: bool
) -> Iterator[bytes]:
    """The container's output, redacted, chunk by chunk; never the whole log at once."""
    redactor = LogRedactor()
    chunks = container_logs(droplet, container_id, tail=tail, follow=follow)
    try:
        for chunk in chunks:
            if out := redactor.feed(chunk):
                yield out
        if rest := redactor.flush():
            yield rest
    except DropletError as exc:
        yield redactor.flush() + f"[log stream interrupted: {exc}]\n".encode()
    finally:
        chunks.close()  # ends the engine's stream (and its connection) when the client goes


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Serve a blocking iterator under ASGI one chunk at a time.

    Django would otherwise read a sync iterator to its end before sending
    anything: a followed log would never arrive, and fill memory.
    """
    lock = threading.Lock()

    def step() -> bytes | None:
        with lock:
            return next(chunks, None)

    def close() -> None:
        with lock:
            chunks.close()

    try:
        while (chunk := await sync_to_async(step, thread_sensitive=False)()) is not None:
            yield chunk
    finally:
        # After a disconnect a step may still wait for the engine: close after it.
        threading.Thread(target=close, daemon=True).start()


class PlainTextRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return JSONRenderer().render(data) if isinstance(data, dict) else data


class AgentLogsApi(AgentApi):
    renderer_classes = [JSONRenderer, PlainTextRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        # An error is JSON, as everywhere in the API, even when text was asked for
        # (?format=txt, Accept: text/plain): only the logs themselves are text.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)

    class InputSerializer(serializers.Serializer):
        tail = serializers.IntegerField(min_value=0, max_value=10_000, default=100)
        follow = serializers.BooleanField(default=False)

    @extend_schema(
        parameters=[InputSerializer],
        responses={
            (200, "text/plain"): OpenApiTypes.STR,
            409: ErrorSerializer,
            503: ErrorSerializer,
            **ERRORS,
        },
        description="The container's output, secrets redacted. With follow=1 the "
        "response streams until the container stops or the client goes away.",
    )
    def get(self, request: Request, agent_id: Any) -> StreamingHttpResponse:
        agent = self.get_agent(agent_id)
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        if not (agent.droplet_id and agent.container_id):
            raise Conflict(f"agent is {agent.status} and has no container", code="no_container")
        # Fails fast (503, 409) before the 200 goes out, when the stream cannot start.
        try:
            container_state(agent.droplet, agent.container_id)
        except DropletError as exc:
            if exc.not_found:
                raise Conflict("the agent's container is gone", code="no_container") from exc
            raise
        chunks = redacted_logs(agent.droplet, agent.container_id, **params.validated_data)
        if isinstance(request._request, ASGIRequest):
            chunks = iterate_in_thread(chunks)
        response = StreamingHttpResponse(chunks, content_type="text/plain; charset=utf-8")
        response["X-Accel-Buffering"] = "no"  # let a proxy pass lines on as they come
        response["Cache-Control"] = "no-store"
        return response
