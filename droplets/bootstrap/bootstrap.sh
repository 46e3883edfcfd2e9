#!/usr/bin/env bash
# Turn a fresh Debian or Ubuntu droplet into a Safer-Claw Docker host:
#
#   1. install Docker (Debian's docker.io) and the tools this script needs;
#   2. make (or reuse) a CA, a server certificate naming the droplet's public IP
#      and a client certificate and key for the control plane;
#   3. install a host firewall (SSH and the Docker API only from the control
#      plane) and the agents' egress rules (firewall.sh), applied at every boot
#      before dockerd starts;
#   4. configure dockerd: unix socket plus tcp://0.0.0.0:2376 with mutual TLS,
#      live-restore, log rotation, icc off, no-new-privileges, no userland proxy;
#   5. create the agents' network on the firewalled subnet;
#   6. print where the certificates are and the register_droplet command.
#
#   bootstrap.sh --control-plane-ip IP --subnet CIDR [options]    (as root)
#   bootstrap.sh --certs-only --public-ip IP [--tls-dir DIR]      (no root needed)
#   bootstrap.sh --dry-run ...                                    (changes nothing)
#
# Idempotent: a second run with the same arguments changes nothing and does
# not restart dockerd. README.md next to this file explains every step.
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DOCKER_TLS_PORT=2376
MB_PER_AGENT=512 # the same first guess as droplets/sync.py
AGENT_NETWORK=saferclaw-agents
AGENT_BRIDGE=sc-agents
CONF_DIR=/etc/saferclaw
FIREWALL_ENV=$CONF_DIR/firewall.env
FIREWALL_BIN=/usr/local/sbin/saferclaw-firewall
FIREWALL_LIB=/usr/local/lib/saferclaw/firewall.sh
FIREWALL_UNIT=/etc/systemd/system/saferclaw-firewall.service
DOCKER_DROPIN=/etc/systemd/system/docker.service.d/saferclaw.conf
DAEMON_JSON=/etc/docker/daemon.json
CA_DAYS=3650
CERT_DAYS=825
RENEW_WITHIN_DAYS=30

usage() {
    cat <<'EOF'
usage: bootstrap.sh --control-plane-ip IP --subnet CIDR [options]

required (except with --certs-only):
  --control-plane-ip IP     the IPv4 address the control plane connects from; the only
                            source allowed to reach SSH and the Docker API (port 2376)
  --subnet CIDR             the agents' network, e.g. 172.31.1.0/24; the same value goes
                            into the droplet's agent_subnet on the control plane
options:
  --control-plane-port PORT the port agents dial on the control plane (default 443)
  --agents-dial-ip IP       the IPv4 address agents dial, when it is not
                            --control-plane-ip (a load balancer, a reserved IP)
  --public-ip IP            this droplet's public IPv4 (default: DigitalOcean metadata)
  --name NAME               the droplet's name on the control plane (default: hostname)
  --digitalocean-id ID      its DigitalOcean id (default: DigitalOcean metadata)
  --capacity N              max agent containers (default: memory in MiB / 512, >= 1)
  --ssh-from CIDR           also allow SSH from CIDR, IPv4 or IPv6 (repeatable)
  --ssh-port PORT           sshd's port (default 22)
  --tls-dir DIR             where the certificates go (default /etc/saferclaw/tls)
  --ca-cert FILE --ca-key FILE
                            sign with this CA instead of making one (the key is
                            used in place, never copied)
  --renew-certs             issue new server and client certificates (the CA stays)
  --certs-only              only make the certificates, touch nothing else
  --dry-run                 change nothing: print each step, make the certificates
                            in a temporary directory that is removed afterwards
  -h, --help                this text
EOF
}

log() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'bootstrap.sh: %s\n' "$*" >&2
    exit 1
}

# --- Arguments ---------------------------------------------------------------------------

control_plane_ip="" control_plane_port=443 agents_dial_ip="" subnet=""
public_ip="" name="" digitalocean_id="" capacity="" ssh_port=22 ssh_from=()
tls_dir=/etc/saferclaw/tls ca_cert="" ca_key="" renew=0 certs_only=0 dry_run=0

