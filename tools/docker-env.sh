#!/usr/bin/env bash
# A Docker daemon, and a stand-in for the Dockerfile's base image, on a machine with no registry.
#
#   bash tools/docker-env.sh [up]   install docker.io, start dockerd, make the base image (as root)
#   bash tools/docker-env.sh stop   stop the dockerd this script started (never any other)
#   bash tools/docker-env.sh status what is there, and who started the daemon
#
# Every step is skipped when already done, so `up` is cheap the second time; it prints timings.
#
# - dockerd (Debian's docker.io 20.10) runs with no bridge and no iptables: containers get host
#   networking or none, and no private-range address is ever created. Use `--network host` for
#   `docker build` and `docker run`, and /usr/bin/docker (the 20.10 client) with
#   DOCKER_BUILDKIT=1: it drives the daemon's built-in BuildKit without the buildx plugin.
# - The Dockerfile's base image (`ARG PYTHON_IMAGE=python:3.11.x-slim-bookworm`) cannot be pulled.
#   The stand-in is Debian bookworm (debootstrap minbase from apt's own mirror) with Debian's
#   python3, python3-venv and python3-pip, laid out like the official image (python3.11, python3
#   and python in /usr/local/bin, no EXTERNALLY-MANAGED), and the host's CAs trusted (an
#   intercepting egress proxy would otherwise break pip's HTTPS inside the build). It is imported
#   once as $STANDIN and tagged with the Dockerfile's base name, read from the Dockerfile.
#   It carries this machine's CAs: it is for local tests only; never push it or what is built on it.
#   A base image already in the local store is used as it is: where the registry is reachable,
#   `docker pull` the real one first and no stand-in is made.
#
# Environment: FABRIC_DOCKER_STATE (default /tmp/fabric-docker: dockerd.pid, dockerd.log),
# FABRIC_DEBIAN_MIRROR (default: the first Debian mirror in apt's sources),
# FABRIC_DOCKER_STORAGE_DRIVER (default overlay2).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
DOCKER=/usr/bin/docker
STATE=${FABRIC_DOCKER_STATE:-/tmp/fabric-docker}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
STANDIN=fabric-local/python-standin:bookworm
SUITE=bookworm
PACKAGES=ca-certificates,python3,python3-venv,python3-pip,python-is-python3
export DEBIAN_FRONTEND=noninteractive

log() { printf '[docker-env] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
now() { date +%s%N; }
since() { # seconds since a `now` reading, one decimal
  local ns=$(($(now) - $1))
  printf '%d.%d s' $((ns / 1000000000)) $((ns % 1000000000 / 100000000))
}
need_root() {
  [ "$(id -u)" -eq 0 ] || die "$1 needs root: sudo bash tools/docker-env.sh"
}

daemon_answers() { [ -x "$DOCKER" ] && "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The pid of the dockerd this script started, if it is still that dockerd.
our_dockerd() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
  printf '%s' "$pid"
}

# --- packages ---------------------------------------------------------------------------------

apt_install() {
  need_root "installing $*"
  local start
  start=$(now)
  # A machine fresh from its image may have no package lists at all.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null ||
    ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    log "apt-get update"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
  log "installed $* in $(since "$start")"
}

packages() {
  if command -v dockerd >/dev/null && [ -x "$DOCKER" ]; then
    log "docker.io: present ($("$DOCKER" --version))"
  else
    apt_install docker.io
  fi
}

# --- daemon -----------------------------------------------------------------------------------

start_daemon() {
  local pid
  if daemon_answers; then
    if pid=$(our_dockerd); then
      log "dockerd: running (pid $pid, started by this script; log $LOG)"
    else
      log "dockerd: a daemon already answers (not started by this script; left alone)"
    fi
    return
  fi
  need_root "starting dockerd"
  mkdir -p "$STATE"
  rm -f "$PIDFILE"
  local start
  start=$(now)
  # setsid: its own session, so a Ctrl-C meant for the caller (make, pytest) does not reach it.
  setsid dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --storage-driver="${FABRIC_DOCKER_STORAGE_DRIVER:-overlay2}" \
    </dev/null >>"$LOG" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$PIDFILE"
  for _ in $(seq 120); do
    daemon_answers && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if ! daemon_answers; then
    tail -n 20 "$LOG" >&2 || true
    kill "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    die "dockerd did not come up (log: $LOG)"
  fi
  log "dockerd: started (pid $pid, log $LOG) in $(since "$start")"
}

stop_daemon() {
  local pid
  if ! pid=$(our_dockerd); then
    rm -f "$PIDFILE"
    if daemon_answers; then
      log "dockerd: not started by this script; left running"
    else
      log "dockerd: not running"
    fi
    return
  fi
  local start
  start=$(now)
  kill "$pid" # dockerd stops its containers and the containerd it started
  for _ in $(seq 120); do
    [ -d "/proc/$pid" ] || break
    sleep 0.25
  done
  [ ! -d "/proc/$pid" ] || die "dockerd (pid $pid) did not stop within 30 s"
  rm -f "$PIDFILE"
  # dockerd leaves the bind mount of the host's network namespace behind.
  if mountpoint -q /run/docker/netns/default 2>/dev/null; then
    umount /run/docker/netns/default || true
  fi
  log "dockerd: stopped (pid $pid) in $(since "$start")"
}

# --- the base image ---------------------------------------------------------------------------

# The image the Dockerfile's first FROM names, with its global ARG default applied.
dockerfile_base() {
  local from var
  from=$(sed -n 's/^[[:space:]]*FROM[[:space:]]\{1,\}\([^[:space:]]\{1,\}\).*/\1/Ip' \
    "$root/Dockerfile" | head -n1)
  if [[ $from =~ ^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$ ]]; then
    var=${BASH_REMATCH[1]}
    from=$(sed -n "s/^[[:space:]]*ARG[[:space:]]\{1,\}$var=[\"']\{0,1\}\([^\"'[:space:]]*\).*/\1/p" \
      "$root/Dockerfile" | head -n1)
  fi
  [ -n "$from" ] || die "cannot read the base image from $root/Dockerfile"
  printf '%s' "$from"
}

debian_mirror() {
  if [ -n "${FABRIC_DEBIAN_MIRROR:-}" ]; then
    printf '%s' "$FABRIC_DEBIAN_MIRROR"
    return
  fi
  local found
  found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -n -e 's|^URIs: *\(http[^ ]*/debian/\{0,1\}\) *$|\1|p' \
      -e 's|^deb \{1,\}\(http[^ ]*/debian/\{0,1\}\) .*|\1|p' | head -n1 || true)
  printf '%s' "${found:-http://deb.debian.org/debian}"
}

