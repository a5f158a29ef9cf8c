#!/usr/bin/env bash
# `make demo`: the main job on the bundled offline model and the bundled example data.
#   1. fine-tune all-MiniLM-L6-v2 on examples/example_qa_data.json (base vs fine-tuned printed)
#   2. export it to a versioned bundle (ONNX fp32 + int8, parity and quality gates)
#   3. serve it with the example answers indexed, show a search, keep serving until Ctrl-C (exit 0)
# Steps 1-2 are skipped when the bundle already exists (delete demo-data/ to start over).
# PORT=...: serve there or stop with a message when it is taken; unset: 8000, or the next free port above it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-demo-data}
NAME=qaembed-demo
REGISTRY="$DEMO_DIR/registry"
# Checked before anything runs: a search sent to a port another server holds is answered by that server.
if [ -n "${PORT:-}" ]; then PORT=$("$PY" scripts/pick_port.py --exact "$PORT"); else PORT=$("$PY" scripts/pick_port.py 8000); fi

if [ ! -f "$REGISTRY/$NAME/LATEST" ]; then
  echo "== 1/3 fine-tuning sentence-transformers/all-MiniLM-L6-v2 on examples/example_qa_data.json"
  "$PY" -m training --preset turkish-bert --model_name sentence-transformers/all-MiniLM-L6-v2 \
    --data_path examples/example_qa_data.json --output_dir "$DEMO_DIR/model" \
    --epochs 4 --batch_size 16 --learning_rate 5e-5 --max_seq_length 128
  echo "== 2/3 exporting to $REGISTRY/$NAME"
  "$PY" -m export --model_dir "$DEMO_DIR/model" --registry "$REGISTRY" --name "$NAME" \
    --eval_data "$DEMO_DIR/model/eval_data.jsonl" | tee "$DEMO_DIR/export.log"
  BUNDLE=$(tail -n 1 "$DEMO_DIR/export.log")  # a publish prints the version folder last
else
  BUNDLE="$REGISTRY/$NAME/$(cat "$REGISTRY/$NAME/LATEST")"
  echo "== using the existing bundle (delete $DEMO_DIR to retrain): $("$PY" -m export verify "$BUNDLE")"
fi
echo "== bundle: $BUNDLE"

echo "== 3/3 serving on http://127.0.0.1:$PORT"
"$PY" -m service --registry "$REGISTRY" --name "$NAME" --data_dir "$DEMO_DIR/state" \
  --corpus examples/example_qa_data.json --host 127.0.0.1 --port "$PORT" &
SERVER=$!
STTY=""
cleanup() {
  [ -z "$STTY" ] || stty "$STTY"
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM  # stopped from outside: cleanup stops the service, and that is the end of the demo
for _ in $(seq 1 120); do
  kill -0 "$SERVER" 2>/dev/null || { echo "the service stopped; see its output above" >&2; exit 1; }
  curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  sleep 1
done

echo
echo "== sample search: \"Kredi kartımın yıllık ücretini nasıl kaldırırım?\""
curl -fsS "http://127.0.0.1:$PORT/search" -H 'Content-Type: application/json' \
  -d '{"query": "Kredi kartımın yıllık ücretini nasıl kaldırırım?", "top_k": 3}' | "$PY" -m json.tool --no-ensure-ascii
cat <<MSG

Try it yourself:
  curl -s localhost:$PORT/search -H 'Content-Type: application/json' -d '{"query": "Python nedir?", "top_k": 3}'
  curl -s localhost:$PORT/embed -H 'Content-Type: application/json' -d '{"inputs": ["Merhaba dünya"]}'
  curl -s localhost:$PORT/v1/embeddings -H 'Content-Type: application/json' -d '{"input": "Merhaba", "model": "$NAME"}'
  curl -s localhost:$PORT/documents -H 'Content-Type: application/json' \\
       -d '{"documents": [{"text": "Kargo ücreti 500 TL üzeri siparişlerde ücretsizdir."}]}'
  curl -s localhost:$PORT/info;  curl -s localhost:$PORT/metrics | head
  open http://127.0.0.1:$PORT/docs for the OpenAPI page
Serving until Ctrl-C.
MSG
if [ -t 0 ]; then
  # Ctrl-C would reach make too, which then reports an error whatever this script does: the terminal sends it as
  # a key instead, and the demo stops the service itself (graceful drain, store closed) and exits 0.
  # (bash's `read -n` turns signals back on while it reads: dd reads the key, returning after 1 s without one.)
  STTY=$(stty -g)
  stty -isig -icanon -echo min 0 time 10
  while kill -0 "$SERVER" 2>/dev/null; do
    if [ "$(dd bs=1 count=1 2>/dev/null)" = $'\x03' ]; then
      echo "stopping the service"
      exit 0
    fi
  done
  echo "the service stopped; see its output above" >&2
  exit 1
fi
wait "$SERVER"