need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
}

parse_args() {
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --control-plane-ip) need_value "$@"; control_plane_ip=$2; shift 2 ;;
            --control-plane-port) need_value "$@"; control_plane_port=$2; shift 2 ;;
            --agents-dial-ip) need_value "$@"; agents_dial_ip=$2; shift 2 ;;
            --subnet) need_value "$@"; subnet=$2; shift 2 ;;
            --public-ip) need_value "$@"; public_ip=$2; shift 2 ;;
            --name) need_value "$@"; name=$2; shift 2 ;;
            --digitalocean-id) need_value "$@"; digitalocean_id=$2; shift 2 ;;
            --capacity) need_value "$@"; capacity=$2; shift 2 ;;
            --ssh-from) need_value "$@"; ssh_from+=("$2"); shift 2 ;;
            --ssh-port) need_value "$@"; ssh_port=$2; shift 2 ;;
            --tls-dir) need_value "$@"; tls_dir=$2; shift 2 ;;
            --ca-cert) need_value "$@"; ca_cert=$2; shift 2 ;;
            --ca-key) need_value "$@"; ca_key=$2; shift 2 ;;
            --renew-certs) renew=1; shift ;;
            --certs-only) certs_only=1; shift ;;
            --dry-run) dry_run=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
}

is_ipv4() {
    local IFS=. octets=() octet
    [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
    read -r -a octets <<<"$1"
    for octet in "${octets[@]}"; do
        [ "$((10#$octet))" -le 255 ] || return 1
    done
}

is_ipv4_cidr() { [[ $1 =~ ^[0-9.]+/([0-9]{1,2})$ ]] && [ "${BASH_REMATCH[1]}" -le 32 ] && is_ipv4 "${1%/*}"; }
# Loose on purpose: iptables rejects a malformed IPv6 address anyway.
is_ipv6_cidr() { [[ $1 =~ ^[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(/[0-9]{1,3})?$ ]]; }
is_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

validate_args() {
    if [ -n "$ca_cert$ca_key" ]; then
        if [ -z "$ca_cert" ] || [ -z "$ca_key" ]; then die "--ca-cert and --ca-key go together"; fi
        if [ ! -r "$ca_cert" ] || [ ! -r "$ca_key" ]; then die "cannot read $ca_cert or $ca_key"; fi
    fi
    [ -z "$public_ip" ] || is_ipv4 "$public_ip" || die "--public-ip must be an IPv4 address"
    [ -z "$capacity" ] || [[ $capacity =~ ^[1-9][0-9]*$ ]] || die "--capacity must be a positive number"
    [ -z "$digitalocean_id" ] || [[ $digitalocean_id =~ ^[0-9]+$ ]] || die "--digitalocean-id must be a number"
    [ -z "$name" ] || [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$ ]] ||
        die "--name may hold letters, digits, '.', '_' and '-' (at most 100)"
    [ "$certs_only" = 1 ] && return
    # The firewall rules need addresses: a host name would be resolved once, at
    # boot, before the network is up.
    is_ipv4 "$control_plane_ip" || die "--control-plane-ip needs the control plane's IPv4 address"
    is_ipv4_cidr "$subnet" || die "--subnet needs an IPv4 CIDR, e.g. 172.31.1.0/24"
    [ -z "$agents_dial_ip" ] || is_ipv4 "$agents_dial_ip" || die "--agents-dial-ip must be an IPv4 address"
    is_port "$control_plane_port" || die "--control-plane-port must be a port number"
    is_port "$ssh_port" || die "--ssh-port must be a port number"
    local source
    for source in "${ssh_from[@]}"; do
        is_ipv4 "$source" || is_ipv4_cidr "$source" || is_ipv6_cidr "$source" ||
            die "--ssh-from $source is not an IPv4 or IPv6 address or CIDR"
    done
    : "${agents_dial_ip:=$control_plane_ip}"
}

# --- Doing, or with --dry-run showing -----------------------------------------------------

quoted() {
    local out=() word
    for word in "$@"; do out+=("$(printf '%q' "$word")"); done
    printf '%s' "${out[*]}"
}

# run COMMAND...: a command that changes the system.
run() {
    if [ "$dry_run" = 1 ]; then
        printf '[dry-run] %s\n' "$(quoted "$@")"
    else
        "$@"
    fi
}

# put_file PATH MODE < CONTENT: install PATH; succeeds only when that changed it.
put_file() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c %a "$path")" = "$mode" ]; then
        rm -f "$tmp"
        return 1
    fi
    if [ "$dry_run" = 1 ]; then
        printf '[dry-run] write %s (mode %s):\n' "$path" "$mode"
        sed 's/^/    | /' "$tmp"
        rm -f "$tmp"
        return 0
    fi
    mkdir -p "$(dirname "$path")"
    install -m "$mode" "$tmp" "$path"
    rm -f "$tmp"
}

