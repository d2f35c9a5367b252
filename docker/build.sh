#!/usr/bin/env bash
# Build the selfheal image (and the broker image the smoke tests use) with docker or podman.
#
#   docker/build.sh            selfheal:latest and selfheal-broker:latest
#   docker/build.sh monitoring selfheal-prometheus and selfheal-alertmanager (Debian packages)
#   IMAGE=... BROKER_IMAGE=... BASE_IMAGE=... ENGINE=docker|podman docker/build.sh
#
# BASE_IMAGE defaults to python:3.11-slim (pulled); where no registry is reachable, run
# docker/engine-setup.sh first and it is built locally (localhost/selfheal-base:bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

docker_works() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
if [ -z "${ENGINE:-}" ]; then
  if docker_works; then ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then ENGINE=podman
  else
    echo "build.sh: no container engine (docker with a running daemon, or podman);" \
         "docker/engine-setup.sh installs podman on Debian" >&2
    exit 2
  fi
fi
IMAGE="${IMAGE:-localhost/selfheal:latest}"
BROKER_IMAGE="${BROKER_IMAGE:-localhost/selfheal-broker:latest}"
LOCAL_BASE=localhost/selfheal-base:bookworm
if [ -z "${BASE_IMAGE:-}" ]; then
  # the locally built base when engine-setup made one, else the public slim image
  if "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then BASE_IMAGE=$LOCAL_BASE
  else BASE_IMAGE=python:3.11-slim
  fi
fi
# podman's default OCI format drops HEALTHCHECK; docker format keeps it
fmt=()
[ "$ENGINE" = podman ] && fmt=(--format docker)

# docker (BuildKit) reads docker/Dockerfile.dockerignore by itself; podman is told: without it
# tests/, docs/... would be in the context and any change there would rebuild the image
ignore=()
[ "$ENGINE" = podman ] && ignore=(--ignorefile docker/Dockerfile.dockerignore)

build() { "$ENGINE" build "${fmt[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" "$@"; }
start=$(date +%s)
if [ "${1:-}" = monitoring ]; then
  # Prometheus and Alertmanager from Debian's packages, for docker/compose.local.yaml
  for target in prometheus alertmanager; do
    build --target "$target" -t "localhost/selfheal-$target:latest" \
      -f docker/monitoring/Dockerfile docker/monitoring
  done
  echo "build.sh: monitoring images built with $ENGINE in $(( $(date +%s) - start ))s" >&2
  exit 0
fi
build "${ignore[@]}" -t "$IMAGE" -f docker/Dockerfile .
[ "${SKIP_BROKER_IMAGE:-}" = 1 ] || build -t "$BROKER_IMAGE" -f docker/broker/Dockerfile docker/broker
echo "build.sh: $IMAGE and $BROKER_IMAGE built with $ENGINE on $BASE_IMAGE in $(( $(date +%s) - start ))s" >&2
