from django.urls import path

from integrations.google import views as google

app_name = "integrations"

urlpatterns = [
    path("agents/<uuid:agent_id>/", google.agent_integrations, name="agent"),
    path("agents/<uuid:agent_id>/google/connect", google.google_connect, name="google-connect"),
    path(
        "agents/<uuid:agent_id>/google/disconnect",
        google.google_disconnect,
        name="google-disconnect",
    ),
    # The redirect URI registered with Google: one for all agents (the state names the agent).
    path("google/callback", google.google_callback, name="google-callback"),
]