# --- Facts about this droplet --------------------------------------------------------------

on_digitalocean() { [ "$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null)" = DigitalOcean ]; }

# The DigitalOcean metadata service; asked only on a DigitalOcean droplet.
metadata() {
    on_digitalocean || return 1
    curl -fsS --connect-timeout 2 --max-time 5 "http://169.254.169.254/metadata/v1/$1"
}

memory_mb() { awk '/^MemTotal:/ { print int(($2 + 1023) / 1024) }' /proc/meminfo; }

gather_facts() {
    if [ -z "$public_ip" ]; then
        public_ip=$(metadata interfaces/public/0/ipv4/address) ||
            die "cannot tell this droplet's public IPv4: pass --public-ip"
        is_ipv4 "$public_ip" || die "the metadata service gave '$public_ip' as public IPv4"
    fi
    [ -n "$digitalocean_id" ] || digitalocean_id=$(metadata id) || digitalocean_id=""
    [[ $digitalocean_id =~ ^[0-9]*$ ]] || digitalocean_id=""
    [ -n "$name" ] || name=$(metadata hostname) || name=$(hostname)
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$ ]] || die "pass --name: '$name' is not a usable name"
    vcpus=$(nproc)
    mem_mb=$(memory_mb)
    [ -n "$capacity" ] || capacity=$((mem_mb / MB_PER_AGENT > 0 ? mem_mb / MB_PER_AGENT : 1))
}

