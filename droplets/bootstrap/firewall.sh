#!/usr/bin/env bash
# Egress rules for a droplet's agent network: containers on SUBNET may open
# connections to the control plane and nothing else — not to each other (the
# network has inter-container traffic off), not to the droplet's own ports,
# not to the cloud metadata service (169.254.169.254), not to the internet.
#
#   firewall.sh --subnet 172.31.1.0/24 --control-plane IP:PORT [--control-plane-on-host]
#   firewall.sh --subnet 172.31.1.0/24 --remove
#
# --control-plane-on-host: the control plane listens on this machine itself
# (a single-host install, or the test harness), so its port is opened in INPUT.
#
# It fails closed. Every argument is checked before anything changes: a bad
# one exits 2 and leaves the rules exactly as they were. The rules are then
# built in a fresh pair of chains and swapped in by one iptables-restore
# transaction (hook the new chains first, then unhook and delete the old
# ones), so there is no moment without the filter, and an error anywhere in
# it applies nothing. Behind the hooks, a catch-all DROP for the subnet in
# INPUT and DOCKER-USER stays across re-applies; only --remove takes it out.
# Idempotent. Needs root, iptables, iptables-save, iptables-restore and flock.
set -euo pipefail

usage="usage: firewall.sh --subnet CIDR --control-plane IP:PORT [--control-plane-on-host]
       firewall.sh --subnet CIDR --remove"

die() { printf 'firewall.sh: %s\n%s\n' "$*" "$usage" >&2; exit 2; }

# --- Arguments: all checked before anything changes --------------------------

subnet="" control_plane="" on_host=0 remove=0
while [ $# -gt 0 ]; do
  case "$1" in
    --subnet | --control-plane)
      [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
      name=${1#--} name=${name//-/_}
      [ -z "${!name}" ] || die "$1 given twice"
      printf -v "$name" '%s' "$2"
      shift 2 ;;
    --control-plane-on-host) on_host=1; shift ;;
    --remove) remove=1; shift ;;
    *) die "unknown argument: $1" ;;
  esac
done

# ipv4_int ADDRESS: the address as a number, or failure for anything but a
# dotted quad of 0-255 without leading zeros.
ipv4_int() {
  local IFS=. octet value=0 count=0
  [[ $1 =~ ^[0-9.]+$ ]] || return 1
  for octet in $1; do
    [[ $octet =~ ^(0|[1-9][0-9]{0,2})$ ]] && [ "$octet" -le 255 ] || return 1
    value=$((value * 256 + octet)) count=$((count + 1))
  done
  [ "$count" -eq 4 ] && [[ $1 != *. && $1 != .* && $1 != *..* ]] || return 1
  echo "$value"
}

[ -n "$subnet" ] || die "--subnet is required"
[[ $subnet =~ ^([0-9.]+)/([1-9][0-9]?)$ ]] || die "--subnet must be an IPv4 CIDR such as 172.31.1.0/24, not '$subnet'"
net=$(ipv4_int "${BASH_REMATCH[1]}") || die "--subnet has an invalid address: '$subnet'"
prefix=${BASH_REMATCH[2]}
[ "$prefix" -ge 8 ] && [ "$prefix" -le 32 ] || die "--subnet prefix must be /8 to /32, not /$prefix"
host_bits=$(((1 << (32 - prefix)) - 1))
[ $((net & host_bits)) -eq 0 ] || die "--subnet '$subnet' has host bits set: give the network address"

if [ "$remove" = 1 ]; then
  [ -z "$control_plane" ] && [ "$on_host" = 0 ] || die "--remove takes only --subnet"
else
  [ -n "$control_plane" ] || die "--control-plane IP:PORT is required"
  [[ $control_plane =~ ^([0-9.]+):([1-9][0-9]{0,4})$ ]] ||
    die "--control-plane must be IPv4:PORT such as 203.0.113.5:443, not '$control_plane'"
  cp_host=${BASH_REMATCH[1]} cp_port=${BASH_REMATCH[2]}
  cp_int=$(ipv4_int "$cp_host") || die "--control-plane has an invalid IPv4 address: '$cp_host'"
  [ "$cp_port" -le 65535 ] || die "--control-plane port must be 1-65535, not $cp_port"
  if [ "$on_host" = 0 ]; then
    # Agents reach it through the droplet: it must be a routable unicast address.
    first=$((cp_int >> 24))
    [ "$first" -ne 0 ] && [ "$first" -ne 127 ] && [ "$first" -lt 224 ] ||
      die "--control-plane $cp_host cannot be dialled through the droplet"
    [ $((cp_int >> 16)) -ne $(((169 << 8) + 254)) ] ||
      die "--control-plane $cp_host is link-local (the metadata range), which stays blocked"
  fi
fi

