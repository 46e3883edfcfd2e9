"""API tokens for scripts: minted, and revoked, by their owner (django-rest-knox
stores them hashed; each expires after REST_KNOX["TOKEN_TTL"])."""

from __future__ import annotations

import re
from typing import Any

from knox.models import AuthToken

from safer_claw.accounts.selectors import API_TOKEN_ID_LENGTH, ApiTokenInfo, api_token_info


def mint_api_token(*, user: Any) -> tuple[ApiTokenInfo, str]:
    """A new API token for ``user``: what may be shown of it, and the token itself,
    which exists only in this return value (the database keeps its digest)."""
    instance, token = AuthToken.objects.create(user=user)
    return api_token_info(instance), token


def revoke_api_token(*, user: Any, token_id: str) -> bool:
    """Revoke ``user``'s token with this id; False if they have none such."""
    if not re.fullmatch(f"[0-9a-f]{{{API_TOKEN_ID_LENGTH}}}", token_id):
        return False
    deleted, _ = AuthToken.objects.filter(user=user, digest__startswith=token_id).delete()
    return bool(deleted)


def revoke_all_api_tokens(*, user: Any) -> int:
    """Revoke every API token of ``user``; returns how many there were."""
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    return deleted
