"""allauth adapter: account emails go out through Celery, not the web request."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from django.db import transaction

from safer_claw.accounts import mfa_secrets
from safer_claw.accounts.tasks import send_email_message


class AccountAdapter(DefaultAccountAdapter):
    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        message = self.render_mail(template_prefix, email, context)
        payload = {
            "subject": message.subject,
            "body": message.body,
            "from_email": message.from_email,
            "to": list(message.to),
            "alternatives": [list(alt) for alt in getattr(message, "alternatives", [])],
        }
        # After commit: the worker must find the user (and the confirmation) saved.
        transaction.on_commit(lambda: send_email_message.delay(**payload))


class MFAAdapter(DefaultMFAAdapter):
    """allauth's default stores TOTP secrets as they are; ours are sealed, bound to
    their row (see safer_claw.accounts.mfa_secrets)."""

    def encrypt(self, text: str) -> str:
        return mfa_secrets.seal_pending(text)

    def decrypt(self, encrypted_text: str) -> str:
        return mfa_secrets.open_value(encrypted_text)
