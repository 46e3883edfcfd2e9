from django.urls import path

from agents import agent_api

urlpatterns = [
    path("heartbeat", agent_api.heartbeat, name="agent-api-heartbeat"),
    path("inbox", agent_api.inbox, name="agent-api-inbox"),
    path("runs/<uuid:run_id>/reply", agent_api.reply, name="agent-api-reply"),
    path("tools", agent_api.tools, name="agent-api-tools"),
    path("tools/<str:name>", agent_api.tool_call, name="agent-api-tool-call"),
]
