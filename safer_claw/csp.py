"""The Content-Security-Policy of every response (django-csp; Django 5.2 has none).

The policy itself is CONTENT_SECURITY_POLICY in settings. This middleware adds
the one part that depends on settings a test may change: where a form may send
the browser. Our billing forms POST to us and are redirected to Stripe's hosted
checkout and portal, and browsers check `form-action` on that redirect too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

# Where Stripe sends a browser: hosted Checkout and the customer portal.
STRIPE_BROWSER_ORIGINS = ("https://checkout.stripe.com", "https://billing.stripe.com")


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # Under ASGI, Django would run both steps in a worker thread each; they only
        # read settings and build a string, so they run on the event loop instead.
        self.process_request(request)
        response = await self.get_response(request)
        return self.process_response(request, response)

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if not report_only:
            parts.update = {**(parts.update or {}), "form-action": list(stripe_form_targets())}
        return parts


def stripe_form_targets() -> tuple[str, ...]:
    """Stripe's origins, and STRIPE_API_BASE's when set (a local stand-in serves
    its hosted pages from the same origin as its API)."""
    base = settings.STRIPE_API_BASE
    if not base:
        return STRIPE_BROWSER_ORIGINS
    parts = urlsplit(base)
    return (*STRIPE_BROWSER_ORIGINS, f"{parts.scheme}://{parts.netloc}")
