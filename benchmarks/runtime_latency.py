"""Owner's message to the agent's reply, through everything real, with a model that
answers at once.

    flock /tmp/saferclaw-docker.lock ./dev bench runtime_latency [MESSAGES]

One agent runs the real runtime image, hardened, on the local test droplet,
behind its firewall. Each of N messages (default 50) is POSTed to
``/api/agents/<id>/messages`` over HTTP with an API token, and timed until its
reply is in the database. The model is the tests' OpenAI stand-in, answering
at once. Split of each round trip (p50/p95):

* API: the POST until its 201;
* inbox: the message stored → its run handed out (the long poll woken);
* gateway: the gateway's own time for the model call (its ledger's latency,
  which includes the stand-in's answer);
* runtime: run handed out → reply stored, less the gateway's time (the
  runtime's work and its HTTP hops: handout, model call, reply).

Baseline, same run: the stand-in model called directly from this process with
the runtime's own HTTP client (a model call without the gateway and the container).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.runtime_stack import deploy, django_database, machine, percentile, stack


def main(count: int = 50) -> None:
    with django_database() as database:
        from decimal import Decimal

        from django.conf import settings

        from gateway.models import ModelPrice
        from gateway.proxy import forget_prices
        from gateway.tests.fake_providers import FakeProviders

        model = FakeProviders().start()
        settings.OPENAI_UPSTREAM_URL = model.openai_base
        settings.AGENT_MODEL_OPENAI = "gpt-bench"
        price = Decimal("1.00")
        ModelPrice.objects.update_or_create(
            provider="openai",
            model="gpt-bench",
            defaults={
                "input_per_mtok": price,
                "cached_input_per_mtok": price,
                "cache_write_5m_per_mtok": price,
                "output_per_mtok": price,
            },
        )
        forget_prices()
        try:
            with stack(capacity=2) as ctx:
                timings = measure(ctx, count)
                baseline = direct_model_calls(model, count)
        finally:
            model.stop()
    print(f"machine: {machine()}")
    print(f"control plane: Django + gateway under uvicorn in this process, {database}")
    print(f"{count} messages, one at a time, to one agent in a hardened container\n")
    print(f"{'':46}{'p50 ms':>10}{'p95 ms':>10}")
    for label, key in (
        ("owner's POST -> reply stored", "total"),
        ("  API: POST -> 201", "api"),
        ("  inbox: message stored -> run handed out", "inbox"),
        ("  gateway: the model call, as it timed it", "gateway"),
        ("  runtime: handed out -> reply, less gateway", "runtime"),
        ("baseline: stand-in model called directly", None),
    ):
        values = timings[key] if key else baseline
        print(
            f"{label:46}{percentile(values, 0.5) * 1000:>10.1f}"
            f"{percentile(values, 0.95) * 1000:>10.1f}"
        )


def measure(ctx: dict, count: int) -> dict[str, list[float]]:
    import httpx
    from knox.models import AuthToken

    from agents.conversations import Message, MessageRole, Run
    from agents.tests.live_agents import OWNER_API
    from gateway.models import UsageRecord
    from gateway.provider_standin import DEFAULT_TEXT

    agent = deploy(ctx["owner"], "latency")
    _, token = AuthToken.objects.create(ctx["owner"])
    client = httpx.Client(
        base_url=OWNER_API, headers={"Authorization": f"Token {token}"}, trust_env=False
    )
    url = f"/api/agents/{agent.id}/messages"
    timings: dict[str, list[float]] = {
        k: [] for k in ("total", "api", "inbox", "gateway", "runtime")
    }
    for index in range(count + 3):  # the first three warm up, unmeasured
        started = time.perf_counter()
        response = client.post(url, json={"content": f"Message {index}"})
        api = time.perf_counter() - started
        assert response.status_code == 201, response.text
        run_id = response.json()["run"]["id"]
        reply = None
        while reply is None:
            reply = Message.objects.filter(in_reply_to_id=run_id, role=MessageRole.AGENT).first()
            if reply is None:
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"no reply to message {index} in 60 s")
                time.sleep(0.001)
        total = time.perf_counter() - started
        # The stand-in's own answer, not an error reply: this times the whole way through.
        assert reply.content == DEFAULT_TEXT, reply.content
        if index < 3:
            continue
        run = Run.objects.select_related("message").get(pk=run_id)
        gateway = (
            sum(UsageRecord.objects.filter(run_id=str(run_id)).values_list("latency_ms", flat=True))
            / 1000
        )
        handed = (run.started_at - run.message.created_at).total_seconds()
        working = (reply.created_at - run.started_at).total_seconds()
        timings["total"].append(total)
        timings["api"].append(api)
        timings["inbox"].append(handed)
        timings["gateway"].append(gateway)
        timings["runtime"].append(max(0.0, working - gateway))
    client.close()
    return timings


def direct_model_calls(model, count: int) -> list[float]:
    """The stand-in called with the runtime's own HTTP client: a model call without us."""
    from runtime_image.agent_runtime.control_plane import ControlPlane

    direct = ControlPlane(model.base_url, "sk-direct")
    body = {"model": "gpt-bench", "messages": [{"role": "user", "content": "hi"}]}
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = direct.post("/v1/chat/completions", body, timeout=10)
        assert answer.status == 200, answer
        times.append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
