"""A droplet's agent network in network namespaces, for the egress firewall's tests.

Three namespaces the test creates, linked by veth pairs, and nothing else:

    agent (172.31.250.2) ── droplet (router, runs firewall.sh) ── world (10.250.0.2)
                                                                 lo: 169.254.169.254,
                                                                 203.0.113.7, 198.51.100.5

The droplet forwards as a Docker host does: FORWARD jumps to DOCKER-USER first,
then accepts what leaves the agents' bridge. The world holds the forbidden
addresses (the metadata service, an internet-looking host, other ports of the
control plane's host) and the control plane's port, with listeners, and a
packet capture on its side of the link: a packet it sees went through the
droplet's filter. Every address lives in these namespaces, so even a leak
never leaves this machine.

Run as a module, this file is the programs that run inside the namespaces:
``probe`` (in the agent), ``knock`` and ``dial`` (towards the droplet), ``capture``
and ``listen`` (in the world and the droplet).
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "droplets" / "bootstrap" / "firewall.sh"

SUBNET = "172.31.250.0/24"
AGENT_IP, DROPLET_IP = "172.31.250.2", "172.31.250.1"
DROPLET_UPLINK, WORLD_IP = "10.250.0.1", "10.250.0.2"
METADATA, INTERNET, CONTROL_PLANE = "169.254.169.254", "203.0.113.7", "198.51.100.5"
CONTROL_PLANE_PORT = 8443
# What an agent must never reach: (address, port).
FORBIDDEN = [
    (METADATA, 80),
    (INTERNET, 443),
    (CONTROL_PLANE, 22),  # the control plane's host, another port
    (DROPLET_IP, 2222),  # the droplet itself
]


@dataclass
class Lab:
    agent: str
    droplet: str
    world: str
    world_link: str  # the world's end of the link from the droplet

    def run(self, namespace: str, *command: str, check: bool = True, timeout: float = 60):
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def firewall(self, *args: str) -> subprocess.CompletedProcess:
        """The real script, run in the droplet namespace."""
        return self.run(self.droplet, "bash", str(SCRIPT), *args, check=False)

    def rules(self) -> str:
        """The droplet's filter table as iptables-save prints it, without comments."""
        saved = self.run(self.droplet, "iptables-save", "-t", "filter").stdout
        return "\n".join(line for line in saved.splitlines() if not line.startswith("#"))

    def start(self, namespace: str, *args: str) -> subprocess.Popen:
        """One of this module's programs, in ``namespace``, until ``finish``."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, __file__, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = process.stdout.readline()
        if ready.strip() != "ready":
            process.kill()
            raise RuntimeError(f"{args[0]} did not start: {ready} {process.stderr.read()}")
        return process


def finish(process: subprocess.Popen) -> dict:
    """Stop a program started with ``Lab.start`` and return what it reports."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    if process.returncode:
        raise RuntimeError(f"exited {process.returncode}: {err}")
    return json.loads(out)


def create_lab() -> Lab:
    suffix = uuid.uuid4().hex[:6]
    to_agent, to_world = f"sc{suffix}a", f"sc{suffix}w"  # interface names stay under 15
    lab = Lab(
        agent=f"sc-{suffix}-ag",
        droplet=f"sc-{suffix}-dr",
        world=f"sc-{suffix}-wo",
        world_link=f"{to_world}0",
    )
    steps = [
        *(["ip", "netns", "add", name] for name in (lab.agent, lab.droplet, lab.world)),
        ["ip", "link", "add", f"{to_agent}0", "netns", lab.agent, "type", "veth",
         "peer", "name", f"{to_agent}1", "netns", lab.droplet],
        ["ip", "link", "add", f"{to_world}1", "netns", lab.droplet, "type", "veth",
         "peer", "name", f"{to_world}0", "netns", lab.world],
    ]  # fmt: skip
    inside = {
        lab.agent: [
            "ip link set lo up",
            f"ip addr add {AGENT_IP}/24 dev {to_agent}0",
            f"ip link set {to_agent}0 up",
            f"ip route add default via {DROPLET_IP}",
        ],
        lab.droplet: [
            "ip link set lo up",
            f"ip addr add {DROPLET_IP}/24 dev {to_agent}1",
            f"ip addr add {DROPLET_UPLINK}/24 dev {to_world}1",
            f"ip link set {to_agent}1 up",
            f"ip link set {to_world}1 up",
            f"ip route add default via {WORLD_IP}",
            "sysctl -qw net.ipv4.ip_forward=1",
            # As dockerd leaves a host: DOCKER-USER first, then what leaves the
            # agents' bridge is accepted and replies come back.
            "iptables -P FORWARD DROP",
            "iptables -N DOCKER-USER",
            "iptables -A DOCKER-USER -j RETURN",
            "iptables -A FORWARD -j DOCKER-USER",
            f"iptables -A FORWARD -o {to_agent}1 -m conntrack --ctstate RELATED,ESTABLISHED "
            "-j ACCEPT",
            f"iptables -A FORWARD -i {to_agent}1 ! -o {to_agent}1 -j ACCEPT",
        ],
        lab.world: [
            "ip link set lo up",
            f"ip addr add {WORLD_IP}/24 dev {to_world}0",
            f"ip link set {to_world}0 up",
            # On the world's loopback (this kernel has no dummy links): reached
            # only through the link from the droplet, where the capture listens.
            f"ip addr add {METADATA}/32 dev lo",
            f"ip addr add {INTERNET}/32 dev lo",
            f"ip addr add {CONTROL_PLANE}/32 dev lo",
            f"ip route add default via {DROPLET_UPLINK}",
        ],
    }
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=30)
        for namespace, commands in inside.items():
            for command in commands:
                lab.run(namespace, *command.split())
    except BaseException:
        destroy_lab(lab)
        raise
    return lab


