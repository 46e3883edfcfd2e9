"""allauth adapter: account emails go out through Celery, not the web request."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from django.db import transaction

from safer_claw.accounts.tasks import send_email_message
from safer_claw.encryption import current_ring, open_sealed, seal

# allauth's default adapter stores TOTP secrets as they are; seal them instead.
MFA_CONTEXT = "allauth.mfa"


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
    def encrypt(self, text: str) -> str:
        return seal(text.encode(), context=MFA_CONTEXT, ring=current_ring())

    def decrypt(self, encrypted_text: str) -> str:
        return open_sealed(encrypted_text, context=MFA_CONTEXT, ring=current_ring()).decode()
