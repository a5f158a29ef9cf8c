#!/usr/bin/env bash
# `make demo`: the main job on the bundled offline model and the bundled example data.
#   1. fine-tune all-MiniLM-L6-v2 on examples/example_qa_data.json (base vs fine-tuned printed)
#   2. export it to a versioned bundle (ONNX fp32 + int8, parity and quality gates)
#   3. serve it with the example answers indexed, show a search, keep serving until Ctrl-C
# Steps 1-2 are skipped when the bundle already exists (delete demo-data/ to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-demo-data}
PORT=${PORT:-8000}
NAME=qaembed-demo
REGISTRY="$DEMO_DIR/registry"

if [ ! -f "$REGISTRY/$NAME/LATEST" ]; then
  echo "== 1/3 fine-tuning sentence-transformers/all-MiniLM-L6-v2 on examples/example_qa_data.json"
  "$PY" -m training --preset turkish-bert --model_name sentence-transformers/all-MiniLM-L6-v2 \
    --data_path examples/example_qa_data.json --output_dir "$DEMO_DIR/model" \
    --epochs 4 --batch_size 16 --warmup_steps 5 --learning_rate 5e-5 --max_seq_length 128
  echo "== 2/3 exporting to $REGISTRY/$NAME"
  "$PY" -m export --model_dir "$DEMO_DIR/model" --registry "$REGISTRY" --name "$NAME" \
    --eval_data "$DEMO_DIR/model/eval_data.jsonl"
else
  echo "== using the existing bundle in $REGISTRY/$NAME (delete $DEMO_DIR to retrain)"
fi

echo "== 3/3 serving on http://127.0.0.1:$PORT (Ctrl-C stops)"
"$PY" -m service --registry "$REGISTRY" --name "$NAME" --data_dir "$DEMO_DIR/state" \
  --corpus examples/example_qa_data.json --host 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' INT TERM EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "the service stopped; see its output above" >&2; exit 1; }
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
wait $SERVER
