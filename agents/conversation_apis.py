"""The owner's side of the conversation: messages, standing instructions, schedules.

``/api/agents/<id>/messages`` (GET the conversation, POST a message),
``/instructions`` (GET, PUT), ``/schedules`` and ``/schedules/<n>`` (CRUD).
Every view is an ``AgentApi``: another user's agent answers 404.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response

from agents import schedule_services
from agents.apis import ERRORS, AgentApi, Conflict, ErrorSerializer
from agents.conversation_services import AgentNotServing, InboxFull, send_owner_message
from agents.conversations import (
    Message,
    MessageRole,
    RunStatus,
    RunStep,
    Schedule,
    StepKind,
    StopReason,
)
from agents.models import MAX_INSTRUCTIONS_CHARS

INBOUND = (MessageRole.OWNER, MessageRole.SCHEDULE)


class InboxFullError(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "inbox_full"
    default_detail = "Too many messages are waiting for this agent."


# --- Messages --------------------------------------------------------------------------------


@extend_schema_serializer(component_name="RunStep")
class RunStepSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=StepKind.choices)
    name = serializers.CharField()
    detail = serializers.JSONField(
        help_text="Metadata only: argument digest, result size, tokens, cost, latency, "
        "refusal reason; never content."
    )
    created_at = serializers.DateTimeField()


@extend_schema_serializer(component_name="Run")
class RunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    stop_reason = serializers.ChoiceField(choices=StopReason.choices, allow_blank=True)
    stop_detail = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    deadline = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    handed_out = serializers.IntegerField()
    model_calls = serializers.IntegerField()
    tool_calls = serializers.IntegerField()
    requested_tool_calls = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=14, decimal_places=6)
    steps = RunStepSerializer(many=True)


@extend_schema_serializer(component_name="ConversationMessage")
class MessageSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    role = serializers.ChoiceField(choices=MessageRole.choices)
    content = serializers.CharField()
    created_at = serializers.DateTimeField()
    in_reply_to = serializers.UUIDField(
        source="in_reply_to_id", allow_null=True, help_text="For a reply: the run it ends."
    )
    scheduled_for = serializers.DateTimeField(allow_null=True)
    run = serializers.SerializerMethodField(help_text="For an inbound message: its run.")

    @extend_schema_field(RunSerializer(allow_null=True))
    def get_run(self, message: Message) -> dict[str, Any] | None:
        run = getattr(message, "run", None) if message.role in INBOUND else None
        return RunSerializer(run).data if run is not None else None


MESSAGES_PAGE = 50


class AgentMessagesApi(AgentApi):
    @extend_schema_serializer(component_name="NewMessage")
    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(max_length=Message.MAX_OWNER_CHARS)

    @extend_schema_serializer(component_name="ConversationParams")
    class ListParams(serializers.Serializer):
        before = serializers.IntegerField(
            required=False, min_value=1, help_text="Only messages older than this id."
        )
        limit = serializers.IntegerField(min_value=1, max_value=200, default=MESSAGES_PAGE)

    @extend_schema_serializer(component_name="Conversation")
    class ConversationSerializer(serializers.Serializer):
        messages = MessageSerializer(many=True)
        has_more = serializers.BooleanField(help_text="Older messages exist (page with before).")

    @extend_schema(
        parameters=[ListParams],
        responses={200: ConversationSerializer, 400: ErrorSerializer, **ERRORS},
        description="The conversation, oldest first: messages, replies, and each "
        "run's status, stop reason and steps.",
    )
    def get(self, request: Request, agent_id: Any) -> Response:
        agent = self.get_agent(agent_id)
        params = self.ListParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        limit = params.validated_data["limit"]
        messages = Message.objects.filter(agent=agent).select_related("run")
        if before := params.validated_data.get("before"):
            messages = messages.filter(id__lt=before)
        page = list(
            messages.prefetch_related(
                Prefetch("run__steps", queryset=RunStep.objects.order_by("created_at", "id"))
            ).order_by("-id")[: limit + 1]
        )
        body = {"messages": page[:limit][::-1], "has_more": len(page) > limit}
        return Response(self.ConversationSerializer(body).data)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: MessageSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
            **ERRORS,
        },
        description="Put a message in the agent's inbox, with a run queued for it. "
        "The reply lands in the conversation.",
    )
    def post(self, request: Request, agent_id: Any) -> Response:
        agent = self.get_agent(agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            message = send_owner_message(agent=agent, content=data.validated_data["content"])
        except AgentNotServing as exc:
            raise Conflict(str(exc), code="agent_not_running") from exc
        except InboxFull as exc:
            raise InboxFullError(str(exc)) from exc
        message = Message.objects.select_related("run").get(pk=message.pk)
        return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)


# --- Standing instructions ---------------------------------------------------------------------


@extend_schema_serializer(component_name="Instructions")
class InstructionsSerializer(serializers.Serializer):
    instructions = serializers.CharField(
        max_length=MAX_INSTRUCTIONS_CHARS,
        allow_blank=True,
        help_text="The owner's standing instructions, below the operator's system prompt.",
    )
    time_zone = serializers.CharField(
        max_length=64, help_text="IANA name, e.g. Europe/Paris; schedules fire in it."
    )


class AgentInstructionsApi(AgentApi):
    @extend_schema(responses={200: InstructionsSerializer, **ERRORS})
    def get(self, request: Request, agent_id: Any) -> Response:
        return Response(InstructionsSerializer(self.get_agent(agent_id)).data)

    @extend_schema(
        request=InstructionsSerializer,
        responses={200: InstructionsSerializer, 400: ErrorSerializer, **ERRORS},
        description="Replace the standing instructions and time zone; they apply from "
        "the next run.",
    )
    def put(self, request: Request, agent_id: Any) -> Response:
        agent = self.get_agent(agent_id)
        data = InstructionsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = schedule_services.set_instructions(agent=agent, **data.validated_data)
        return Response(InstructionsSerializer(agent).data)


# --- Schedules ----------------------------------------------------------------------------


@extend_schema_serializer(component_name="Schedule")
class ScheduleSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    cron = serializers.CharField(
        max_length=Schedule.MAX_CRON_CHARS,
        help_text="Five fields in the agent's time zone, e.g. '30 7 * * 1-5'.",
    )
    description = serializers.SerializerMethodField()
    prompt = serializers.CharField(max_length=Message.MAX_OWNER_CHARS)
    enabled = serializers.BooleanField(default=True)
    next_fire_at = serializers.DateTimeField(read_only=True, allow_null=True)
    last_fired_at = serializers.DateTimeField(read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True)

    def get_description(self, schedule: Schedule) -> str:
        return schedule_services.describe_cron(schedule.cron)


class ScheduleApi(AgentApi):
    def get_schedule(self, agent_id: Any, schedule_id: int) -> Schedule:
        agent = self.get_agent(agent_id)
        schedules = Schedule.objects.select_related("agent")
        return get_object_or_404(schedules, pk=schedule_id, agent=agent)


class AgentSchedulesApi(ScheduleApi):
    @extend_schema(responses={200: ScheduleSerializer(many=True), **ERRORS})
    def get(self, request: Request, agent_id: Any) -> Response:
        schedules = Schedule.objects.filter(agent=self.get_agent(agent_id))
        return Response(ScheduleSerializer(schedules, many=True).data)

    @extend_schema(
        request=ScheduleSerializer,
        responses={201: ScheduleSerializer, 400: ErrorSerializer, **ERRORS},
        description="Standing instructions on a cron: each firing puts the prompt in "
        "the inbox with its own run.",
    )
    def post(self, request: Request, agent_id: Any) -> Response:
        agent = self.get_agent(agent_id)
        data = ScheduleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = schedule_services.create_schedule(agent=agent, **data.validated_data)
        return Response(ScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)


class AgentScheduleApi(ScheduleApi):
    @extend_schema(responses={200: ScheduleSerializer, **ERRORS})
    def get(self, request: Request, agent_id: Any, schedule_id: int) -> Response:
        return Response(ScheduleSerializer(self.get_schedule(agent_id, schedule_id)).data)

    @extend_schema(
        request=ScheduleSerializer(partial=True),
        responses={200: ScheduleSerializer, 400: ErrorSerializer, **ERRORS},
    )
    def patch(self, request: Request, agent_id: Any, schedule_id: int) -> Response:
        schedule = self.get_schedule(agent_id, schedule_id)
        data = ScheduleSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        schedule = schedule_services.update_schedule(schedule=schedule, **data.validated_data)
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, agent_id: Any, schedule_id: int) -> Response:
        schedule_services.delete_schedule(schedule=self.get_schedule(agent_id, schedule_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