rootfs=
cleanup_rootfs() {
  [ -n "$rootfs" ] && [ -d "$rootfs" ] || return 0
  # A failed debootstrap can leave /proc or /sys mounted inside: never rm -rf through them.
  local mnt
  for mnt in $(findmnt -rno TARGET | grep -F "$rootfs/" | sort -r || true); do
    umount -l "$mnt" || true
  done
  rm -rf --one-file-system "$rootfs"
}

make_standin() {
  need_root "making the base image"
  command -v debootstrap >/dev/null || apt_install debootstrap
  local mirror start
  mirror=$(debian_mirror)
  mkdir -p "$STATE"
  rootfs=$(mktemp -d /var/tmp/fabric-standin.XXXXXX)
  trap cleanup_rootfs EXIT
  start=$(now)
  log "debootstrap $SUITE from $mirror (minbase + $PACKAGES)"
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" \
    >"$STATE/debootstrap.log" 2>&1; then
    tail -n 20 "$STATE/debootstrap.log" >&2
    die "debootstrap failed (log: $STATE/debootstrap.log)"
  fi
  log "debootstrap: $(since "$start")"
  start=$(now)
  # Trust what the host trusts (an intercepting egress proxy's CA, if any).
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" \
    2>/dev/null || true
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  # The official image's layout: its interpreter is /usr/local/bin/python3.11 (a venv made with
  # `python -m venv` links there) and pip may install outside a venv.
  local py
  py=$(basename "$(readlink -f "$rootfs/usr/bin/python3")")
  ln -s "/usr/bin/$py" "$rootfs/usr/local/bin/$py"
  ln -s "$py" "$rootfs/usr/local/bin/python3"
  ln -s python3 "$rootfs/usr/local/bin/python"
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" --numeric-owner -c . |
    "$DOCKER" import \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["python3"]' \
      --message "fabric stand-in: debootstrap $SUITE + $PACKAGES + host CAs; local tests only" \
      - "$STANDIN" >/dev/null
  cleanup_rootfs
  rootfs=
  log "imported $STANDIN in $(since "$start")"
}

base_image() {
  local base minor have start
  base=$(dockerfile_base)
  if "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
    log "base image $base: present"
    return
  fi
  # Only a bookworm Python image of bookworm's Python (3.11) can be stood in for.
  [[ $base =~ ^(docker\.io/)?(library/)?python:(3\.[0-9]+)[^[:space:]]*-$SUITE$ ]] ||
    die "$base: no stand-in for it (only python:3.x...-$SUITE images)"
  minor=${BASH_REMATCH[3]}
  if ! "$DOCKER" image inspect "$STANDIN" >/dev/null 2>&1; then
    make_standin
  fi
  have=$("$DOCKER" run --rm --network none "$STANDIN" python -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$have" = "$minor" ] || die "$base wants Python $minor; $SUITE has $have"
  start=$(now)
  "$DOCKER" tag "$STANDIN" "$base"
  log "base image $base: tagged from $STANDIN (Python $have) in $(since "$start")"
}

status() {
  local pid
  if pid=$(our_dockerd); then
    log "dockerd: pid $pid, started by this script (log $LOG)"
  elif daemon_answers; then
    log "dockerd: a daemon answers, not started by this script"
  else
    log "dockerd: not running"
  fi
  if daemon_answers; then
    local base
    base=$(dockerfile_base)
    if "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
      log "base image $base: present"
    else
      log "base image $base: missing"
    fi
  fi
}

up() {
  local start
  start=$(now)
  packages
  start_daemon
  base_image
  log "ready in $(since "$start"): use $DOCKER with DOCKER_BUILDKIT=1 and --network host"
}

case "${1:-up}" in
up) up ;;
stop) stop_daemon ;;
status) status ;;
*) die "usage: $0 [up|stop|status]" ;;
esac
