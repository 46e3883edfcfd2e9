"""Fault: PostgreSQL restarts under a running control plane, or is not there.

The control plane (uvicorn, production settings) runs against a PostgreSQL
cluster of the test's own, which is stopped and started again. While it is
down, the API answers a JSON 503, a page a static 503 page and the gateway a
503 in the provider's error shape, with nothing reserved; once it is back the
same server process answers everything again, and the ledger holds exactly the
calls that were answered, all settled. A server whose database cannot be used
(it does not exist) answers the same 503s; the gateway logs one line naming why,
not a traceback.
"""

from __future__ import annotations

import json
import uuid

import httpx
import psycopg
import pytest

from benchmarks.gateway_targets import PREPARE_AGENTS, UPSTREAM_KEY, standin
from safer_claw.tests.faults.harness import (
    PgCluster,
    free_port,
    manage,
    port_answers,
    run_database_url,
    service_env,
    uvicorn,
    wait_until,
)

pytestmark = [pytest.mark.faults]

# An API token and a signed-in session for the agents' owner; printed as JSON.
PREPARE_OWNER = """
import json
from django.contrib.auth import get_user_model
from django.test import Client
from allauth.account.models import EmailAddress
from safer_claw.accounts.services import mint_api_token
owner = get_user_model().objects.get(email="bench@example.com")
EmailAddress.objects.create(user=owner, email=owner.email, verified=True, primary=True)
_, token = mint_api_token(user=owner)
client = Client()
client.force_login(owner)
print(json.dumps({"api": token, "session": client.cookies["sessionid"].value}))
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


@pytest.fixture
def cluster():
    pg = PgCluster()
    pg.init()
    pg.start()
    pg.create_database("saferclaw")
    yield pg
    pg.destroy()


def calls(base: str, owner: dict[str, str], agent_token: str) -> dict[str, httpx.Response]:
    """One request of each kind a user or an agent makes."""
    with httpx.Client(base_url=base, timeout=30) as client:
        page = httpx.Client(base_url=base, timeout=30, cookies={"sessionid": owner["session"]})
        with page:
            dashboard = page.get("/dashboard/")
        return {
            "api": client.get("/api/agents/", headers={"Authorization": f"Token {owner['api']}"}),
            "page": dashboard,
            "gateway": client.post(
                "/gateway/openai/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {agent_token}"},
            ),
        }


def test_requests_during_a_postgres_restart_get_a_clear_503_and_all_work_after(cluster, tmp_path):
    with standin(tmp_path, reply_words=5) as upstream:
        base_upstream = upstream.urls["openai"].rsplit("/chat/completions", 1)[0]
        env = service_env(
            database_url=cluster.url("saferclaw"),
            OPENAI_UPSTREAM_URL=base_upstream,
            ANTHROPIC_UPSTREAM_URL=base_upstream,
            DATABASE_POOL_TIMEOUT="2",
        )
        manage(env, "migrate", "--noinput", "--verbosity", "0")
        script = PREPARE_AGENTS.format(
            providers=["openai"], count=1, key=UPSTREAM_KEY, models={"openai": "gpt-4o-mini"}
        )
        agent_token = json.loads(manage(env, "shell", "-c", script).splitlines()[-1])["openai"][0]
        owner = json.loads(manage(env, "shell", "-c", PREPARE_OWNER).splitlines()[-1])

        port = free_port()
        server = uvicorn(env, port, tmp_path / "uvicorn.log").start()
        try:
            wait_until(lambda: port_answers(port), what="uvicorn to listen")
            base = f"http://127.0.0.1:{port}"
            before = calls(base, owner, agent_token)
            assert {k: r.status_code for k, r in before.items()} == {
                "api": 200,
                "page": 200,
                "gateway": 200,
            }, server.output()

            cluster.stop()
            during = calls(base, owner, agent_token)
            assert {k: r.status_code for k, r in during.items()} == {
                "api": 503,
                "page": 503,
                "gateway": 503,
            }, server.output()
            assert during["api"].json()["error"]["code"] == "service_unavailable"
            assert "briefly unavailable" in during["page"].text
            assert during["page"].headers["content-type"].startswith("text/html")
            # OpenAI's own error shape, which its SDK reads (and retries on 503).
            assert during["gateway"].json()["error"]["type"] == "api_error"
            assert all(r.headers.get("retry-after") for r in during.values())

            cluster.start()
            # The pools reconnect within seconds; until then a request may still
            # get the same clear 503, never anything else.
            seen: set[int] = set()
            charged = [1]  # the gateway calls answered 200 (one before the outage)

            def all_answer() -> bool:
                answers = calls(base, owner, agent_token)
                seen.update(r.status_code for r in answers.values())
                charged[0] += answers["gateway"].status_code == 200
                return all(r.status_code == 200 for r in answers.values())

            wait_until(all_answer, what=f"every path to answer again:\n{server.output()}")
            assert seen <= {200, 503}
            assert server.process.poll() is None  # the same process throughout
        finally:
            server.stop()

    # The ledger: only answered calls, each settled; a refused one left nothing.
    with psycopg.connect(cluster.url("saferclaw")) as conn:
        rows = conn.execute("SELECT status FROM gateway_usagerecord").fetchall()
    assert [status for (status,) in rows] == ["ok"] * charged[0]


def test_a_database_that_is_not_there_gets_a_clear_503_and_no_traceback(tmp_path):
    missing = run_database_url().rsplit("/", 1)[0] + f"/saferclaw_missing_{uuid.uuid4().hex[:8]}"
    env = service_env(database_url=missing, DATABASE_POOL_TIMEOUT="2")
    port = free_port()
    server = uvicorn(env, port, tmp_path / "uvicorn.log").start()
    try:
        wait_until(lambda: port_answers(port), what="uvicorn to listen")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            gateway = client.post(
                "/gateway/openai/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": "Bearer sca_" + "x" * 43},
            )
            api = client.get("/api/agents/", headers={"Authorization": "Token " + "x" * 40})
    finally:
        server.stop()
    log = (tmp_path / "uvicorn.log").read_text(errors="replace")
    assert (gateway.status_code, api.status_code) == (503, 503), log
    assert gateway.json()["error"]["type"] == "api_error"  # OpenAI's shape: its SDK retries
    assert gateway.headers["retry-after"] == api.headers["retry-after"] == "5"
    # One line each, naming why; no traceback from the gateway or from Django.
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log, log
    assert "database unavailable (InvalidCatalogNameError): answered 503" in log
    django_line = "database unavailable (OperationalError): answered 503 to GET /api/agents/"
    assert f"WARNING django.request {django_line}" in log
