"""A local stand-in for the parts of Stripe this app uses, for tests and benchmarks.

It speaks Stripe's wire format for the calls the app makes: form-encoded
``POST /v1/customers``, ``/v1/checkout/sessions``,
``/v1/checkout/sessions/{id}/expire``, ``/v1/billing_portal/sessions``,
``GET`` and ``DELETE /v1/subscriptions/{id}``,
with bearer-key auth, ``Idempotency-Key`` replay, Stripe's JSON objects and
its ``{"error": {"type", "code", "message", "param"}}`` bodies. It also plays
what happens at Stripe afterwards: :meth:`FakeStripe.complete_checkout` and
friends return the events Stripe would send (in the endive API version's
shapes), which a test signs with ``stripe.WebhookSignature`` and posts, and
keeps each subscription's status as Stripe would (active, incomplete,
past_due, canceled), which ``GET /v1/subscriptions/{id}`` then reports. Its
hosted checkout page (``GET /c/pay/{id}``, a Pay button) completes the
session, delivers the signed events to ``webhook_url`` and redirects to the
session's ``success_url``, as Stripe does for a browser.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe

API_KEY = "sk_test_fake_51NfAkE0123456789abcdefghijklmnopqrstuvwxyz"
WEBHOOK_SECRET = "whsec_fake_0123456789abcdefghijklmnopqrstuv"
API_VERSION = "2026-10-28.endive"
MONTH = 30 * 24 * 3600


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]


def stripe_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(key.isdigit() for key in node):
        return [_lists(node[key]) for key in sorted(node, key=int)]
    return {key: _lists(value) for key, value in node.items()}


def error(status: int, message: str, *, code: str | None = None, param: str | None = None):
    kind = "invalid_request_error" if status < 500 else "api_error"
    body = {"error": {"type": kind, "message": message}}
    if code:
        body["error"]["code"] = code
        body["error"]["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param:
        body["error"]["param"] = param
    return status, body


class FakeStripe:
    """The fake on ``host`` (a free port). Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.api_key = API_KEY
        self.webhook_secret = WEBHOOK_SECRET
        self.webhook_url: str | None = None  # where the hosted page delivers events
        # Seconds between the Pay button's redirect and the events' delivery (0: the
        # events first), to watch a page wait for them as it may with Stripe.
        self.delivery_delay = 0.0
        self.prices: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[tuple[str, int]] = []  # (event type, status) from the hosted page
        self.fail_with: int | None = None
        self._replays: dict[str, tuple[dict[str, Any], int, dict[str, Any]]] = {}
        self._lock = threading.RLock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((host, 0), handler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- Set-up -------------------------------------------------------------------------

    def add_price(self, price_id: str, *, amount: int = 900, product: str = "Agent") -> None:
        """A recurring monthly price in USD cents."""
        self.prices[price_id] = {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": "usd",
            "unit_amount": amount,
            "type": "recurring",
            "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
            "product": f"prod_{product.lower()}",
            "livemode": False,
        }

    def calls(self, path: str, method: str = "POST") -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and r.method == method]

    # --- The API --------------------------------------------------------------------------

    def respond(self, request: RecordedRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Status, JSON body and extra headers for an API request."""
        with self._lock:
            self.requests.append(request)
            auth = request.headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}":
                key = auth.removeprefix("Bearer ")
                return (
                    *error(401, f"Invalid API Key provided: {key[:8]}****{key[-4:]}"),
                    {},
                )
            if self.fail_with:
                return *error(self.fail_with, "Injected failure"), {}
            key = request.headers.get("idempotency-key")
            if key and key in self._replays:
                params, status, body = self._replays[key]
                if params != request.params:
                    return (
                        *error(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                            code="idempotency_key_in_use",
                        ),
                        {},
                    )
                return status, body, {"Idempotent-Replayed": "true"}
            status, body = self._route(request)
            if key and request.method == "POST" and status < 500:
                self._replays[key] = (request.params, status, body)
            return status, body, {}

    def _route(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        path, params = request.path, request.params
        if request.method == "POST" and path == "/v1/customers":
            return self._create_customer(params)
        if request.method == "POST" and path == "/v1/checkout/sessions":
            return self._create_session(params)
        match = re.fullmatch(r"/v1/checkout/sessions/([^/]+)/expire", path)
        if request.method == "POST" and match:
            return self._expire_session(match[1])
        if request.method == "POST" and path == "/v1/billing_portal/sessions":
            return self._create_portal_session(params)
        match = re.fullmatch(r"/v1/subscriptions/([^/]+)", path)
        if request.method == "GET" and match:
            return self._retrieve_subscription(match[1])
        if request.method == "DELETE" and match:
            return self._cancel_subscription(match[1])
        return error(
            404,
            f"Unrecognized request URL ({request.method}: {path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )

    def _create_customer(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        customer = {
            "id": stripe_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "livemode": False,
            "invoice_settings": {"default_payment_method": None},
        }
        self.customers[customer["id"]] = customer
        return 200, customer

    def _create_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if params.get("mode") not in ("payment", "setup", "subscription"):
            return error(
                400, "Missing required param: mode.", code="parameter_missing", param="mode"
            )
        if not params.get("success_url"):
            return error(
                400,
                "Missing required param: success_url.",
                code="parameter_missing",
                param="success_url",
            )
        customer = params.get("customer")
        if customer and customer not in self.customers:
            return error(
                400, f"No such customer: '{customer}'", code="resource_missing", param="customer"
            )
        items = params.get("line_items") or []
        if not items:
            return error(
                400,
                "Missing required param: line_items.",
                code="parameter_missing",
                param="line_items",
            )
        price = self.prices.get(items[0].get("price"))
        if price is None:
            return error(
                400,
                f"No such price: '{items[0].get('price')}'",
                code="resource_missing",
                param="line_items[0][price]",
            )
        session_id = stripe_id("cs_test")
        now = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": price["unit_amount"],
            "amount_total": price["unit_amount"],
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": "usd",
            "customer": customer,
            "customer_email": None,
            "expires_at": now + 24 * 3600,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "mode": params["mode"],
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": params["success_url"],
            "url": f"{self.url}/c/pay/{session_id}",
            # Not in Stripe's response; kept to build the subscription later.
            "_subscription_data": params.get("subscription_data", {}),
            "_price": price["id"],
        }
        self.sessions[session_id] = session
        return 200, _public(session)

    def _expire_session(self, session_id: str) -> tuple[int, dict[str, Any]]:
        session = self.sessions.get(session_id)
        if session is None:
            return error(404, f"No such checkout.session: '{session_id}'", code="resource_missing")
        if session["status"] != "open":
            return error(
                400,
                'Only Checkout Sessions with a status in ["open"] can be expired.',
                code="checkout_session_not_open",
            )
        session["status"] = "expired"
        return 200, _public(session)

    def _retrieve_subscription(self, subscription_id: str) -> tuple[int, dict[str, Any]]:
        sub = self.subscriptions.get(subscription_id)
        if sub is None:
            return error(404, f"No such subscription: '{subscription_id}'", code="resource_missing")
        return 200, self._subscription_object(sub)

    def _cancel_subscription(self, subscription_id: str) -> tuple[int, dict[str, Any]]:
        sub = self.subscriptions.get(subscription_id)
        if sub is None or sub["status"] == "canceled":
            return error(404, f"No such subscription: '{subscription_id}'", code="resource_missing")
        self._end(sub)
        return 200, self._subscription_object(sub)

    def _end(self, sub: dict[str, Any]) -> None:
        now = int(time.time())
        sub.update(status="canceled", canceled_at=now, ended_at=now)

    def _subscription_object(self, sub: dict[str, Any]) -> dict[str, Any]:
        """A subscription as Stripe's API shows it (the period is on its items since
        API version 2025-03-31)."""
        return {
            "id": sub["id"],
            "object": "subscription",
            "billing_cycle_anchor": sub["created"],
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": sub.get("canceled_at"),
            "collection_method": "charge_automatically",
            "created": sub["created"],
            "currency": "usd",
            "customer": sub["customer"],
            "ended_at": sub.get("ended_at"),
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": sub["item"],
                        "object": "subscription_item",
                        "current_period_end": sub["current_period_end"],
                        "current_period_start": sub["current_period_start"],
                        "price": self.prices[sub["price"]],
                        "quantity": 1,
                        "subscription": sub["id"],
                    }
                ],
                "has_more": False,
                "total_count": 1,
                "url": f"/v1/subscription_items?subscription={sub['id']}",
            },
            "latest_invoice": sub.get("latest_invoice"),
            "livemode": False,
            "metadata": sub["metadata"],
            "start_date": sub["created"],
            "status": sub["status"],
        }

    def _create_portal_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        customer = params.get("customer")
        if customer not in self.customers:
            return error(
                400, f"No such customer: '{customer}'", code="resource_missing", param="customer"
            )
        portal = {
            "id": stripe_id("bps"),
            "object": "billing_portal.session",
            "created": int(time.time()),
            "customer": customer,
            "livemode": False,
            "return_url": params.get("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_{secrets.token_hex(16)}",
        }
        self.portal_sessions[portal["id"]] = portal
        return 200, portal

    # --- What Stripe sends afterwards -----------------------------------------------------

    def event(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """An event as Stripe's webhooks deliver it."""
        return {
            "id": stripe_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }

    def complete_checkout(self, session_id: str, *, payment_status: str = "paid") -> dict:
        """The customer pays: the session completes and a subscription starts
        (``incomplete`` until a bank debit settles: see :meth:`settle_payment`).
        Returns the checkout.session.completed event."""
        with self._lock:
            session = self.sessions[session_id]
            subscription_id = stripe_id("sub")
            now = int(time.time())
            self.subscriptions[subscription_id] = {
                "id": subscription_id,
                "item": stripe_id("si"),
                "customer": session["customer"],
                "status": "active" if payment_status == "paid" else "incomplete",
                "created": now,
                "metadata": session["_subscription_data"].get("metadata", {}),
                "price": session["_price"],
                "current_period_start": now,
                "current_period_end": now + MONTH,
            }
            session.update(
                status="complete", payment_status=payment_status, subscription=subscription_id
            )
            return self.event("checkout.session.completed", _public(session))

    def settle_payment(self, session_id: str) -> dict[str, Any]:
        """A bank debit started at checkout settles: the subscription becomes active.
        Returns the checkout.session.async_payment_succeeded event."""
        with self._lock:
            session = self.sessions[session_id]
            session["payment_status"] = "paid"
            self.subscriptions[session["subscription"]]["status"] = "active"
            return self.event("checkout.session.async_payment_succeeded", _public(session))

    def expire_checkout(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            session = self.sessions[session_id]
            session["status"] = "expired"
            return self.event("checkout.session.expired", _public(session))

    def invoice_event(
        self,
        kind: str,
        subscription_id: str,
        *,
        billing_reason: str = "subscription_cycle",
        next_payment_attempt: int | None = None,
    ) -> dict[str, Any]:
        """``invoice.paid`` or ``invoice.payment_failed`` for the subscription's
        current period (a renewal moves the period on a month first). The
        subscription's status follows, as at Stripe: active once paid; past_due
        when a renewal fails, incomplete when the first payment does."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            if billing_reason == "subscription_cycle":
                sub["current_period_start"] = sub["current_period_end"]
                sub["current_period_end"] += MONTH
            price = self.prices[sub["price"]]
            paid = kind == "invoice.paid"
            if paid:
                sub["status"] = "active"
            else:
                sub["status"] = (
                    "past_due" if billing_reason != "subscription_create" else "incomplete"
                )
            start, end = sub["current_period_start"], sub["current_period_end"]
            invoice_id = stripe_id("in")
            sub["latest_invoice"] = invoice_id
            invoice = {
                "id": invoice_id,
                "object": "invoice",
                "account_country": "US",
                "amount_due": price["unit_amount"],
                "amount_paid": price["unit_amount"] if paid else 0,
                "amount_remaining": 0 if paid else price["unit_amount"],
                "attempt_count": 1,
                "attempted": True,
                "billing_reason": billing_reason,
                "collection_method": "charge_automatically",
                "created": int(time.time()),
                "currency": "usd",
                "customer": sub["customer"],
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "id": stripe_id("il"),
                            "object": "line_item",
                            "amount": price["unit_amount"],
                            "currency": "usd",
                            "description": "1 x Agent (at $9.00 / month)",
                            "parent": {
                                "type": "subscription_item_details",
                                "subscription_item_details": {
                                    "subscription": subscription_id,
                                    "subscription_item": stripe_id("si"),
                                    "proration": False,
                                },
                            },
                            "period": {"start": start, "end": end},
                            "pricing": {
                                "type": "price_details",
                                "price_details": {
                                    "price": price["id"],
                                    "product": price["product"],
                                },
                            },
                            "quantity": 1,
                        }
                    ],
                    "has_more": False,
                    "total_count": 1,
                    "url": f"/v1/invoices/{invoice_id}/lines",
                },
                "livemode": False,
                "next_payment_attempt": None if paid else next_payment_attempt,
                "number": f"FAKE-{len(self.requests):04d}",
                "parent": {
                    "type": "subscription_details",
                    "quote_details": None,
                    "subscription_details": {
                        "metadata": sub["metadata"],
                        "subscription": subscription_id,
                    },
                },
                # An invoice's own period is the one before the line items' period.
                "period_end": start,
                "period_start": start - MONTH if billing_reason == "subscription_cycle" else start,
                "status": "paid" if paid else "open",
                "total": price["unit_amount"],
            }
            return self.event(kind, invoice)

    def pay_invoice(self, failed: dict[str, Any]) -> dict[str, Any]:
        """Stripe's retry of a failed invoice succeeds: the same invoice is paid and
        the subscription active again. Returns that invoice's ``invoice.paid`` event."""
        with self._lock:
            invoice = dict(failed["data"]["object"])
            sub = self.subscriptions[invoice["parent"]["subscription_details"]["subscription"]]
            sub["status"] = "active"
            invoice.update(
                amount_paid=invoice["amount_due"],
                amount_remaining=0,
                attempt_count=invoice["attempt_count"] + 1,
                next_payment_attempt=None,
                status="paid",
            )
            return self.event("invoice.paid", invoice)

    def subscription_deleted(self, subscription_id: str) -> dict[str, Any]:
        """Stripe ends the subscription (the retries ran out, say, or the customer
        canceled in the portal)."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            self._end(sub)
            return self.event("customer.subscription.deleted", self._subscription_object(sub))

    def subscription_updated(self, subscription_id: str) -> dict[str, Any]:
        """The event Stripe sends with each change of a subscription's status."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            return self.event("customer.subscription.updated", self._subscription_object(sub))

    # --- The hosted checkout page ---------------------------------------------------------

    def pay(self, session_id: str) -> str:
        """The Pay button: completes the checkout, delivers checkout.session.completed
        and invoice.paid to ``webhook_url``, and returns where the browser goes next."""
        session = self.sessions[session_id]
        completed = self.complete_checkout(session_id)
        paid = self.invoice_event(
            "invoice.paid",
            completed["data"]["object"]["subscription"],
            billing_reason="subscription_create",
        )
        if self.delivery_delay:
            threading.Timer(self.delivery_delay, self._deliver_all, [completed, paid]).start()
        else:
            self._deliver_all(completed, paid)
        return session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)

    def _deliver_all(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.deliver(event)

    def deliver(self, event: dict[str, Any]) -> int:
        """POST a signed event to ``webhook_url``, as Stripe does; returns the status."""
        if not self.webhook_url:
            raise RuntimeError("set webhook_url first")
        status = post_signed(self.webhook_url, event, self.webhook_secret)
        self.deliveries.append((event["type"], status))
        return status


def _public(session: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in session.items() if not key.startswith("_")}


def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for ``payload``, made by the stripe library."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


def post_signed(url: str, event: dict[str, Any], secret: str = WEBHOOK_SECRET) -> int:
    payload = json.dumps(event)
    request = urllib.request.Request(  # noqa: S310 - a test URL we were given
        url,
        data=payload.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload, secret)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripe
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        path = urlsplit(self.path).path
        hosted = re.fullmatch(r"/c/pay/([^/]+)", path)
        if hosted:
            self._redirect(self.fake.pay(hosted[1]))
            return
        request = RecordedRequest(
            method="POST",
            path=path,
            params=decode_form(body),
            headers={key.lower(): value for key, value in self.headers.items()},
        )
        self._json(*self.fake.respond(request))

    def do_DELETE(self) -> None:
        request = RecordedRequest(
            method="DELETE",
            path=urlsplit(self.path).path,
            params=decode_form(urlsplit(self.path).query),
            headers={key.lower(): value for key, value in self.headers.items()},
        )
        self._json(*self.fake.respond(request))

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        hosted = re.fullmatch(r"/c/pay/([^/]+)", path)
        session = self.fake.sessions.get(hosted[1]) if hosted else None
        if session is None:
            request = RecordedRequest(
                "GET", path, {}, {key.lower(): value for key, value in self.headers.items()}
            )
            self._json(*self.fake.respond(request))
            return
        price = self.fake.prices[session["_price"]]
        page = (
            "<!DOCTYPE html><html><head><title>Fake Stripe Checkout</title></head><body>"
            "<h1>Fake Stripe Checkout</h1>"
            f"<p>Subscribe: ${price['unit_amount'] / 100:.2f} / month</p>"
            f'<form method="post" action="/c/pay/{session["id"]}">'
            '<button type="submit" id="pay">Pay and subscribe</button></form>'
            f'<p><a id="cancel" href="{session["cancel_url"]}">Back</a></p></body></html>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", stripe_id("req"))
        self.send_header("Stripe-Version", self.headers.get("Stripe-Version", API_VERSION))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _redirect(self, location: str) -> None:
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``fake.requests`` instead."""


# Named apart from their fixture names, so a test module can import them
# without its test arguments shadowing the import.
@pytest.fixture(name="fake_stripe")
def fake_stripe_fixture() -> Iterator[FakeStripe]:
    """A running fake Stripe on 127.0.0.1 with the prices ``price_starter`` and ``price_pro``."""
    with FakeStripe() as fake:
        fake.add_price("price_starter", amount=900, product="Starter")
        fake.add_price("price_pro", amount=2900, product="Pro")
        yield fake


@pytest.fixture(name="stripe_api")
def stripe_api_fixture(fake_stripe: FakeStripe, settings: Any) -> FakeStripe:
    """The fake, with the app's Stripe settings pointing at it (Stripe mode on)."""
    settings.STRIPE_SECRET_KEY = fake_stripe.api_key
    settings.STRIPE_WEBHOOK_SECRET = fake_stripe.webhook_secret
    settings.STRIPE_API_BASE = fake_stripe.url
    return fake_stripe
