"""Every bad input is a 4xx in its endpoint's own error shape, never a 500 (issue 15).

Each endpoint family (pages, admin, API, agent API, gateway, both webhooks) gets
NUL bytes, lone surrogates, deep nesting, huge numbers, odd headers, wrong types
and content types where its input arrives; the answer must be a 4xx in that
family's shape, with no ERROR log record and nothing written or reserved. Run on
PostgreSQL (as CI does): several of these only broke there, where text and jsonb
columns cannot hold a NUL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid

import httpx
import pytest
from django.test import Client
from knox.models import AuthToken

from agents.models import KillSwitchCall
from agents.services import create_agent
from billing.models import StripeEvent
from billing.tests.fake_stripe import sign as stripe_sign
from gateway.models import UsageRecord
from gateway.tests.fake_providers import fake_provider_server, fake_providers
from gateway.tests.fixtures import gateway, make_agent, prices

__all__ = ["fake_provider_server", "fake_providers", "gateway", "make_agent", "prices"]

OPERATOR_SECRET = "operator-secret-" + "o" * 32
STRIPE_SECRET = "whsec_malformed_input_suite"
DEEP = "[" * 1000 + "]" * 1000
DEEP_OPEN = "[" * 1000  # fits the kill switch's 1 KiB; Python's json recursed on it
NUL_JSON = '"a\\u0000b"'  # a NUL as JSON writes it
SURROGATE_JSON = '"\\ud800"'  # a lone surrogate as JSON writes it


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.fixture(autouse=True)
def no_error_logs(caplog):
    """No ERROR record, from Django, our code or the ASGI server (whose loggers stop at
    "uvicorn", so the capture handler goes there too)."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    yield
    uvicorn_logger.removeHandler(caplog.handler)
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


@pytest.fixture(autouse=True)
def secrets(settings):
    settings.KILL_SWITCH_SECRET = [OPERATOR_SECRET]
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_SECRET


