#!/usr/bin/env bash
# End-to-end check of the built images (make image-test), each step timed:
#  1. the train image fine-tunes the bundled all-MiniLM-L6-v2 on examples/ for 1 epoch and
#     publishes a bundle into a registry folder (read-only root, non-root, as in the Job). This
#     checks the image, not the quality of a 1-epoch demo model: the export gates run and print
#     their verdict, but --force publishes anyway (IMAGE_TEST_EXPORT_ARGS= to enforce them);
#  2. the serve image runs with that registry mounted (read-only root): /ready, /embed, /search,
#     the image HEALTHCHECK, and a clean SIGTERM shutdown;
#  3. `podman kube play` of the rendered cpu overlay's serving Deployment + ConfigMap + PVC
#     (registry volume pre-filled with the bundle) answers /ready;
#  4. the same for the single overlay (data dir on a PVC): a document written through the API is
#     still there after the pod is taken down and played again.
# IMAGE_TEST_STEPS="train serve kube single" (default) picks steps; the others alone reuse the registry
# that the last train step left under $PODMAN_ROOT/image-test.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=docker/podman-env.sh
. "$here/podman-env.sh"
cd "$root"
PY="${PY:-$root/.venv/bin/python}"
KUBECTL="$(command -v "$root/.venv/bin/kubectl" || command -v kubectl)"
SERVE_PORT="${SERVE_PORT:-18080}"
KUBE_PORT="${KUBE_PORT:-18081}"
work="$PODMAN_ROOT/image-test"
t0=$(date +%s)
step() { echo "image-test: [$(( $(date +%s) - t0 )) s] $*" >&2; }
cleanup() {
  podman rm -f -t 5 qaembed-serve-test >/dev/null 2>&1 || true
  for f in "$work/kube-workload.yaml" "$work/single-workload.yaml"; do
    [ ! -f "$f" ] || podman kube down "$f" >/dev/null 2>&1 || true
  done
  podman volume rm -f qaembed-registry qaembed-data >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_ready() {  # url timeout_s
  local deadline=$(( $(date +%s) + $2 ))
  until curl -fsS "$1" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "image-test: $1 not ready after $2 s" >&2; return 1; }
    sleep 2
  done
}

steps=" ${IMAGE_TEST_STEPS:-train serve kube single} "
want() { [[ "$steps" == *" $1 "* ]]; }

# 1 -- train image --------------------------------------------------------------------------
if want train; then
rm -rf "$work"; mkdir -p "$work/registry" "$work/work"
chown -R 10001:10001 "$work/registry" "$work/work"
step "train: $TRAIN_IMAGE on examples/example_qa_data.json"
s=$(date +%s)
podman run --rm --read-only --tmpfs /tmp \
  -v "$root/examples/example_qa_data.json:/data/train/example_qa_data.json:ro" \
  -v "$work/registry:/registry" -v "$work/work:/work" \
  -e HF_HUB_OFFLINE=1 -e QAEMBED_NAME=qaembed -e QAEMBED_EXPORT_ARGS="${IMAGE_TEST_EXPORT_ARGS---force}" \
  "$TRAIN_IMAGE" --preset turkish-bert --model-name sentence-transformers/all-MiniLM-L6-v2 --epochs 1 \
  -- --batch_size 16 --max_seq_length 128 | tee "$work/train.out"
version_dir="$(tail -n 1 "$work/train.out")"
test -f "$work/registry/qaembed/LATEST"
step "train: published $version_dir in $(( $(date +%s) - s )) s"
fi
test -f "$work/registry/qaembed/LATEST" || { echo "image-test: no bundle under $work/registry" >&2; exit 1; }

# 2 -- serve image --------------------------------------------------------------------------
if want serve; then
s=$(date +%s)
podman run -d --name qaembed-serve-test --read-only --tmpfs /tmp -p "127.0.0.1:$SERVE_PORT:8000" \
  -v "$work/registry:/registry:ro" -v "$root/examples:/corpus:ro" \
  -e QAEMBED_CORPUS=/corpus/example_qa_data.json -e QAEMBED_INTRA_OP_THREADS=1 \
  "$SERVE_IMAGE" >/dev/null
