"""Fault: the control-plane process is killed (kill -9) while proxying a model call.

The provider stand-in here takes the request and holds its answer until the
test says, so the kill lands exactly mid-request. The call's reservation is
left pending; the sweeper charges it in full once (issue 8's rule), and a
second sweep charges nothing more.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agents.models import Agent
from agents.services import create_agent
from agents.tokens import issue_agent_token
from gateway.metering import charge_unsettled_calls
from gateway.models import ModelPrice, UsageRecord, UsageStatus
from safer_claw.tests.faults.harness import (
    free_port,
    port_answers,
    run_database_url,
    service_env,
    uvicorn,
    wait_until,
)

pytestmark = [pytest.mark.faults]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


class HeldUpstream:
    """An OpenAI-shaped endpoint that answers only when released."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.received.set()
                outer.release.wait(60)
                body = json.dumps({"id": "x", "object": "chat.completion", "choices": []})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def running_agent(alice) -> tuple[Agent, str]:
    agent = create_agent(owner=alice, name="proxied", provider="openai", provider_key="sk-up")
    Agent.objects.filter(pk=agent.pk).update(status="running", billing_active=True)
    ModelPrice.objects.update_or_create(
        provider="openai",
        model="gpt-4o-mini",
        defaults={
            "input_per_mtok": Decimal("0.15"),
            "cached_input_per_mtok": Decimal("0.075"),
            "cache_write_5m_per_mtok": Decimal("0.1875"),
            "cache_write_1h_per_mtok": Decimal("0.30"),
            "output_per_mtok": Decimal("0.60"),
        },
    )
    return agent, issue_agent_token(agent=agent)


def test_a_call_in_flight_when_its_process_dies_is_charged_once(transactional_db, alice, tmp_path):
    agent, token = running_agent(alice)
    upstream = HeldUpstream()
    port = free_port()
    server = uvicorn(
        service_env(database_url=run_database_url(), OPENAI_UPSTREAM_URL=upstream.url),
        port,
        tmp_path / "uvicorn.log",
    ).start()
    try:
        wait_until(lambda: port_answers(port), what="uvicorn to listen")
        seen: list[str] = []

        def call() -> None:
            try:
                httpx.post(
                    f"http://127.0.0.1:{port}/gateway/openai/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                seen.append(exc.__class__.__name__)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        assert upstream.received.wait(60), server.output()
        server.kill9()  # mid-request: the answer never comes back through it
        caller.join(30)
        assert seen == ["RemoteProtocolError"]  # the agent saw the connection drop
    finally:
        upstream.close()
        server.stop()

    record = UsageRecord.objects.get(agent=agent)
    assert record.status == UsageStatus.PENDING
    assert record.reserved_cost > 0

    assert charge_unsettled_calls(older_than=dt.timedelta(0)) == 1
    assert charge_unsettled_calls(older_than=dt.timedelta(0)) == 0  # once
    record.refresh_from_db()
    assert record.status == UsageStatus.SWEPT
    assert record.cost == record.reserved_cost
    agent.refresh_from_db()
    assert agent.cost_this_period == record.cost
