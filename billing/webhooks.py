"""POST /webhooks/stripe: Stripe's events, verified, stored by id, handled once."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from billing.events import receive_event
from billing.stripe_client import WebhookRejected, verify_webhook
from safer_claw.api import error_response, method_not_allowed

logger = logging.getLogger(__name__)
# Stripe's events are a few KiB; this leaves room for large invoices and no
# room for someone streaming megabytes at an unauthenticated endpoint.
MAX_BODY_BYTES = 256 * 1024


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return method_not_allowed("POST")
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        return error_response(413, "too_large", f"Bodies over {MAX_BODY_BYTES} bytes are refused.")
    payload = request.body
    if len(payload) > MAX_BODY_BYTES:
        return error_response(413, "too_large", f"Bodies over {MAX_BODY_BYTES} bytes are refused.")
    try:
        data = verify_webhook(payload, request.headers.get("Stripe-Signature"))
    except WebhookRejected as exc:
        logger.warning("stripe webhook refused: %s", exc)
        return error_response(400, "bad_webhook", str(exc))

    receipt = receive_event(data)
    if receipt.event is None:
        return JsonResponse({"received": True, "duplicate": True})
    if receipt.retry:
        # Stripe sends it again later; the stored event is handled again then.
        return error_response(500, "handler_failed", "The event could not be handled yet.")
    return JsonResponse(
        {"received": True, "outcome": receipt.event.outcome, "message": receipt.event.message}
    )