wait_ready "http://127.0.0.1:$SERVE_PORT/ready" 240 || { podman logs qaembed-serve-test | tail -n 40 >&2; exit 1; }
step "serve: ready in $(( $(date +%s) - s )) s"
curl -fsS -H 'content-type: application/json' -d '{"inputs": ["Kredi kartı aidatı nasıl iade edilir?"]}' \
  "http://127.0.0.1:$SERVE_PORT/embed" | "$PY" -c 'import json,sys; v=json.load(sys.stdin); assert len(v)==1 and len(v[0])>=64, v; print("embed dim", len(v[0]))'
curl -fsS -H 'content-type: application/json' -d '{"query": "Kredi kartı aidatı nasıl iade edilir?", "top_k": 3}' \
  "http://127.0.0.1:$SERVE_PORT/search" | tee "$work/search.json" | head -c 600; echo
"$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r, r' "$work/search.json"
curl -fsS "http://127.0.0.1:$SERVE_PORT/metrics" | grep -q '^qaembed_ready 1' \
  || { echo "image-test: /metrics has no qaembed_ready 1" >&2; exit 1; }
podman healthcheck run qaembed-serve-test && step "serve: HEALTHCHECK passes"
podman exec qaembed-serve-test id -u | grep -qx 10001
s=$(date +%s)
podman stop -t 30 qaembed-serve-test >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' qaembed-serve-test)
step "serve: SIGTERM -> exit $code in $(( $(date +%s) - s )) s"
[ "$code" = 0 ] || { podman logs qaembed-serve-test | tail -n 20 >&2; exit 1; }
podman rm qaembed-serve-test >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$SERVE_IMAGE")
step "serve: image $(( size / 1000000 )) MB (target <= 600 MB)"
[ "$size" -le 600000000 ] || [ "${SERVE_VARIANT:-cpu}" = gpu ] || { echo "image-test: serve image over 600 MB" >&2; exit 1; }
fi

# 3, 4 -- podman kube play of a rendered overlay's serving Deployment -------------------------
play_overlay() {  # overlay prefix: render, create the PVCs' volumes (registry filled with the bundle), play
  "$KUBECTL" kustomize "k8s/overlays/$1" > "$work/rendered-$1.yaml"
  for part in pvc workload; do
    "$PY" "$here/kube-play-manifest.py" "$work/rendered-$1.yaml" --image "$SERVE_IMAGE" --host-port "$KUBE_PORT" \
      --part "$part" > "$work/$2-$part.yaml"
  done
  podman volume rm -f qaembed-registry qaembed-data >/dev/null 2>&1 || true
  podman kube play "$work/$2-pvc.yaml"            # creates the volumes of the PVCs
  cp -a "$work/registry/." "$(podman volume inspect --format '{{.Mountpoint}}' qaembed-registry)/"
  for volume in $(podman volume ls -q | grep -x 'qaembed-registry\|qaembed-data'); do
    chown -R 10001:10001 "$(podman volume inspect --format '{{.Mountpoint}}' "$volume")"  # fsGroup's job
  done
  podman kube play "$work/$2-workload.yaml"       # ConfigMap + Deployment
  wait_kube
}
wait_kube() {
  wait_ready "http://127.0.0.1:$KUBE_PORT/ready" 240 || { podman pod logs "$(podman pod ps -q | head -n1)" | tail -n 40 >&2; exit 1; }
}

if want kube; then
s=$(date +%s)
play_overlay cpu kube
curl -fsS "http://127.0.0.1:$KUBE_PORT/info" | head -c 400; echo
step "kube play: Deployment ready in $(( $(date +%s) - s )) s"
podman kube down "$work/kube-workload.yaml" >/dev/null
podman volume rm -f qaembed-registry >/dev/null
fi

if want single; then
s=$(date +%s)
play_overlay single single
curl -fsS -H 'content-type: application/json' \
  -d '{"documents": [{"id": "kalici", "text": "Bu belge pod silinse de PVC üzerinde kalır."}]}' \
  "http://127.0.0.1:$KUBE_PORT/documents" >/dev/null
podman kube down "$work/single-workload.yaml" >/dev/null   # the pod goes; the PVC's volume stays
podman kube play "$work/single-workload.yaml" >/dev/null
wait_kube
curl -fsS "http://127.0.0.1:$KUBE_PORT/documents/kalici" | grep -q 'PVC üzerinde kalır' \
  || { echo "image-test: the document written before the restart is gone" >&2; exit 1; }
step "kube play single: a document survived the pod (data dir on the PVC) in $(( $(date +%s) - s )) s"
podman kube down "$work/single-workload.yaml" >/dev/null
podman volume rm -f qaembed-registry qaembed-data >/dev/null
fi
step "image tests passed:$steps"
