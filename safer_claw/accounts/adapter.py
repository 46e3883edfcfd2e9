"""allauth adapters: account emails go out through Celery with the site's name from
settings, failed logins are counted per client and account, MFA secrets are sealed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context as allauth_context
from allauth.core.internal.ratelimit import get_ip
from allauth.mfa.adapter import DefaultMFAAdapter
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils.encoding import force_str

from safer_claw.accounts import mfa_secrets
from safer_claw.accounts.tasks import send_email_message

logger = logging.getLogger(__name__)


def _queue_or_send(payload: dict[str, Any]) -> None:
    """Through Celery; with the broker down, sent from here rather than lost
    (the confirmation link must reach the person signing up)."""
    try:
        send_email_message.delay(**payload)
    except Exception as exc:  # any broker failure
        logger.warning("broker did not take an account email (%s): sending it directly", exc)
        send_email_message(**payload)


@dataclass(frozen=True)
class ConfiguredSite:
    """What allauth's templates read as `current_site`: the name and domain from
    settings (SITE_NAME, SITE_DOMAIN), not the request's Host header."""

    name: str
    domain: str


def configured_site() -> ConfiguredSite:
    return ConfiguredSite(name=settings.SITE_NAME, domain=settings.SITE_DOMAIN)


class AccountAdapter(DefaultAccountAdapter):
    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        message = self.render_mail(
            template_prefix,
            email,
            {
                "request": allauth_context.request,
                "email": email,
                "current_site": configured_site(),
                **context,
            },
        )
        payload = {
            "subject": message.subject,
            "body": message.body,
            "from_email": message.from_email,
            "to": list(message.to),
            "alternatives": [list(alt) for alt in getattr(message, "alternatives", [])],
        }
        # After commit: the worker must find the user (and the confirmation) saved.
        transaction.on_commit(lambda: _queue_or_send(payload))

    def format_email_subject(self, subject: str) -> str:
        return f"[{settings.SITE_NAME}] {force_str(subject)}"

    def get_reauthentication_methods(self, user: Any) -> list[dict]:
        """The authenticator code first, when the account has one: re-authenticating
        for something sensitive (an API token) asks for the strongest factor."""
        methods = super().get_reauthentication_methods(user)
        return sorted(methods, key=lambda method: method["id"] != "mfa_reauthenticate")

    def _get_login_attempts_cache_key(self, request: HttpRequest, **credentials: Any) -> str:
        """The `key` of the `login_failed` rate limit: the account *and* the client's IP.

        allauth keys it by the account alone, so anyone who knows an email address
        could lock its owner out by failing five times. Keyed by IP and account, the
        guesses of one client are throttled while the owner, from any other address,
        still signs in; the `ip` rate of the same limit caps one client across all
        accounts. allauth calls this hook both to count failures and to clear them
        after a password reset, so the two stay in step.
        """
        login = credentials.get("email", credentials.get("username", "")).lower()
        # get_ip: the client address as the `ip` rates see it (an IPv6 address cut
        # to its /64, so rotating addresses within one network does not help).
        return f"{get_ip(request)}:{login}"


class MFAAdapter(DefaultMFAAdapter):
    """allauth's default stores TOTP secrets as they are; ours are sealed, bound to
    their row (see safer_claw.accounts.mfa_secrets)."""

    def encrypt(self, text: str) -> str:
        return mfa_secrets.seal_pending(text)

    def decrypt(self, encrypted_text: str) -> str:
        return mfa_secrets.open_value(encrypted_text)
