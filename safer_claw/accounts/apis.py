"""Account endpoints: who am I, and API tokens for scripts."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from knox.views import LoginView, LogoutView
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class MeApi(APIView):
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        email = serializers.EmailField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(request.user).data)


class TokenCreateApi(LoginView):
    """Issue an API token (shown once) to a user signed in through the browser.

    Only a session can mint a token: a password alone must not, or it would
    bypass the second factor that the login page asks for.
    """

    authentication_classes = [SessionAuthentication]

    @extend_schema(
        request=None,
        responses=inline_serializer(
            "CreatedToken",
            {
                "token": serializers.CharField(),
                "expiry": serializers.DateTimeField(allow_null=True),
            },
        ),
    )
    def post(self, request: Request, format: str | None = None) -> Response:
        return super().post(request, format=format)


class TokenRevokeApi(LogoutView):
    """Revoke the token this request is authenticated with."""

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, format: str | None = None) -> Response:
        return super().post(request, format=format)
