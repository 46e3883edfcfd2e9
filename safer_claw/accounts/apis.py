"""Account endpoints: who am I, and the caller's API tokens for scripts.

Tokens are listed and revoked by their owner, with a token or a browser session;
they are created only from a browser session that recently proved the account's
strongest factor (``selectors.may_mint_api_token``), never with another token.
"""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import urlencode

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from knox.views import LogoutView
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.apis import ERRORS
from safer_claw.accounts.selectors import has_second_factor, live_api_tokens, may_mint_api_token
from safer_claw.accounts.services import mint_api_token, revoke_all_api_tokens, revoke_api_token
from safer_claw.api import error_body

TOKENS_PAGE = "account_api_tokens"

RefusalSerializer = inline_serializer(
    "TokenRefusal",
    {
        "error": inline_serializer(
            "TokenRefusalDetail",
            {
                "code": serializers.ChoiceField(
                    # The last: a staff session without its second factor (accounts.middleware).
                    choices=[
                        "reauthentication_required",
                        "session_required",
                        "second_factor_required",
                    ]
                ),
                "message": serializers.CharField(),
                "reauthenticate_url": serializers.CharField(required=False),
            },
        )
    },
)


class MeApi(APIView):
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        email = serializers.EmailField()

    @extend_schema(responses={200: OutputSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(request.user).data)


class TokenSerializer(serializers.Serializer):
    """One API token as its owner sees it in a list: never the token itself."""

    id = serializers.CharField(help_text="Names the token in DELETE /api/auth/tokens/{id}/.")
    prefix = serializers.CharField(help_text="How the token begins, to recognise it.")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True, help_text="When it stops working.")


class CreatedTokenSerializer(TokenSerializer):
    token = serializers.CharField(help_text="The token: shown this once, stored only hashed.")


class TokensApi(APIView):
    @extend_schema(
        operation_id="api_tokens_list", responses={200: TokenSerializer(many=True), **ERRORS}
    )
    def get(self, request: Request) -> Response:
        """The caller's API tokens that have not expired, newest first."""
        return Response(TokenSerializer(live_api_tokens(user=request.user), many=True).data)

    @extend_schema(
        operation_id="api_tokens_create",
        request=None,
        responses={201: CreatedTokenSerializer, **ERRORS, 403: RefusalSerializer},
    )
    def post(self, request: Request) -> Response:
        """A new API token, shown once, that expires after API_TOKEN_TTL_DAYS.

        Only from a browser session (with CSRF) that signed in, or re-authenticated,
        within the last five minutes with its strongest factor: the authenticator
        code if the account has one. Otherwise 403, with where to re-authenticate.
        """
        if not isinstance(request.successful_authenticator, SessionAuthentication):
            return Response(
                error_body(
                    "session_required",
                    "API tokens are created from a signed-in browser session, "
                    "not with another token.",
                ),
                status=status.HTTP_403_FORBIDDEN,
            )
        if not may_mint_api_token(request):
            return Response(_reauthentication_required(request), status=status.HTTP_403_FORBIDDEN)
        info, token = mint_api_token(user=request.user)
        data = CreatedTokenSerializer({**asdict(info), "token": token}).data
        return Response(data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(
        operation_id="api_tokens_revoke_all", request=None, responses={204: None, **ERRORS}
    )
    def delete(self, request: Request) -> Response:
        """Revoke every API token of the caller (the one in use too)."""
        revoke_all_api_tokens(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenApi(APIView):
    @extend_schema(operation_id="api_token_revoke", request=None, responses={204: None, **ERRORS})
    def delete(self, request: Request, token_id: str) -> Response:
        """Revoke one of the caller's API tokens; another user's, or none, is a 404."""
        if not revoke_api_token(user=request.user, token_id=token_id):
            raise NotFound()
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenRevokeApi(LogoutView):
    """Revoke the API token this request is authenticated with."""

    @extend_schema(request=None, responses={204: None, **ERRORS})
    def post(self, request: Request, format: str | None = None) -> Response:
        return super().post(request, format=format)


def _reauthentication_required(request: Request) -> dict:
    if has_second_factor(request.user):
        where, what = "mfa_reauthenticate", "authenticator code"
    else:
        where, what = "account_reauthenticate", "password"
    return error_body(
        "reauthentication_required",
        f"Creating an API token needs a fresh sign-in: confirm your {what} at "
        "reauthenticate_url, then try again within "
        f"{settings.ACCOUNT_REAUTHENTICATION_TIMEOUT // 60} minutes.",
        reauthenticate_url=f"{reverse(where)}?{urlencode({'next': reverse(TOKENS_PAGE)})}",
    )
