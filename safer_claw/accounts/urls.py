from django.urls import path

from safer_claw.accounts import apis

urlpatterns = [
    path("me/", apis.MeApi.as_view(), name="api-me"),
    path("auth/tokens/", apis.TokenCreateApi.as_view(), name="api-token-create"),
    path("auth/tokens/current/", apis.TokenRevokeApi.as_view(), name="api-token-revoke"),
]
