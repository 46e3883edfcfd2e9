"""/api/agents/<id>/… (DESIGN.md's paths). /api/agents/ itself (list, create) is
billing.apis, since creating an agent starts paying for it; /usage is
gateway.apis.AgentUsageApi."""

from django.urls import path

from agents import apis, conversation_apis

urlpatterns = [
    path("<uuid:agent_id>/", apis.AgentDetailApi.as_view(), name="api-agent"),
    path("<uuid:agent_id>/status", apis.AgentStatusApi.as_view(), name="api-agent-status"),
    path("<uuid:agent_id>/start", apis.AgentStartApi.as_view(), name="api-agent-start"),
    path("<uuid:agent_id>/stop", apis.AgentStopApi.as_view(), name="api-agent-stop"),
    path("<uuid:agent_id>/logs", apis.AgentLogsApi.as_view(), name="api-agent-logs"),
    path(
        "<uuid:agent_id>/kill-secret",
        apis.AgentKillSecretApi.as_view(),
        name="api-agent-kill-secret",
    ),
]

# The conversation (agents.conversation_apis).
urlpatterns += [
    path(
        "<uuid:agent_id>/messages",
        conversation_apis.AgentMessagesApi.as_view(),
        name="api-agent-messages",
    ),
    path(
        "<uuid:agent_id>/instructions",
        conversation_apis.AgentInstructionsApi.as_view(),
        name="api-agent-instructions",
    ),
    path(
        "<uuid:agent_id>/schedules",
        conversation_apis.AgentSchedulesApi.as_view(),
        name="api-agent-schedules",
    ),
    path(
        "<uuid:agent_id>/schedules/<int:schedule_id>",
        conversation_apis.AgentScheduleApi.as_view(),
        name="api-agent-schedule",
    ),
]