ip4_to_int() {
    local IFS=. a b c d
    read -r a b c d <<<"$1"
    echo $(((10#$a << 24) | (10#$b << 16) | (10#$c << 8) | 10#$d))
}

# in_ipv4_cidr IP CIDR: whether IP lies in CIDR (a bare address is a /32).
in_ipv4_cidr() {
    local ip=$1 net=${2%/*} bits=32 mask
    [[ $2 == */* ]] && bits=${2#*/}
    is_ipv4 "$ip" && is_ipv4 "$net" || return 1
    mask=$(((0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))
    [ $(($(ip4_to_int "$ip") & mask)) -eq $(($(ip4_to_int "$net") & mask)) ]
}

# Refuse to lock out the SSH session this script runs in.
guard_ssh_session() {
    local connection=${SSH_CONNECTION:-} client source
    client=${connection%% *}
    [ -n "$client" ] || return 0 # the droplet console, or cloud-init
    [ "$client" = "$control_plane_ip" ] && return 0
    for source in "${ssh_from[@]}"; do
        [ "$client" = "${source%/128}" ] && return 0
        in_ipv4_cidr "$client" "$source" && return 0
    done
    die "you are connected over SSH from $client, which the new host firewall would lock out:" \
        "add --ssh-from $client (or a CIDR that holds it), or run this from the droplet console"
}

# --- 1. Packages ---------------------------------------------------------------------------

install_packages() {
    local packages=(iptables openssl curl ca-certificates) missing=() package
    # Docker CE, when already installed, stays: docker.io would conflict with it.
    command -v dockerd >/dev/null 2>&1 || packages+=(docker.io)
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep 'ok installed' >/dev/null ||
            missing+=("$package")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "packages: all there"
        return
    fi
    log "packages: installing ${missing[*]}"
    run env DEBIAN_FRONTEND=noninteractive apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# --- 2. Certificates -----------------------------------------------------------------------

ossl() {
    local out
    out=$(openssl "$@" 2>&1) || {
        printf '%s\n' "$out" >&2
        die "openssl $1 failed"
    }
}

new_key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

write_openssl_config() {
    cat >"$1" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Safer-Claw
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:$public_ip
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# cert_ok CERT KEY CA [IP]: CERT is signed by CA, matches KEY, is not about to
# expire and (for the server) names IP.
cert_ok() {
    local cert=$1 key=$2 ca=$3 ip=${4:-}
    [ -s "$cert" ] && [ -s "$key" ] && [ -s "$ca" ] || return 1
    openssl verify -CAfile "$ca" "$cert" >/dev/null 2>&1 || return 1
    openssl x509 -checkend $((RENEW_WITHIN_DAYS * 86400)) -noout -in "$cert" >/dev/null 2>&1 || return 1
    [ "$(openssl x509 -noout -pubkey -in "$cert")" = "$(openssl pkey -pubout -in "$key")" ] || return 1
    [ -z "$ip" ] || openssl x509 -noout -ext subjectAltName -in "$cert" 2>/dev/null |
        grep -E "IP Address:${ip//./\\.}(,|$)" >/dev/null
}

# issue DIR NAME SECTION CN CA_KEY: a new key and certificate DIR/NAME-{key,cert}.pem,
# with the extensions of SECTION in $openssl_cnf.
issue() {
    local dir=$1 base=$2 section=$3 cn=$4 ca_key_file=$5
    new_key "$dir/$base-key.pem"
    ossl req -new -key "$dir/$base-key.pem" -subj "/CN=$cn" -config "$openssl_cnf" \
        -out "$dir/$base.csr"
    ossl x509 -req -in "$dir/$base.csr" -CA "$dir/ca.pem" -CAkey "$ca_key_file" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$CERT_DAYS" -sha256 \
        -extfile "$openssl_cnf" -extensions "$section" -out "$dir/$base-cert.pem"
    rm -f "$dir/$base.csr"
}

# Make what is missing, expired or wrong in DIR; keep the rest. Sets certs_changed.
make_certs() {
    local dir=$1
    local signing_key=$dir/ca-key.pem
    certs_changed=0
    mkdir -p "$dir/client"
    chmod 700 "$dir" "$dir/client"
    openssl_cnf=$(mktemp)
    write_openssl_config "$openssl_cnf"
    if [ -n "$ca_cert" ]; then
        [ "$(openssl x509 -noout -pubkey -in "$ca_cert")" = "$(openssl pkey -pubout -in "$ca_key")" ] ||
            die "--ca-key does not belong to --ca-cert"
        signing_key=$ca_key
        cmp -s "$ca_cert" "$dir/ca.pem" || { install -m 644 "$ca_cert" "$dir/ca.pem" && certs_changed=1; }
    elif [ ! -s "$dir/ca.pem" ]; then
        log "certificates: making a CA in $dir"
        new_key "$dir/ca-key.pem"
        ossl req -x509 -new -key "$dir/ca-key.pem" -subj "/CN=Safer-Claw Docker CA for $name" \
            -days "$CA_DAYS" -sha256 -config "$openssl_cnf" -extensions ca -out "$dir/ca.pem"
        chmod 644 "$dir/ca.pem"
        certs_changed=1
    fi
    if [ "$renew" = 1 ] || ! cert_ok "$dir/server-cert.pem" "$dir/server-key.pem" "$dir/ca.pem" "$public_ip"; then
        [ -s "$signing_key" ] || die "$dir/ca.pem has no key here to sign with: pass --ca-cert and --ca-key"
        log "certificates: issuing the server certificate for $public_ip"
        issue "$dir" server server "$public_ip" "$signing_key"
        chmod 644 "$dir/server-cert.pem"
        certs_changed=1
    fi
    if [ "$renew" = 1 ] || ! cert_ok "$dir/client/cert.pem" "$dir/client/key.pem" "$dir/ca.pem"; then
        [ -s "$signing_key" ] || die "$dir/ca.pem has no key here to sign with: pass --ca-cert and --ca-key"
        log "certificates: issuing the control plane's client certificate"
        issue "$dir" client client "saferclaw-control-plane" "$signing_key"
        mv "$dir/client-key.pem" "$dir/client/key.pem"
        mv "$dir/client-cert.pem" "$dir/client/cert.pem"
        certs_changed=1
    fi
    cmp -s "$dir/ca.pem" "$dir/client/ca.pem" || install -m 644 "$dir/ca.pem" "$dir/client/ca.pem"
    rm -f "$openssl_cnf"
    [ "$certs_changed" = 1 ] || log "certificates: all valid, kept"
}

# --- 3. Firewall ---------------------------------------------------------------------------

firewall_env() {
    printf '# Written by droplets/bootstrap/bootstrap.sh; read by %s.\n' "$FIREWALL_BIN"
    printf 'CONTROL_PLANE_IP=%q\n' "$control_plane_ip"
    printf 'CONTROL_PLANE_PORT=%q\n' "$control_plane_port"
    printf 'AGENTS_DIAL_IP=%q\n' "$agents_dial_ip"
    printf 'AGENT_SUBNET=%q\n' "$subnet"
    printf 'SSH_PORT=%q\n' "$ssh_port"
    printf 'SSH_FROM=%q\n' "${ssh_from[*]}"
    printf 'DOCKER_TLS_PORT=%q\n' "$DOCKER_TLS_PORT"
}

firewall_script() {
    cat <<'EOF'
#!/usr/bin/env bash
# The droplet's host firewall and its agents' egress rules. Installed by
# droplets/bootstrap/bootstrap.sh; saferclaw-firewall.service runs it at boot,
# before dockerd. Settings: /etc/saferclaw/firewall.env. Idempotent, and it
# fails closed: each set of rules is swapped in by one iptables-restore
# transaction, so a re-run never leaves a moment without them.
set -euo pipefail
# shellcheck source=/dev/null
. "${SAFERCLAW_FIREWALL_ENV:-/etc/saferclaw/firewall.env}"

# host_rules IPTABLES FAMILY: inbound to this host is refused except loopback,
# replies, ICMP, DHCP, SSH from the control plane (and --ssh-from) and the
# Docker API from the control plane. Built in a fresh chain (SC-HOST-IN-a and
# -b take turns), hooked first in INPUT in the same transaction that unhooks
# and deletes the old one.
host_rules() {
    local ipt=$1 family=$2 source rules old chain new=SC-HOST-IN-a
    rules=$("$ipt" -w -S)
    old=$(grep -E -- '^-A INPUT -j SC-HOST-IN(-[ab])?$' <<<"$rules" | sed 's/.* -j //' || true)
    if grep -qx -- SC-HOST-IN-a <<<"$old"; then new=SC-HOST-IN-b; fi
    {
        echo "*filter"
        echo ":$new - [0:0]"
        echo "-A $new -i lo -j ACCEPT"
        echo "-A $new -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        echo "-A $new -m conntrack --ctstate INVALID -j DROP"
        if [ "$family" = 4 ]; then
            echo "-A $new -p icmp -j ACCEPT"
            echo "-A $new -p udp --sport 67 --dport 68 -j ACCEPT"
            echo "-A $new -s $CONTROL_PLANE_IP -p tcp --dport $SSH_PORT -j ACCEPT"
            echo "-A $new -s $CONTROL_PLANE_IP -p tcp --dport $DOCKER_TLS_PORT -j ACCEPT"
        else
            # Neighbour discovery is ICMPv6: without it IPv6 stops working at all.
            echo "-A $new -p ipv6-icmp -j ACCEPT"
            echo "-A $new -p udp --sport 547 --dport 546 -j ACCEPT"
        fi
        for source in $SSH_FROM; do
            case "$source" in
                *:*) [ "$family" = 6 ] || continue ;;
                *) [ "$family" = 4 ] || continue ;;
            esac
            echo "-A $new -s $source -p tcp --dport $SSH_PORT -j ACCEPT"
        done
        echo "-A $new -j DROP"
        echo "-I INPUT 1 -j $new"
        for chain in $old; do echo "-D INPUT -j $chain"; done
        for chain in SC-HOST-IN SC-HOST-IN-a SC-HOST-IN-b; do
            if [ "$chain" != "$new" ] && grep -qx -- "-N $chain" <<<"$rules"; then
                printf -- '-F %s\n-X %s\n' "$chain" "$chain"
            fi
        done
        echo COMMIT
    } | "$ipt-restore" -w --noflush
}

host_rules iptables 4
if [ -e /proc/net/if_inet6 ] && command -v ip6tables >/dev/null; then
    host_rules ip6tables 6
fi
"${SAFERCLAW_AGENTS_FIREWALL:-/usr/local/lib/saferclaw/firewall.sh}" --subnet "$AGENT_SUBNET" \
    --control-plane "$AGENTS_DIAL_IP:$CONTROL_PLANE_PORT"
echo "host firewall: SSH and Docker API only from $CONTROL_PLANE_IP${SSH_FROM:+ (SSH also from $SSH_FROM)}"
EOF
}

firewall_unit() {
    cat <<EOF
[Unit]
Description=Safer-Claw host firewall and agent egress rules
# Early, like nftables.service, and before dockerd: no agent container may run
# a moment without its egress rules. docker.service requires this unit.
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target docker.service shutdown.target
Conflicts=shutdown.target
RequiresMountsFor=/usr/local $CONF_DIR

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=$FIREWALL_BIN

[Install]
WantedBy=sysinit.target
EOF
}

install_firewall() {
    [ -r "$HERE/firewall.sh" ] || die "$HERE/firewall.sh is missing: run this from the repository's droplets/bootstrap/"
    put_file "$FIREWALL_LIB" 755 <"$HERE/firewall.sh" || true
    firewall_env | put_file "$FIREWALL_ENV" 600 || true
    firewall_script | put_file "$FIREWALL_BIN" 755 || true
    firewall_unit | put_file "$FIREWALL_UNIT" 644 || true
    run systemctl daemon-reload
    run systemctl enable --quiet saferclaw-firewall.service
    # Applied on every run, so the rules are what this script says even after
    # someone changed them by hand. Directly, not by restarting the unit:
    # docker.service requires the unit, and a restart would take dockerd along.
    log "firewall: applying"
    run "$FIREWALL_BIN"
    systemctl is-active --quiet saferclaw-firewall.service 2>/dev/null ||
        run systemctl start saferclaw-firewall.service
}

# --- 4. dockerd ----------------------------------------------------------------------------

daemon_json() {
    # fd:// is the unix socket that docker.socket hands over; a host without
    # that unit gets the socket path itself.
    local unix=fd://
    systemctl cat docker.socket >/dev/null 2>&1 || unix=unix:///var/run/docker.sock
    cat <<EOF
{
  "hosts": ["$unix", "tcp://0.0.0.0:$DOCKER_TLS_PORT"],
  "tlsverify": true,
  "tlscacert": "$tls_dir/ca.pem",
  "tlscert": "$tls_dir/server-cert.pem",
  "tlskey": "$tls_dir/server-key.pem",
  "live-restore": true,
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "3"},
  "icc": false,
  "no-new-privileges": true,
  "userland-proxy": false
}
EOF
}

# The packaged unit's ExecStart without its -H flags: dockerd refuses to start
# when hosts come both from flags and from daemon.json.
docker_exec_start() {
    local unit line=""
    unit=$(systemctl show -p FragmentPath --value docker.service 2>/dev/null || true)
    if [ -f "$unit" ]; then line=$(sed -n 's/^ExecStart=\(..*\)$/\1/p' "$unit" | head -n 1); fi
    if [ -z "$line" ]; then
        [ "$dry_run" = 1 ] || die "cannot find docker.service's ExecStart"
        line="/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock \$DOCKER_OPTS"
    fi
    printf '%s\n' "$line" | sed -E 's/[[:space:]]+(-H|--host)([[:space:]]+|=)[^[:space:]]+//g'
}

docker_dropin() {
    cat <<EOF
# Written by droplets/bootstrap/bootstrap.sh.
[Unit]
# The host firewall and agent egress rules first; without them, no dockerd.
Requires=saferclaw-firewall.service
After=saferclaw-firewall.service

[Service]
# The hosts (unix socket and tcp://0.0.0.0:$DOCKER_TLS_PORT) are in $DAEMON_JSON.
ExecStart=
ExecStart=$(docker_exec_start)
EOF
}

wait_for_docker() {
    local i
    for i in $(seq 1 30); do
        docker version >/dev/null 2>&1 && return 0
        [ "$i" = 30 ] || sleep 1
    done
    return 1
}

# Copies of dockerd's settings as they were before this run, for a roll-back.
# Before the first run (no drop-in of ours yet), an existing daemon.json also
# stays as daemon.json.pre-saferclaw for the operator.
back_up_docker_settings() {
    local path first_run=0
    [ -e "$DOCKER_DROPIN" ] || first_run=1
    for path in "$DAEMON_JSON" "$DOCKER_DROPIN"; do
        rm -f "$path.saferclaw-prev"
        [ -f "$path" ] || continue
        cp -p "$path" "$path.saferclaw-prev"
        if [ "$first_run" = 1 ] && [ ! -e "$path.pre-saferclaw" ]; then
            cp -p "$path" "$path.pre-saferclaw"
        fi
    done
}

roll_back_docker() {
    local path
    warn "dockerd did not come back with the new settings; restoring the previous ones"
    for path in "$DAEMON_JSON" "$DOCKER_DROPIN"; do
        if [ -f "$path.saferclaw-prev" ]; then mv "$path.saferclaw-prev" "$path"; else rm -f "$path"; fi
    done
    systemctl daemon-reload
    systemctl restart docker.service || true
    die "dockerd rejected the new settings: see journalctl -u docker.service"
}

configure_docker() {
    local changed=$certs_changed
    if [ -f /etc/default/docker ] && grep -Eq '^[^#]*DOCKER_OPTS=.*(-H|--host)' /etc/default/docker; then
        die "/etc/default/docker sets DOCKER_OPTS with -H; remove it (the hosts live in $DAEMON_JSON)"
    fi
    [ "$dry_run" = 1 ] || back_up_docker_settings
    daemon_json | put_file "$DAEMON_JSON" 644 && changed=1
    docker_dropin | put_file "$DOCKER_DROPIN" 644 && changed=1
    if [ "$dry_run" = 1 ]; then
        run systemctl daemon-reload
        run systemctl restart docker.service
        return
    fi
    if [ "$changed" = 0 ] && systemctl is-active --quiet docker.service; then
        rm -f "$DAEMON_JSON.saferclaw-prev" "$DOCKER_DROPIN.saferclaw-prev"
        log "dockerd: configuration unchanged, not restarted"
        return
    fi
    if dockerd --help 2>&1 | grep -- '--validate' >/dev/null; then
        dockerd --validate --config-file "$DAEMON_JSON" >/dev/null || roll_back_docker
    fi
    log "dockerd: restarting with TLS on port $DOCKER_TLS_PORT (live-restore keeps containers running)"
    systemctl daemon-reload
    systemctl enable --quiet docker.service
    { systemctl restart docker.service && wait_for_docker; } || roll_back_docker
    rm -f "$DAEMON_JSON.saferclaw-prev" "$DOCKER_DROPIN.saferclaw-prev"
}

# The Docker API must answer a client with our certificate, and refuse one without.
check_docker_tls() {
    local url="https://$public_ip:$DOCKER_TLS_PORT/_ping" client=$tls_dir/client
    [ "$dry_run" = 0 ] || return 0
    [ "$(curl -sS --max-time 10 --cacert "$client/ca.pem" --cert "$client/cert.pem" \
        --key "$client/key.pem" "$url")" = OK ] ||
        die "the Docker API at $url does not answer our client certificate"
    if curl -s --max-time 10 --cacert "$client/ca.pem" "$url" >/dev/null 2>&1; then
        die "the Docker API at $url answers without a client certificate: dockerd is not verifying clients"
    fi
    log "dockerd: $url answers the control plane's certificate and refuses others"
}

# --- 5. The agents' network ----------------------------------------------------------------

# The control plane creates this network itself when missing, on the droplet's
# agent_subnet or, when that is empty, on one the engine picks and the egress
# rules do not cover. Made here on the firewalled subnet, it is always right.
ensure_agent_network() {
    local current
    if [ "$dry_run" = 0 ] && docker network inspect "$AGENT_NETWORK" >/dev/null 2>&1; then
        current=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$AGENT_NETWORK")
        [ "${current% }" = "$subnet" ] ||
            die "network $AGENT_NETWORK is on ${current% }, not $subnet: the egress rules do not cover it." \
                "Remove it (docker network rm $AGENT_NETWORK) once no container uses it, and run this again"
        log "network: $AGENT_NETWORK on $subnet is there"
        return
    fi
    log "network: creating $AGENT_NETWORK on $subnet"
    run docker network create --driver bridge --subnet "$subnet" \
        --opt com.docker.network.bridge.enable_icc=false \
        --opt "com.docker.network.bridge.name=$AGENT_BRIDGE" \
        --label saferclaw.network=agents "$AGENT_NETWORK"
}

# --- 6. What the operator does next --------------------------------------------------------

print_summary() {
    local local_dir="$name-tls" ca_key_where=$tls_dir/ca-key.pem id_arg=""
    [ -z "$ca_cert" ] || ca_key_where="$ca_key (yours, not copied here)"
    [ -z "$digitalocean_id" ] || id_arg=" --digitalocean-id $digitalocean_id"
    cat <<EOF

Docker TLS material on this droplet:
  CA certificate          $tls_dir/ca.pem
  CA key                  $ca_key_where
  server certificate      $tls_dir/server-cert.pem (names $public_ip)
  server key              $tls_dir/server-key.pem
  for the control plane   $tls_dir/client/ca.pem, cert.pem, key.pem

On the control plane, copy the client files and register the droplet:

  scp -r root@$public_ip:$tls_dir/client $local_dir
  python manage.py register_droplet --name $name --ip $public_ip --capacity $capacity \\
      --vcpus $vcpus --memory-mb $mem_mb$id_arg --agent-subnet $subnet \\
      --control-plane-url http://$agents_dial_ip:$control_plane_port \\
      --tls-ca $local_dir/ca.pem --tls-cert $local_dir/cert.pem --tls-key $local_dir/key.pem
  shred -u $local_dir/key.pem   # it is stored encrypted in the database now

EOF
    [ "$dry_run" = 0 ] || printf '(dry run: %s and everything in it is removed now)\n\n' "$tls_dir"
    if [ "$certs_only" = 0 ]; then
        cat <<EOF
(--control-plane-url: use https and a name if your control plane has one.)
If sync_droplets already added this droplet (in maintenance), do not register it
again: paste the three files into its row in the admin and set it active.
EOF
    fi
}

# --- Main ----------------------------------------------------------------------------------

main() {
    parse_args "$@"
    validate_args
    vcpus="" mem_mb="" certs_changed=0 openssl_cnf=""
    if [ "$dry_run" = 1 ]; then
        # Certificates are made for real, where they harm nothing.
        tls_dir=$(mktemp -d)
        trap 'rm -rf "$tls_dir"' EXIT
        log "dry run: nothing on this machine changes; certificates go to $tls_dir (removed at exit)"
    elif [ "$certs_only" = 0 ]; then
        [ "$(id -u)" = 0 ] || die "run as root (or try --dry-run)"
        command -v apt-get >/dev/null || die "this script is for Debian or Ubuntu"
    fi
    gather_facts
    if [ "$certs_only" = 1 ]; then
        command -v openssl >/dev/null || die "openssl is needed"
        make_certs "$tls_dir"
        print_summary
        return
    fi
    guard_ssh_session
    log "droplet $name ($public_ip): $vcpus vCPUs, $mem_mb MiB, capacity $capacity"
    install_packages
    make_certs "$tls_dir"
    install_firewall
    configure_docker
    check_docker_tls
    ensure_agent_network
    print_summary
}

main "$@"
