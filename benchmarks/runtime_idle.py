"""What an idle agent costs: the runtime image's size, and CPU and memory per container
with N agents idle on one engine, against the health check the image used to have.

    flock /tmp/saferclaw-docker.lock ./dev bench runtime_idle [AGENTS] [SECONDS]

N agents (default 50) are deployed from the real runtime image, hardened, on the
local test droplet; each long-polls a real control plane (Django under uvicorn,
in this process) that has nothing for it. Over a window (default 60 s) it reads
each container's CPU time and memory from its cgroup (v1: cpuacct.usage,
memory.stat), and this process's own CPU (the control plane serving N polls).

Baseline, same run, same containers: Docker's HEALTHCHECK as the image had it
(``python3 … --healthcheck`` every 10 s) added to the same N containers, to show
what dropping it saves. Every container it made is removed.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.runtime_stack import deploy, django_database, machine, stack

CGROUP = Path("/sys/fs/cgroup")
# The old image's check started python3 on the runtime's main.py every 10 s; this
# starts the same interpreter (without importing that module), so it is a floor.
OLD_HEALTHCHECK = {
    "Test": ["CMD", "python3", "-c", "import os, sys; sys.exit(0)"],
    "Interval": 10_000_000_000,
    "Timeout": 5_000_000_000,
    "Retries": 3,
}


def cpu_ns(container_id: str) -> int:
    return int((CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage").read_text())


def memory(container_id: str) -> dict[str, int]:
    """The container's memory: resident (rss) and its usage without page cache."""
    folder = CGROUP / "memory" / "docker" / container_id
    stat = dict(
        (key, int(value))
        for key, value in (
            line.split() for line in (folder / "memory.stat").read_text().splitlines()
        )
    )
    usage = int((folder / "memory.usage_in_bytes").read_text())
    return {"rss": stat.get("total_rss", stat.get("rss", 0)), "usage": usage - stat.get("cache", 0)}


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(ids: list[str], seconds: float) -> dict[str, float]:
    before = {cid: cpu_ns(cid) for cid in ids}
    server_before, started = own_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    used = [(cpu_ns(cid) - before[cid]) / 1e9 for cid in ids]
    memories = [memory(cid) for cid in ids]
    return {
        "cpu_pct_each": sum(used) / len(ids) / elapsed * 100,
        "cpu_pct_max": max(used) / elapsed * 100,
        "cpu_pct_all": sum(used) / elapsed * 100,
        "rss_mib_each": sum(m["rss"] for m in memories) / len(ids) / 1024**2,
        "usage_mib_each": sum(m["usage"] for m in memories) / len(ids) / 1024**2,
        "server_cpu_pct": (own_cpu_seconds() - server_before) / elapsed * 100,
    }


def main(count: int = 50, seconds: float = 60) -> None:
    with django_database() as database, stack(capacity=count) as ctx:
        engine = ctx["engine"]
        image = engine.images.get(ctx["env"]["SAFERCLAW_RUNTIME_IMAGE"])
        agents = [deploy(ctx["owner"], f"idle-{i}") for i in range(count)]
        ids = [agent.container_id for agent in agents]
        time.sleep(5)  # start-up done, every runtime in its first long poll
        ours = measure(ids, seconds)

        # Baseline: the same containers with the old image's health check.
        from agents.services import container_spec_for
        from agents.tokens import issue_agent_token
        from droplets.containers import run_container

        baseline_ids = []
        for agent in agents:
            engine.api.remove_container(agent.container_id, force=True)
            spec = container_spec_for(
                agent, droplet=ctx["droplet"], token=issue_agent_token(agent=agent)
            )
            spec = type(spec)(**{**spec.__dict__, "healthcheck": OLD_HEALTHCHECK})
            baseline_ids.append(run_container(ctx["droplet"], spec))
        time.sleep(15)  # past the first health checks
        baseline = measure(baseline_ids, seconds)

    print(f"machine: {machine()}")
    print(f"control plane: Django + gateway under uvicorn in this process, {database}")
    print(f"runtime image: {image.tags[0]}, {image.attrs['Size'] / 1024**2:.1f} MiB")
    print(f"{count} idle agents on one engine, measured over {seconds:.0f} s each\n")
    print(f"{'':44}{'runtime now':>14}{'+ old HEALTHCHECK':>20}")
    rows = [
        ("CPU per agent (% of one core)", "cpu_pct_each", "{:.3f}"),
        ("CPU of the busiest agent (% of one core)", "cpu_pct_max", "{:.3f}"),
        (f"CPU of all {count} agents (% of one core)", "cpu_pct_all", "{:.2f}"),
        ("memory per agent, resident (MiB)", "rss_mib_each", "{:.1f}"),
        ("memory per agent, without page cache (MiB)", "usage_mib_each", "{:.1f}"),
        ("control plane CPU serving the polls (%)", "server_cpu_pct", "{:.2f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:44}{fmt.format(ours[key]):>14}{fmt.format(baseline[key]):>20}")
    ratio = (
        baseline["cpu_pct_each"] / ours["cpu_pct_each"] if ours["cpu_pct_each"] else float("inf")
    )
    print(
        f"\nidle CPU per agent: {ours['cpu_pct_each']:.3f} % of a core (goal <= 0.2 %), "
        f"{ratio:.0f}x less than with the old health check; "
        f"memory {ours['rss_mib_each']:.1f} MiB resident (goal <= 20 MiB)."
    )


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:3]]
    main(int(args[0]) if args else 50, args[1] if len(args) > 1 else 60)
