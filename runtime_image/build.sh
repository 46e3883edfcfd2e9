#!/usr/bin/env bash
# Build Safer-Claw's images on a machine that can reach no container registry.
#
#   saferclaw/debian-base:bookworm   debootstrap --variant=minbase, docker import
#   saferclaw/agent-runtime:dev      runtime_image/Dockerfile on top of that base
#   saferclaw/busybox:test           Debian's busybox-static, for fast lifecycle tests
#
# Targets whatever daemon the docker CLI targets: set DOCKER_HOST (and
# DOCKER_TLS_VERIFY/DOCKER_CERT_PATH for a TLS daemon) to pick one.
# Base and busybox images are skipped when present; the runtime image build is
# all cache hits when nothing changed, so a second run takes about a second.
# SAFERCLAW_FORCE_BUILD=1 rebuilds the runtime image without the cache.
# Progress goes to stderr; run as root (debootstrap needs it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

BASE_IMAGE=${SAFERCLAW_BASE_IMAGE:-saferclaw/debian-base:bookworm}
RUNTIME_IMAGE=${SAFERCLAW_RUNTIME_IMAGE:-saferclaw/agent-runtime:dev}
BUSYBOX_IMAGE=${SAFERCLAW_BUSYBOX_IMAGE:-saferclaw/busybox:test}
CACHE_DIR=${SAFERCLAW_IMAGE_CACHE:-/var/cache/saferclaw-images}
SUITE=bookworm

# Prefer Debian's docker CLI (same version as the daemon it ships) over any
# other `docker` earlier on PATH; SAFERCLAW_DOCKER_CLI overrides.
if [[ -z "${SAFERCLAW_DOCKER_CLI:-}" ]]; then
    if [[ -x /usr/bin/docker ]]; then SAFERCLAW_DOCKER_CLI=/usr/bin/docker; else SAFERCLAW_DOCKER_CLI=docker; fi
fi
docker() { command "$SAFERCLAW_DOCKER_CLI" "$@"; }
# The classic builder: Debian's dockerd 20.10 has no buildx, and newer CLIs
# otherwise refuse or warn.
export DOCKER_BUILDKIT=0

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# Run a noisy command with its output in a log file; show the tail on failure.
run_logged() {
    local logfile=$1; shift
    if ! "$@" >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2 || true
        die "failed: $* (full log: $logfile)"
    fi
}

# The URI of the first apt source (deb822 or one-line format) whose suites
# include "$1" exactly, so the image uses the same mirror as this machine.
apt_source_uri() {
    local want=$1 file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$file" ]] || continue
        awk -v want="$want" '
            function flush() { if (uri != "" && hit && enabled) { print uri; found = 1; exit } uri = ""; hit = 0; enabled = 1 }
            BEGIN { enabled = 1 }
            /^[[:space:]]*$/ { flush(); next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) hit = 1 }
            /^Enabled:[[:space:]]*no/ { enabled = 0 }
            END { if (!found) flush() }
        ' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$file" ]] || continue
        awk -v want="$want" '$1 == "deb" { u = ""; for (i = 2; i <= NF; i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue } if (u == "") { u = $i; continue } if ($i == want) { print u; exit } break } }' "$file"
    done
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is missing: run scripts/droplets/up (or apt-get install $2)"; }
need debootstrap debootstrap
need "$SAFERCLAW_DOCKER_CLI" docker.io
[[ $EUID -eq 0 ]] || die "run as root (debootstrap and docker import need it)"
docker version >/dev/null 2>&1 || die "no docker daemon answers at ${DOCKER_HOST:-the default socket}"

mkdir -p "$CACHE_DIR/logs"
# No `| head` or `| grep -q` below: under pipefail, the writer's SIGPIPE when
# the reader exits early would make the pipeline fail at random.
uris=$(apt_source_uri "$SUITE")
MIRROR=${SAFERCLAW_DEBIAN_MIRROR:-${uris%%$'\n'*}}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
uris=$(apt_source_uri "$SUITE-security")
SECURITY_MIRROR=${uris%%$'\n'*}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Mirror the host's apt relaxations that the image's apt needs too: this
# machine's mirror may be a frozen snapshot whose Release files are "expired".
APT_OPTS=""
if [[ "$(apt-config dump 2>/dev/null)" == *$'\nAcquire::Check-Valid-Until "false";'* ]]; then
    APT_OPTS="-o Acquire::Check-Valid-Until=false -o Acquire::Check-Date=false"
fi

