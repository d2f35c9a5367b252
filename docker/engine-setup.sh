#!/usr/bin/env bash
# Container engine for `make image` / `make image-test` / CI on a Debian machine without a
# reachable registry. Idempotent and fast when everything is already in place.
#
#   docker/engine-setup.sh            engine (podman) + local base image
#   docker/engine-setup.sh --engine   engine only
#
# What it does, and why:
#  1. installs podman/buildah/runc/... from Debian when no working engine is present
#     (a `docker` client without a daemon does not count);
#  2. podman only: a containers.conf drop-in with runtime "runc" (crun fails on hosts with mixed
#     cgroup v1/v2 hierarchies), default ulimits root may set (it cannot raise them here), and
#     file-based logs/events (no journald or syslog in CI containers);
#  3. with podman (or LOCAL_BASE=1), builds the local base image $LOCAL_BASE_IMAGE
#     (python3 + venv on Debian bookworm minbase) from the machine's own Debian mirror, unless
#     it already exists. With docker (or LOCAL_BASE=0) the build uses python:3.11-slim
#     (the Dockerfile's default BASE_IMAGE).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
BASE_IMAGE="${LOCAL_BASE_IMAGE:-localhost/selfheal-base:bookworm}"
ROOTFS_IMAGE="localhost/debian-minbase:bookworm"
CONF_DIR=/etc/containers/containers.conf.d
CONF_FILE="$CONF_DIR/50-selfheal.conf"

log() { printf 'engine-setup: %s\n' "$*" >&2; }

docker_works() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# the engine `make image` uses: a docker whose daemon answers, else podman
engine() {
  if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"
  elif docker_works; then echo docker
  else echo podman
  fi
}

install_podman() {
  local pkgs=(podman buildah runc iptables debootstrap netavark aardvark-dns fuse-overlayfs
    slirp4netns uidmap)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  mkdir -p "$CONF_DIR"
  local want
  want=$(cat <<'EOF'
# written by selfheal docker/engine-setup.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
events_logger = "file"
EOF
)
  if [ ! -f "$CONF_FILE" ] || [ "$(cat "$CONF_FILE")" != "$want" ]; then
    printf '%s\n' "$want" > "$CONF_FILE"
    log "wrote $CONF_FILE"
  fi
}

image_exists() { "$1" image inspect "$2" >/dev/null 2>&1; }

mirror() {
  # the machine's configured Debian mirror (deb822 or one-line format)
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
      | grep -v security | head -n1 || true)
  [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' \
      | grep -v security | head -n1 || true)
  echo "${DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}"
}

# what the slim Debian images leave out: docs, man pages, translations, apt caches; the dpkg
# excludes keep packages installed later from bringing them back
slim_rootfs() {
  local r="$1"
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin \
    "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
    "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/var/cache/debconf/*-old
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    > "$r"/etc/dpkg/dpkg.cfg.d/01-slim
}

build_base() {
  local eng="$1"
  if image_exists "$eng" "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE present"
    return
  fi
  if ! image_exists "$eng" "$ROOTFS_IMAGE"; then
    command -v debootstrap >/dev/null 2>&1 || {
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    local rootfs
    rootfs=$(mktemp -d /tmp/selfheal-rootfs.XXXXXX)
    log "debootstrap minbase bookworm from $(mirror)"
    debootstrap --variant=minbase bookworm "$rootfs" "$(mirror)" >/dev/null
    slim_rootfs "$rootfs"
    tar -C "$rootfs" -c . | "$eng" import -q - "$ROOTFS_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
  log "building $BASE_IMAGE"
  local fmt=()
  [ "$eng" = podman ] && fmt=(--format docker)
  local ctx
  ctx=$(mktemp -d /tmp/selfheal-base.XXXXXX)
  mkdir "$ctx/ca"
  cp "$HERE/base/Dockerfile" "$ctx/"
  find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$ctx/ca/" \; \
    2>/dev/null || true
  "$eng" build "${fmt[@]}" -q -t "$BASE_IMAGE" --build-arg ROOTFS_IMAGE="$ROOTFS_IMAGE" "$ctx" \
    >/dev/null
  rm -rf "$ctx"
}

main() {
  local eng
  eng=$(engine)
  if [ "$eng" = podman ]; then install_podman; fi
  [ "${1:-}" = "--engine" ] && { echo "$eng"; return; }
  # the local base is for the Debian/podman path (no registry here); a working docker pulls
  # python:3.11-slim unless LOCAL_BASE=1 asks for the local one
  local want_local="${LOCAL_BASE:-}"
  [ -n "$want_local" ] || { [ "$eng" = podman ] && want_local=1 || want_local=0; }
  [ "$want_local" = 1 ] && build_base "$eng"
  echo "$eng"
}

main "$@"
