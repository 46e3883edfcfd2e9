from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("new-agent/", views.new_agent, name="new-agent"),
    path("portal/", views.portal, name="portal"),
    path("agents/<uuid:agent_id>/", views.agent_page, name="agent"),
    path("agents/<uuid:agent_id>/status", views.agent_status, name="agent-status"),
    path("agents/<uuid:agent_id>/limits", views.agent_limits, name="agent-limits"),
    path(
        "agents/<uuid:agent_id>/checkout-canceled/",
        views.checkout_canceled,
        name="checkout-canceled",
    ),
    path("agents/<uuid:agent_id>/discard", views.discard_agent, name="discard"),
    path("agents/<uuid:agent_id>/cancel", views.cancel_dev_subscription, name="dev-cancel"),
]
