"""firewall.sh, the real script against the real iptables, in network namespaces.

It must fail closed: a re-apply never leaves a moment in which an agent's
packets get past the droplet, and bad arguments change nothing. See
droplets/tests/egress_lab.py for the namespaces.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from droplets.tests.egress_lab import (
    AGENT_IP,
    CONTROL_PLANE,
    CONTROL_PLANE_PORT,
    DROPLET_IP,
    DROPLET_UPLINK,
    INTERNET,
    METADATA,
    SCRIPT,
    SUBNET,
    WORLD_IP,
    create_lab,
    destroy_lab,
    finish,
)

GOOD = ("--subnet", SUBNET, "--control-plane", f"{CONTROL_PLANE}:{CONTROL_PLANE_PORT}")
REAPPLIES = 50


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.fail("these tests need root: they create network namespaces and iptables rules")
    lab = create_lab()
    yield lab
    destroy_lab(lab)


def start_watchers(lab) -> dict:
    """The world's capture and listeners, and one on the droplet itself."""
    return {
        "capture": lab.start(lab.world, "capture", lab.world_link),
        "control plane": lab.start(lab.world, "listen", CONTROL_PLANE, str(CONTROL_PLANE_PORT)),
        "metadata": lab.start(lab.world, "listen", METADATA, "80"),
        "internet": lab.start(lab.world, "listen", INTERNET, "443"),
        "control plane host": lab.start(lab.world, "listen", CONTROL_PLANE, "22"),
        "droplet": lab.start(lab.droplet, "listen", DROPLET_IP, "2222"),
    }


def leaks(reports: dict) -> dict:
    """What reached a forbidden address: captured packets, connections, datagrams."""
    allowed = f"{CONTROL_PLANE}:{CONTROL_PLANE_PORT}"
    found = {key: n for key, n in reports["capture"].items() if key != allowed}
    for name in ("metadata", "internet", "control plane host", "droplet"):
        found.update({f"{name}: {kind}": n for kind, n in reports[name].items()})
    return found


def test_the_lab_sees_what_gets_through_without_the_filter(lab):
    """The probe and the capture can fail the tests below: with no filter, they see leaks."""
    watchers = start_watchers(lab)
    probe = lab.start(lab.agent, "probe")
    lab.run(lab.agent, "sleep", "0.3")
    sent = finish(probe)
    reports = {name: finish(process) for name, process in watchers.items()}

    assert sent["sent"] > 0
    found = leaks(reports)
    assert f"{METADATA}:80" in found
    assert f"{INTERNET}:443" in found
    assert f"{CONTROL_PLANE}:22" in found
    assert found[f"droplet: tcp from {AGENT_IP}"] > 0


def test_re_applying_the_rules_never_lets_a_packet_through(lab):
    assert lab.firewall(*GOOD).returncode == 0
    watchers = start_watchers(lab)
    probe = lab.start(lab.agent, "probe")
    try:
        outcomes = [lab.firewall(*GOOD) for _ in range(REAPPLIES)]
    finally:
        sent = finish(probe)
        reports = {name: finish(process) for name, process in watchers.items()}

    assert [o.returncode for o in outcomes] == [0] * REAPPLIES, outcomes[-1].stderr
    assert sent["sent"] > 20 * REAPPLIES  # the probe kept sending throughout
    assert leaks(reports) == {}
    # The control plane stayed reachable the whole time.
    assert sent["control_plane_failed"] == 0
    assert sent["control_plane_ok"] > REAPPLIES
    assert reports["capture"][f"{CONTROL_PLANE}:{CONTROL_PLANE_PORT}"] > 0


BAD_ARGUMENTS = {
    "no --control-plane": ["--subnet", SUBNET],
    "--control-plane without a value": ["--subnet", SUBNET, "--control-plane"],
    "no port": ["--subnet", SUBNET, "--control-plane", CONTROL_PLANE],
    "port 0": ["--subnet", SUBNET, "--control-plane", f"{CONTROL_PLANE}:0"],
    "port too large": ["--subnet", SUBNET, "--control-plane", f"{CONTROL_PLANE}:65536"],
    "a host name": ["--subnet", SUBNET, "--control-plane", "control.example.com:443"],
    "an address out of range": ["--subnet", SUBNET, "--control-plane", "198.51.100.256:443"],
    "the metadata service": ["--subnet", SUBNET, "--control-plane", f"{METADATA}:80"],
    "loopback, not on the host": ["--subnet", SUBNET, "--control-plane", "127.0.0.1:8000"],
    "no --subnet": ["--control-plane", f"{CONTROL_PLANE}:{CONTROL_PLANE_PORT}"],
    "subnet with host bits": ["--subnet", "172.31.250.7/24", *GOOD[2:]],
    "subnet without a prefix": ["--subnet", "172.31.250.0", *GOOD[2:]],
    "subnet prefix /0": ["--subnet", "0.0.0.0/0", *GOOD[2:]],
    "subnet in IPv6": ["--subnet", "fd00::/64", *GOOD[2:]],
    "a shell metacharacter": ["--subnet", f"{SUBNET};true", *GOOD[2:]],
    "unknown argument": [*GOOD, "--open-everything"],
    "subnet given twice": [*GOOD, "--subnet", "172.31.251.0/24"],
    "--remove with a control plane": ["--remove", *GOOD],
    "nothing at all": [],
}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_arguments_change_nothing(lab, name):
    assert lab.firewall(*GOOD).returncode == 0
    before = lab.rules()

    outcome = lab.firewall(*BAD_ARGUMENTS[name])

    assert outcome.returncode != 0
    assert "firewall.sh:" in outcome.stderr
    assert lab.rules() == before


