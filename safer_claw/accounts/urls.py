from django.urls import path, re_path

from safer_claw.accounts import apis

urlpatterns = [
    path("me/", apis.MeApi.as_view(), name="api-me"),
    path("auth/tokens/", apis.TokensApi.as_view(), name="api-tokens"),
    path("auth/tokens/current/", apis.TokenRevokeApi.as_view(), name="api-token-revoke"),
    re_path(
        r"^auth/tokens/(?P<token_id>[0-9a-f]{16})/$", apis.TokenApi.as_view(), name="api-token"
    ),
]
