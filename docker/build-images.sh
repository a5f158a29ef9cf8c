#!/usr/bin/env bash
# Build the qaembed images with podman: docker/build-images.sh [serve] [train]
# Run docker/podman-setup.sh first (make images does). Build args from the environment:
#   SERVE_VARIANT=cpu|gpu   TRAIN_TORCH_SPEC (default: the CPU wheel torch==2.13.0+cpu when
#   /opt/wheels has it, else PyPI's CUDA build)   PIP_CA (CA bundle mounted for pip, default the host's)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=docker/podman-env.sh
. "$here/podman-env.sh"
cd "$root"

ca="${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}"
common=(--format docker --build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ -s "$ca" ]; then
  common+=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

for what in "${@:-serve train}"; do
  for w in $what; do
    start=$(date +%s)
    case "$w" in
      serve)
        podman build "${common[@]}" --build-arg "VARIANT=${SERVE_VARIANT:-cpu}" \
          -f Dockerfile.serve -t "$SERVE_IMAGE" .
        img="$SERVE_IMAGE" ;;
      train)
        extra=()
        torch="${TRAIN_TORCH_SPEC:-}"
        wheel="$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)"
        if [ -z "$torch" ] && [ -n "$wheel" ]; then torch="torch==2.13.0+cpu"; fi
        if [ -n "$wheel" ]; then extra+=(-v /opt/wheels:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels); fi
        [ -z "$torch" ] || extra+=(--build-arg "TORCH_SPEC=$torch")
        podman build "${common[@]}" "${extra[@]}" -f Dockerfile.train -t "$TRAIN_IMAGE" .
        img="$TRAIN_IMAGE" ;;
      *) echo "build-images: unknown image $w (serve|train)" >&2; exit 2 ;;
    esac
    size=$(podman image inspect --format '{{.Size}}' "$img")
    echo "build-images: $img built in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB" >&2
  done
done