# --- 1. Debian base image ---------------------------------------------------
t=$(now)
if [[ -n "$(image_id "$BASE_IMAGE")" ]]; then
    log "$BASE_IMAGE present, skipping"
else
    rootfs="$CACHE_DIR/rootfs-$SUITE-minbase"
    if [[ ! -f "$rootfs/.saferclaw-complete" ]]; then
        log "debootstrap --variant=minbase $SUITE from $MIRROR (about 30 s)"
        rm -rf "$rootfs.tmp"
        run_logged "$CACHE_DIR/logs/debootstrap.log" \
            debootstrap --variant=minbase "$SUITE" "$rootfs.tmp" "$MIRROR"
        # Same mirrors as the host, plus updates and security, in deb822 form.
        rm -f "$rootfs.tmp/etc/apt/sources.list"
        cat >"$rootfs.tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        touch "$rootfs.tmp/.saferclaw-complete"
        rm -rf "$rootfs"
        mv "$rootfs.tmp" "$rootfs"
    fi
    log "importing $rootfs as $BASE_IMAGE"
    # Leave out the marker, downloaded .debs and apt lists: the image rebuilds them.
    tar --numeric-owner -C "$rootfs" -c \
        --exclude=./.saferclaw-complete \
        --exclude='./var/cache/apt/archives/*.deb' \
        --exclude='./var/lib/apt/lists/*' . |
        docker import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
fi
log "base image ready ($(since "$t"))"

# --- 2. Agent runtime image ---------------------------------------------------
# Always `docker build`: with nothing changed every step is a cache hit (about
# 0.2 s) and the image id stays the same, so up's copy to droplet 2 is skipped.
# SAFERCLAW_FORCE_BUILD=1 bypasses the cache (e.g. to pick up Debian updates).
t=$(now)
build_flags=()
[[ "${SAFERCLAW_FORCE_BUILD:-0}" == 1 ]] && build_flags+=(--no-cache)
before=$(image_id "$RUNTIME_IMAGE")
log "docker build $RUNTIME_IMAGE"
run_logged "$CACHE_DIR/logs/build-runtime.log" \
    docker build --network host "${build_flags[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "APT_OPTS=$APT_OPTS" \
    -t "$RUNTIME_IMAGE" "$HERE"
if [[ "$(image_id "$RUNTIME_IMAGE")" == "$before" ]]; then
    log "runtime image unchanged (all build steps cached)"
else
    # The previous build is now untagged; drop it (and only it) unless in use.
    docker image prune -f --filter "label=org.opencontainers.image.title=saferclaw-agent-runtime" >/dev/null || true
fi
log "runtime image ready ($(since "$t"))"

# --- 3. Busybox test image ----------------------------------------------------
t=$(now)
if [[ -n "$(image_id "$BUSYBOX_IMAGE")" ]]; then
    log "$BUSYBOX_IMAGE present, skipping"
else
    debs="$CACHE_DIR/debs"
    mkdir -p "$debs"
    if ! ls "$debs"/busybox-static_*.deb >/dev/null 2>&1; then
        log "apt-get download busybox-static"
        # Download, don't install: the host needs no busybox. Sandbox user root
        # because _apt may not be able to write into the cache dir.
        if ! (cd "$debs" && apt-get -o APT::Sandbox::User=root download busybox-static >/dev/null 2>&1); then
            log "package lists look stale; apt-get update"
            run_logged "$CACHE_DIR/logs/apt-update.log" apt-get update
            (cd "$debs" && apt-get -o APT::Sandbox::User=root download busybox-static >/dev/null) ||
                die "apt-get download busybox-static failed"
        fi
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    deb=$(find "$debs" -name 'busybox-static_*.deb' | sort -V | tail -n 1)
    dpkg-deb -x "$deb" "$work/pkg"
    root="$work/rootfs"
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev}
    chmod 1777 "$root/tmp"
    install -m 0755 "$work/pkg/bin/busybox" "$root/bin/busybox"
    # One relative symlink per applet, all in /bin (PATH-wise that's enough).
    for applet in $("$root/bin/busybox" --list); do
        [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:10001:10001:agent:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nagent:x:10001:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
        docker import --change 'CMD ["/bin/sh"]' - "$BUSYBOX_IMAGE" >/dev/null
fi
log "busybox image ready ($(since "$t"))"

log "images: $BASE_IMAGE $(image_id "$BASE_IMAGE" | cut -c1-19), $RUNTIME_IMAGE $(image_id "$RUNTIME_IMAGE" | cut -c1-19), $BUSYBOX_IMAGE $(image_id "$BUSYBOX_IMAGE" | cut -c1-19)"
