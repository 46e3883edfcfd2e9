#!/usr/bin/env bash
# Egress rules for a droplet's agent network: containers on SUBNET may open
# connections to the control plane and nothing else — not to each other (the
# network has inter-container traffic off), not to the droplet's own ports,
# not to the cloud metadata service (169.254.169.254), not to the internet.
#
#   firewall.sh --subnet 172.31.1.0/24 --control-plane HOST:PORT [--control-plane-on-host]
#   firewall.sh --subnet 172.31.1.0/24 --remove
#
# --control-plane-on-host: the control plane listens on this machine itself
# (a single-host install, or the test harness), so its port is opened in INPUT.
# Idempotent: each run rebuilds the subnet's two chains. Needs root and iptables.
set -euo pipefail

subnet="" control_plane="" on_host=0 remove=0
while [ $# -gt 0 ]; do
  case "$1" in
    --subnet) subnet=$2; shift 2 ;;
    --control-plane) control_plane=$2; shift 2 ;;
    --control-plane-on-host) on_host=1; shift ;;
    --remove) remove=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$subnet" ] || { echo "--subnet is required" >&2; exit 2; }

# One pair of chains per subnet: names from a hash, as chain names are short.
tag=$(printf '%s' "$subnet" | sha1sum | cut -c1-8)
in_chain="SC-IN-$tag" out_chain="SC-OUT-$tag"

unhook() {
  while iptables -C INPUT -s "$subnet" -j "$in_chain" 2>/dev/null; do
    iptables -D INPUT -s "$subnet" -j "$in_chain"
  done
  while iptables -C DOCKER-USER -s "$subnet" -j "$out_chain" 2>/dev/null; do
    iptables -D DOCKER-USER -s "$subnet" -j "$out_chain"
  done
}

unhook
for chain in "$in_chain" "$out_chain"; do
  iptables -F "$chain" 2>/dev/null || true
  iptables -X "$chain" 2>/dev/null || true
done
if [ "$remove" = 1 ]; then
  echo "removed rules for $subnet"
  exit 0
fi
[ -n "$control_plane" ] || { echo "--control-plane HOST:PORT is required" >&2; exit 2; }
cp_host=${control_plane%:*} cp_port=${control_plane##*:}

# DOCKER-USER exists once dockerd has started; make sure it does.
iptables -N DOCKER-USER 2>/dev/null || true

# Traffic from agents to this machine itself (INPUT).
iptables -N "$in_chain"
iptables -A "$in_chain" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
if [ "$on_host" = 1 ]; then
  iptables -A "$in_chain" -p tcp --dport "$cp_port" -j ACCEPT
fi
iptables -A "$in_chain" -j DROP
iptables -I INPUT 1 -s "$subnet" -j "$in_chain"

# Traffic from agents through this machine to anywhere else (FORWARD).
iptables -N "$out_chain"
iptables -A "$out_chain" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
iptables -A "$out_chain" -d 169.254.0.0/16 -j DROP
if [ "$on_host" = 0 ]; then
  iptables -A "$out_chain" -d "$cp_host" -p tcp --dport "$cp_port" -j RETURN
fi
iptables -A "$out_chain" -j DROP
iptables -I DOCKER-USER 1 -s "$subnet" -j "$out_chain"

echo "agents on $subnet may reach only $control_plane"
