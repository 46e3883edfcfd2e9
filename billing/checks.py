"""System checks: development-mode billing has no place in production."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def check_billing_mode(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if settings.BILLING_DEV_MODE and not settings.DEBUG:
        return [
            Error(
                "Billing runs in development mode: every plan is free.",
                hint="Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET, and unset BILLING_DEV_MODE.",
                id="billing.E001",
            )
        ]
    return []
