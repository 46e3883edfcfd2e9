from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from agents import webhooks
from billing.webhooks import stripe_webhook
from gateway.apis import AgentUsageApi
from safer_claw import views
from safer_claw.accounts import views as account_views

# Admin has no sign-in of its own: /admin/login/ sends people to allauth's, with
# its throttles and second factor (and staff must have one: StaffSecondFactorMiddleware).
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("", views.root, name="root"),
    path("favicon.ico", views.favicon),
    path("admin/", admin.site.urls),
    path("accounts/api-tokens/", account_views.api_tokens, name="account_api_tokens"),
    path("accounts/", include("allauth.urls")),
    path("dashboard/", include("safer_claw.dashboard.urls")),
    path("billing/", include("billing.urls")),
    path("integrations/", include("integrations.urls")),
    path("api/", include("safer_claw.accounts.urls")),
    path("api/agents/", include("billing.api_urls")),
    path("api/agents/", include("agents.api_urls")),
    path("api/agents/<uuid:agent_id>/usage", AgentUsageApi.as_view(), name="api-agent-usage"),
    path("webhooks/stripe", stripe_webhook, name="webhook-stripe"),
    # Any id reaches the view, so probes with malformed ids are audited too.
    path("webhooks/agent-kill/<str:agent_id>", webhooks.agent_kill, name="webhook-agent-kill"),
    path("agent-api/v1/", include("agents.agent_api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file: no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]

handler404 = "safer_claw.views.not_found"
handler500 = "safer_claw.views.server_error"