def test_remove_takes_out_exactly_what_it_added(lab):
    pristine = lab.rules()
    assert lab.firewall(*GOOD).returncode == 0
    assert lab.firewall(*GOOD).returncode == 0
    assert lab.rules() != pristine

    removed = lab.firewall("--subnet", SUBNET, "--remove")

    assert removed.returncode == 0
    assert lab.rules() == pristine


def test_the_rules_of_the_previous_script_are_replaced(lab):
    """Rules the previous firewall.sh made (chains without a generation) go, in the same swap."""
    tag = hashlib.sha1(SUBNET.encode(), usedforsecurity=False).hexdigest()[:8]
    for command in (
        ["-N", f"SC-IN-{tag}"],
        ["-A", f"SC-IN-{tag}", "-j", "DROP"],
        ["-I", "INPUT", "1", "-s", SUBNET, "-j", f"SC-IN-{tag}"],
        ["-N", f"SC-OUT-{tag}"],
        ["-A", f"SC-OUT-{tag}", "-j", "DROP"],
        ["-I", "DOCKER-USER", "1", "-s", SUBNET, "-j", f"SC-OUT-{tag}"],
    ):
        lab.run(lab.droplet, "iptables", *command)

    assert lab.firewall(*GOOD).returncode == 0

    rules = lab.rules()
    assert f":SC-IN-{tag} " not in rules
    assert f":SC-OUT-{tag} " not in rules
    assert f"-A DOCKER-USER -s {SUBNET} -j SC-OUT-{tag}-a" in rules
    assert f"-A INPUT -s {SUBNET} -j SC-IN-{tag}-a" in rules


# --- The droplet's host firewall (bootstrap.sh's saferclaw-firewall) -----------------------------

BOOTSTRAP = SCRIPT.parent / "bootstrap.sh"


def written_by_bootstrap(tmp_path) -> dict[str, Path]:
    """saferclaw-firewall and its settings, exactly as ``bootstrap.sh --dry-run`` writes them."""
    printed = subprocess.run(
        ["bash", str(BOOTSTRAP), "--dry-run", "--public-ip", "203.0.113.10",
         "--control-plane-ip", CONTROL_PLANE, "--control-plane-port", str(CONTROL_PLANE_PORT),
         "--subnet", SUBNET, "--name", "lab", "--digitalocean-id", "1", "--capacity", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    files: dict[str, list[str]] = {}
    current = None
    for line in printed.splitlines():
        if match := re.match(r"\[dry-run\] write (\S+) \(mode", line):
            current = files.setdefault(match.group(1), [])
        elif current is not None and line.startswith("    | "):
            current.append(line[6:])
        elif current is not None and line.strip() != "|":
            current = None
    written = {}
    for name, path in (
        ("script", "/usr/local/sbin/saferclaw-firewall"),
        ("env", "/etc/saferclaw/firewall.env"),
    ):
        written[name] = tmp_path / Path(path).name
        written[name].write_text("\n".join(files[path]) + "\n")
    return written


def test_re_applying_the_host_firewall_never_opens_the_droplet(lab, tmp_path):
    """SSH from anywhere but the control plane stays refused through 50 re-runs."""
    files = written_by_bootstrap(tmp_path)
    rerun = [
        "env", f"SAFERCLAW_FIREWALL_ENV={files['env']}", f"SAFERCLAW_AGENTS_FIREWALL={SCRIPT}",
        "bash", str(files["script"]),
    ]  # fmt: skip
    assert lab.run(lab.droplet, *rerun, check=False).returncode == 0
    sshd = lab.start(lab.droplet, "listen", DROPLET_UPLINK, "22")
    intruder = lab.start(lab.world, "knock", DROPLET_UPLINK, "22")
    operator = lab.start(lab.world, "dial", DROPLET_UPLINK, "22", CONTROL_PLANE)
    try:
        outcomes = [lab.run(lab.droplet, *rerun, check=False) for _ in range(REAPPLIES)]
    finally:
        knocked, dialled = finish(intruder), finish(operator)
        arrived = finish(sshd)

    assert [o.returncode for o in outcomes] == [0] * REAPPLIES, outcomes[-1].stderr
    assert knocked["sent"] > 20 * REAPPLIES
    assert {sender: n for sender, n in arrived.items() if WORLD_IP in sender} == {}
    assert dialled["failed"] == 0
    assert dialled["ok"] > REAPPLIES
    assert arrived[f"tcp from {CONTROL_PLANE}"] == dialled["ok"]  # the listener saw them all
    assert "-A INPUT -j SC-HOST-IN-" in lab.rules()
