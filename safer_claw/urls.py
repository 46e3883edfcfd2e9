from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from safer_claw import views

urlpatterns = [
    path("", views.root, name="root"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("dashboard/", include("agents.urls")),
    path("api/", include("safer_claw.accounts.urls")),
    path("agent-api/v1/", include("agents.agent_api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

handler404 = "safer_claw.views.not_found"
handler500 = "safer_claw.views.server_error"
