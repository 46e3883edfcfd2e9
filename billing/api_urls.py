"""/api/agents/ (DESIGN.md): listing is the agents', creating is a checkout."""

from django.urls import path

from billing import apis

urlpatterns = [
    path("", apis.AgentListCreateApi.as_view(), name="api-agents"),
]