def api_error(response, status: int | None = None) -> dict:
    """Our JSON error shape: {"error": {"code", "message"}} and a 4xx."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    if status is not None:
        assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"]
    assert body["error"]["message"]
    return body["error"]


def live_error(response: httpx.Response, shape: str) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    if shape == "openai":
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    elif shape == "anthropic":
        assert body["type"] == "error", body
        assert body["error"]["message"], body
    else:
        assert set(body) == {"error"}, body
        assert body["error"]["code"], body
    return body["error"]


def token_client(user) -> Client:
    _, token = AuthToken.objects.create(user)
    return Client(headers={"Authorization": f"Token {token}"})


# --- Pages and admin ------------------------------------------------------------------------


def test_a_nul_in_the_session_cookie_is_refused_before_the_session_lookup(db):
    client = Client()
    client.cookies["sessionid"] = "abc\x00def"
    response = client.get("/dashboard/")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "url",
    [
        "/accounts/login/?next=%00",
        "/dashboard/%00/",
        "/accounts/login/?%00=1",
        "/accounts/login/?next=%ED%A0%80",  # a surrogate's UTF-8 bytes: replaced, not kept
    ],
)
def test_pages_refuse_nul_in_path_and_query(db, url):
    response = Client().get(url)
    if "%ED" in url:
        assert response.status_code < 500
    else:
        assert response.status_code == 400


def test_an_admin_list_filter_with_a_nul_is_refused(admin_client):
    response = admin_client.get("/admin/agents/agent/?status__exact=%00")
    assert response.status_code == 400
    response = admin_client.get("/admin/agents/killswitchcall/?outcome=%00")
    assert response.status_code == 400


def test_a_header_that_is_not_ascii_is_refused_on_a_page(db):
    response = Client().get("/accounts/login/", headers={"User-Agent": "caf\u00e9"})
    assert response.status_code == 400


def test_a_host_we_do_not_serve_is_refused_without_an_error_log(db):
    response = Client().get("/accounts/login/", HTTP_HOST="evil.example")
    assert response.status_code == 400


# --- The API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (DEEP, "nests deeper"),
        (f'{{"name": {NUL_JSON}, "plan": 1}}', "NUL"),
        (f'{{"name": {SURROGATE_JSON}}}', "not valid JSON"),
        ('{"name": "x", "monthly_cost_cap": 1e30}', "out of range"),
        ('{"name": "x", "max_tokens": 100000000000000000000}', "out of range"),
        ("[1, 2]", ""),
        ("null", ""),
        ("{", "not valid JSON"),
    ],
    ids=["deep", "nul", "surrogate", "huge-float", "huge-int", "array", "null", "broken"],
)
def test_api_bodies_are_refused_in_the_api_shape(alice, body, why):
    response = token_client(alice).post("/api/agents/", body, content_type="application/json")
    error = api_error(response, 400)
    assert why in error["message"]


def test_api_wrong_content_type_is_415(alice):
    response = token_client(alice).post("/api/agents/", "name=x", content_type="text/plain")
    api_error(response, 415)


def test_api_form_fields_with_a_nul_are_refused(alice, agent):
    response = token_client(alice).post(f"/api/agents/{agent.pk}/messages", {"content": "a\x00b"})
    api_error(response, 400)


def test_api_query_and_path_with_a_nul_are_refused(alice, agent):
    client = token_client(alice)
    api_error(client.get(f"/api/agents/{agent.pk}/logs?tail=%00"), 400)
    api_error(client.get("/api/agents/%00/"), 400)
    api_error(client.get(f"/api/agents/{agent.pk}/logs?tail=-1"), 400)
    api_error(client.get(f"/api/agents/{agent.pk}/logs?tail=99999999999999999999999"), 400)


def test_a_post_without_the_trailing_slash_is_told_the_url_not_redirected(alice):
    response = token_client(alice).post(
        "/api/agents", {"name": "x"}, content_type="application/json"
    )
    error = api_error(response, 404)
    assert error["url"] == "/api/agents/"


# --- The agent API --------------------------------------------------------------------------


def test_heartbeat_405_is_json_with_allow(db):
    response = Client().get("/agent-api/v1/heartbeat")
    api_error(response, 405)
    assert response["Allow"] == "POST"
    response = Client().post("/agent-api/v1/tools")
    api_error(response, 405)
    assert response["Allow"] == "GET"


def test_agent_api_bad_host_is_a_json_400(db):
    response = Client().post("/agent-api/v1/heartbeat", HTTP_HOST="evil.example")
    api_error(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        '{"arguments": {"query": ' + NUL_JSON + "}}",
        '{"arguments": {"n": 1e300}}',
        "{",
        '{"arguments": ' + nested(200, "{}") + "}",
    ],
    ids=["deep", "nul", "huge", "broken", "deep-arguments"],
)
def test_agent_api_bodies_are_refused(agent, body):
    from agents.tokens import issue_agent_token

    token = issue_agent_token(agent=agent)
    response = Client().post(
        "/agent-api/v1/tools/web_search",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    api_error(response)
    reply = Client().post(
        f"/agent-api/v1/runs/{uuid.uuid4()}/reply",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    api_error(reply)


# --- The kill switch webhook ----------------------------------------------------------------


def kill_headers(agent_id: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    message = f"{ts}.{agent_id}.".encode() + body
    digest = hmac.new(OPERATOR_SECRET.encode(), message, hashlib.sha256).hexdigest()
    return {"X-SaferClaw-Timestamp": ts, "X-SaferClaw-Signature": f"v2={digest}"}


def test_kill_switch_path_with_a_nul_is_refused_and_writes_nothing(db):
    response = Client().post("/webhooks/agent-kill/%00", b"", content_type="application/json")
    api_error(response, 400)
    assert not KillSwitchCall.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        DEEP_OPEN.encode(),
        b'{"action": ' + NUL_JSON.encode() + b"}",
        b'{"action": "stop", "agent_id": 1e300}',
        b"[1]",
    ],
    ids=["deep", "nul", "huge", "array"],
)
def test_a_validly_signed_kill_with_a_bad_body_is_a_400(agent, body):
    response = Client().post(
        f"/webhooks/agent-kill/{agent.pk}",
        body,
        content_type="application/json",
        headers=kill_headers(str(agent.pk), body),
    )
    assert api_error(response, 400)["code"] == "invalid_body"
    agent.refresh_from_db()
    assert agent.status != "killed"


def test_kill_switch_bad_host_is_a_json_400(db):
    response = Client().post(f"/webhooks/agent-kill/{uuid.uuid4()}", HTTP_HOST="evil.example")
    api_error(response, 400)


# --- The Stripe webhook ---------------------------------------------------------------------


def stripe_post(payload: str, signature: str | None = None):
    return Client().post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": signature or stripe_sign(payload, STRIPE_SECRET)},
    )


def event(**fields) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "customer.updated",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": "cus_1", "object": "customer"}},
        **fields,
    }


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps(event(data={"object": {"id": "cus_1", "nested": "@"}})).replace(
            '"@"', nested(900)
        ),
        json.dumps(event(data={"object": {"id": "cus_1", "description": "a\x00b"}})),
        json.dumps(event(created=0)).replace('"created": 0', '"created": 1e30'),
        json.dumps(event(created=0)).replace('"created": 0', '"created": 100000000000000'),
        json.dumps([event()]),
        json.dumps(event()).replace('"cus_1"', SURROGATE_JSON),
    ],
    ids=["deep", "nul", "created-1e30", "created-far", "array", "surrogate"],
)
def test_a_signed_stripe_event_with_a_bad_body_is_a_400_and_not_stored(db, payload):
    response = stripe_post(payload)
    assert api_error(response, 400)["code"] == "bad_webhook"
    assert not StripeEvent.objects.exists()


def test_a_stripe_signature_header_that_is_not_stripes_format_is_a_400(db):
    payload = json.dumps(event())
    good = stripe_sign(payload, STRIPE_SECRET)
    timestamp = good.split(",")[0][2:]
    for header in (f"t={timestamp}=x,{good.split(',')[1]}", "t=,v1=", "v1=ab", "t=1" * 100):
        assert api_error(stripe_post(payload, header), 400)["code"] == "bad_webhook"


def test_stripe_webhook_405_is_json_with_allow(db):
    response = Client().get("/webhooks/stripe")
    api_error(response, 405)
    assert response["Allow"] == "POST"


def test_stripe_webhook_bad_host_is_a_json_400(db):
    response = Client().post("/webhooks/stripe", "{}", "application/json", HTTP_HOST="evil.example")
    api_error(response, 400)


# --- Through the ASGI server: gateway, kill switch's lean path, Django ----------------------


def chat(gateway_url: str, token: str, body: bytes, **headers) -> httpx.Response:
    return httpx.post(
        f"{gateway_url}/gateway/openai/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json", **headers},
    )


def message(gateway_url: str, token: str, body: bytes, headers=None) -> httpx.Response:
    return httpx.post(
        f"{gateway_url}/gateway/anthropic/v1/messages",
        content=body,
        headers=[
            (b"x-api-key", token.encode()),
            (b"content-type", b"application/json"),
            *(headers or []),
        ],
    )


def openai_body(**fields) -> bytes:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (openai_body(model="gpt-test\x00"), "NUL"),
        (openai_body(model="@").replace(b'"@"', SURROGATE_JSON.encode()), "not valid JSON"),
        (DEEP.encode(), "nests deeper"),
        (openai_body(n=10**16), ""),
        (openai_body(seed=10**20), "out of range"),
        (openai_body(max_completion_tokens=1e30), "out of range"),
        (
            openai_body(
                tools=[{"type": "function", "function": {"name": "f", "parameters": "@"}}]
            ).replace(b'"@"', nested(300, "{}").encode()),
            "nests deeper",
        ),
        (b"[]", "JSON object"),
        (openai_body(messages="hi"), ""),
    ],
    ids=[
        "nul-model",
        "surrogate-model",
        "deep",
        "n-huge",
        "seed-huge",
        "max-tokens-1e30",
        "deep-tool-schema",
        "array",
        "wrong-type",
    ],
)
def test_gateway_bodies_are_refused_in_openais_shape(gateway, make_agent, body, why):
    bot = make_agent()
    response = chat(gateway, bot.token, body)
    assert why in live_error(response, "openai")["message"]
    assert not UsageRecord.objects.exists()
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)


def test_a_non_ascii_anthropic_beta_header_leaves_nothing_reserved(gateway, make_agent):
    bot = make_agent("anthropic")
    body = json.dumps(
        {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    response = message(gateway, bot.token, body, [(b"anthropic-beta", "b\u00eata".encode())])
    live_error(response, "anthropic")
    assert not UsageRecord.objects.exists()
    agent = bot.refresh()
    assert (agent.reserved_tokens, agent.reserved_cost) == (0, 0)


def test_gateway_path_and_query_with_a_nul_are_refused_in_the_providers_shape(gateway, make_agent):
    bot = make_agent()
    response = httpx.post(
        f"{gateway}/gateway/openai/v1/chat/completions?x=%00",
        content=openai_body(),
        headers={"authorization": f"Bearer {bot.token}", "content-type": "application/json"},
    )
    live_error(response, "openai")
    assert not UsageRecord.objects.exists()


def test_kill_switch_lean_path_refuses_a_nul_and_writes_nothing(gateway):
    response = httpx.post(f"{gateway}/webhooks/agent-kill/%00", content=b"")
    assert live_error(response, "api")["code"] == "bad_request"
    assert not KillSwitchCall.objects.exists()


def test_kill_switch_lean_path_refuses_a_signed_deep_body(gateway, alice):
    agent = create_agent(owner=alice, name="k", provider_key="sk-x")
    body = DEEP_OPEN.encode()
    response = httpx.post(
        f"{gateway}/webhooks/agent-kill/{agent.pk}",
        content=body,
        headers=kill_headers(str(agent.pk), body),
    )
    assert live_error(response, "api")["code"] == "invalid_body"


def test_huge_and_non_ascii_headers_are_refused_by_every_family(gateway, make_agent):
    bot = make_agent()
    odd = [(b"x-note", "caf\u00e9".encode())]
    response = chat(gateway, bot.token, openai_body(), **{"x-note": "caf\u00e9".encode()})
    live_error(response, "openai")
    for path in ("/api/agents/", "/agent-api/v1/heartbeat", "/webhooks/stripe"):
        response = httpx.post(f"{gateway}{path}", content=b"{}", headers=odd)
        assert live_error(response, "api")["code"] == "bad_request", path
    response = httpx.get(f"{gateway}/accounts/login/", headers=odd)
    assert response.status_code == 400
    # Past the boundary's header limit: refused in the family's shape, before the token.
    huge = [(b"x-pad", b"a" * 100_000)]
    response = chat(gateway, bot.token, openai_body(), **{"x-pad": "a" * 100_000})
    assert "exceed" in live_error(response, "openai")["message"]
    for path in ("/api/agents/", "/webhooks/stripe"):
        response = httpx.post(f"{gateway}{path}", content=b"{}", headers=huge)
        assert "exceed" in live_error(response, "api")["message"], path
    response = httpx.get(f"{gateway}/accounts/login/", headers=huge)
    assert response.status_code == 400
    assert "exceed" in response.text
    assert not UsageRecord.objects.exists()


def test_a_whole_number_past_64_bits_in_a_path_or_query_is_refused(alice, admin_client, agent):
    """No id is that large; SQLite raised OverflowError on one (an admin filter, an id)."""
    huge = "9" * 25
    client = token_client(alice)
    api_error(client.get(f"/api/agents/{agent.pk}/schedules/{huge}"), 400)
    api_error(client.get(f"/api/agents/{agent.pk}/messages?before={huge}"), 400)
    api_error(client.get(f"/api/agents/{agent.pk}/messages?before=1{'0' * 5000}"), 400)
    assert admin_client.get(f"/admin/billing/plan/?id={huge}").status_code == 400
    assert admin_client.get(f"/admin/billing/plan/{huge}/change/").status_code == 400
    # Within range still reaches the view (and is simply not found).
    api_error(client.get(f"/api/agents/{agent.pk}/schedules/{2**63 - 1}"), 404)


def test_wrong_content_types_and_types_are_refused_in_each_shape(alice, agent):
    from agents.tokens import issue_agent_token

    token = issue_agent_token(agent=agent)
    form = "arguments=1&x=%00"
    agent_api = Client(headers={"Authorization": f"Bearer {token}"})
    response = agent_api.post(
        "/agent-api/v1/tools/web_search", form, "application/x-www-form-urlencoded"
    )
    assert api_error(response, 400)["code"] == "invalid_json"
    assert stripe_post_raw(form, "application/x-www-form-urlencoded").status_code == 400
    kill_body = form.encode()
    response = Client().post(
        f"/webhooks/agent-kill/{agent.pk}",
        kill_body,
        content_type="application/x-www-form-urlencoded",
        headers=kill_headers(str(agent.pk), kill_body),
    )
    assert api_error(response, 400)["code"] == "invalid_body"
    client = token_client(alice)
    for body in ({"name": ["x"], "plan": "Basic"}, {"name": {"a": 1}}, {"plan": 5, "name": None}):
        api_error(client.post("/api/agents/", body, content_type="application/json"), 400)
    api_error(client.post("/api/agents/", b"\xff\xfe", content_type="application/json"), 400)


def stripe_post_raw(payload: str, content_type: str):
    return Client().post(
        "/webhooks/stripe",
        data=payload,
        content_type=content_type,
        headers={"Stripe-Signature": stripe_sign(payload, STRIPE_SECRET)},
    )