[ "$(id -u)" = 0 ] || { echo "firewall.sh: needs root" >&2; exit 1; }
for tool in iptables iptables-save iptables-restore flock; do
  command -v "$tool" >/dev/null || { echo "firewall.sh: $tool is missing" >&2; exit 1; }
done

# --- The current state --------------------------------------------------------

# One set of chains per subnet, named from a hash (chain names are short),
# in two generations that take turns: a re-apply builds the one not in use.
tag=$(printf '%s' "$subnet" | sha1sum | cut -c1-8)
catch_all="-s $subnet -m comment --comment \"saferclaw agents $subnet catch-all\" -j DROP"

# One run at a time: each reads the rules, then replaces them.
mkdir -p /run/lock
exec 9>/run/lock/saferclaw-firewall.lock
flock -w 60 9 || { echo "firewall.sh: another run holds the lock" >&2; exit 1; }

rules=$(iptables -w -S)
has_chain() { grep -qx -- "-N $1" <<<"$rules"; }
# hooks CHAIN: the chains this subnet's rules in CHAIN jump to, one per rule.
hooks() {
  grep -E -- "^-A $1 -s ${subnet//./\\.} -j SC-(IN|OUT)-$tag(-[ab])?\$" <<<"$rules" |
    sed 's/.* -j //' || true
}
has_catch_all() { grep -qxF -- "-A $1 $catch_all" <<<"$rules"; }

old_in=$(hooks INPUT) old_out=$(has_chain DOCKER-USER && hooks DOCKER-USER || true)
gen=a
if grep -qx -- "SC-IN-$tag-a" <<<"$old_in"$'\n'"$old_out" ||
  grep -qx -- "SC-OUT-$tag-a" <<<"$old_in"$'\n'"$old_out"; then
  gen=b
fi
in_chain="SC-IN-$tag-$gen" out_chain="SC-OUT-$tag-$gen"

# --- The transaction ------------------------------------------------------------

# unhook_old: delete every old hook, then the old chains (and any leftover).
unhook_old() {
  local chain
  for chain in $old_in; do echo "-D INPUT -s $subnet -j $chain"; done
  for chain in $old_out; do echo "-D DOCKER-USER -s $subnet -j $chain"; done
  for chain in SC-IN-$tag SC-OUT-$tag SC-IN-$tag-a SC-OUT-$tag-a SC-IN-$tag-b SC-OUT-$tag-b; do
    if has_chain "$chain" && { [ "$remove" = 1 ] || [[ $chain != "$in_chain" && $chain != "$out_chain" ]]; }; then
      echo "-F $chain"
      echo "-X $chain"
    fi
  done
}

transaction() {
  echo "*filter"
  if [ "$remove" = 1 ]; then
    unhook_old
    if has_catch_all INPUT; then echo "-D INPUT $catch_all"; fi
    if has_catch_all DOCKER-USER; then echo "-D DOCKER-USER $catch_all"; fi
    echo COMMIT
    return
  fi
  # DOCKER-USER exists once dockerd has started; at boot it may not yet.
  has_chain DOCKER-USER || echo "-N DOCKER-USER"
  # The new chains (declaring one that is left over empties it).
  echo ":$in_chain - [0:0]"
  echo ":$out_chain - [0:0]"
  # Traffic from agents to this machine itself (INPUT).
  echo "-A $in_chain -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
  if [ "$on_host" = 1 ]; then
    echo "-A $in_chain -p tcp --dport $cp_port -j ACCEPT"
  fi
  echo "-A $in_chain -j DROP"
  # Traffic from agents through this machine to anywhere else (FORWARD).
  echo "-A $out_chain -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
  echo "-A $out_chain -d 169.254.0.0/16 -j DROP"
  if [ "$on_host" = 0 ]; then
    echo "-A $out_chain -d $cp_host/32 -p tcp --dport $cp_port -j ACCEPT"
  fi
  echo "-A $out_chain -j DROP"
  # The catch-alls, once; each hook is inserted above its catch-all.
  has_catch_all INPUT || echo "-I INPUT 1 $catch_all"
  has_catch_all DOCKER-USER || echo "-I DOCKER-USER 1 $catch_all"
  echo "-I INPUT 1 -s $subnet -j $in_chain"
  echo "-I DOCKER-USER 1 -s $subnet -j $out_chain"
  unhook_old
  echo COMMIT
}

plan=$(transaction)
if ! iptables-restore -w --noflush <<<"$plan"; then
  echo "firewall.sh: iptables-restore refused the new rules; nothing was changed" >&2
  exit 1
fi
if [ "$remove" = 1 ]; then
  echo "removed rules for $subnet"
else
  echo "agents on $subnet may reach only $control_plane (chains $in_chain, $out_chain)"
fi