def destroy_lab(lab: Lab) -> None:
    for name in (lab.agent, lab.droplet, lab.world):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


# --- The programs that run inside the namespaces ---------------------------------------------


class Stop(Exception):
    pass


def _stop_on_sigterm() -> None:
    def handler(signum, frame):
        raise Stop

    signal.signal(signal.SIGTERM, handler)


def probe() -> None:
    """In the agent: send to every forbidden address, and connect to the control plane, until
    stopped. Reports how many probes went out and how the control plane answered."""
    _stop_on_sigterm()
    sent = 0
    dialled = {"ok": 0, "failed": 0}
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("ready", flush=True)
    try:
        while True:
            for address, port in FORBIDDEN:
                sent += _knock(udp, address, port)
            _dial(dialled, CONTROL_PLANE, CONTROL_PLANE_PORT)
    except Stop:
        pass
    report = {
        "sent": sent,
        "control_plane_ok": dialled["ok"],
        "control_plane_failed": dialled["failed"],
    }
    print(json.dumps(report))


def knock(address: str, port: str) -> None:
    """Send a datagram and a SYN to ``address``:``port`` over and over, until stopped."""
    _stop_on_sigterm()
    sent = 0
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("ready", flush=True)
    try:
        while True:
            sent += _knock(udp, address, int(port))
            time.sleep(0.0002)
    except Stop:
        pass
    print(json.dumps({"sent": sent}))


def dial(address: str, port: str, source: str) -> None:
    """Connect to ``address``:``port`` from ``source`` over and over; count what worked.

    It stops between two connections, never inside one: a stop raised just after a
    connection was made would leave it out of the count the listener is compared with.
    """
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    dialled = {"ok": 0, "failed": 0}
    print("ready", flush=True)
    while not stopping:
        _dial(dialled, address, int(port), source)
    print(json.dumps(dialled))


def _knock(udp: socket.socket, address: str, port: int) -> int:
    udp.sendto(b"probe", (address, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setblocking(False)
    tcp.connect_ex((address, port))  # the SYN leaves now
    tcp.close()
    return 2


def _dial(counts: dict, address: str, port: int, source: str = "") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
        connection.settimeout(2)
        if source:
            connection.bind((source, 0))
        try:
            connection.connect((address, port))
            counts["ok"] += 1
        except OSError:
            counts["failed"] += 1


def capture(interface: str) -> None:
    """In the world: count the agent's packets that arrive, by what they were sent to."""
    _stop_on_sigterm()
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    raw.bind((interface, 0))
    raw.settimeout(0.2)
    seen: dict[str, int] = {}
    print("ready", flush=True)
    try:
        while True:
            try:
                frame = raw.recv(65535)
            except TimeoutError:
                continue
            packet = frame[14:]
            header = (packet[0] & 0x0F) * 4
            source, target = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
            if source != AGENT_IP or packet[9] not in (6, 17):
                continue
            (port,) = struct.unpack("!H", packet[header + 2 : header + 4])
            key = f"{target}:{port}"
            seen[key] = seen.get(key, 0) + 1
    except Stop:
        pass
    print(json.dumps(seen))


def listen(address: str, port: str) -> None:
    """A TCP and UDP listener; reports the connections and datagrams that arrived, by sender
    (those still queued when it is stopped included)."""
    _stop_on_sigterm()
    tcp = socket.create_server((address, int(port)), backlog=1024)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, int(port)))
    tcp.setblocking(False)
    udp.setblocking(False)
    arrived: dict[str, int] = {}

    def drain() -> None:
        with suppress(BlockingIOError):
            while True:
                connection, (sender, _) = tcp.accept()
                connection.close()
                arrived[f"tcp from {sender}"] = arrived.get(f"tcp from {sender}", 0) + 1
        with suppress(BlockingIOError):
            while True:
                _, (sender, _) = udp.recvfrom(64)
                arrived[f"udp from {sender}"] = arrived.get(f"udp from {sender}", 0) + 1

    print("ready", flush=True)
    try:
        while True:
            select.select([tcp, udp], [], [], 0.05)
            drain()
    except Stop:
        drain()
    print(json.dumps(arrived))


if __name__ == "__main__":
    program, *arguments = sys.argv[1:]
    programs = {"probe": probe, "knock": knock, "dial": dial, "capture": capture, "listen": listen}
    programs[program](*arguments)
