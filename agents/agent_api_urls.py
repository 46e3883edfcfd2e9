from django.urls import path

from agents import agent_api

urlpatterns = [
    path("heartbeat", agent_api.heartbeat, name="agent-api-heartbeat"),
]
