#!/usr/bin/env bash
# `make retrain-demo`: the retraining loop on the example data, start to finish, then exits.
#   1. publish v0001: all-MiniLM-L6-v2 fine-tuned on examples/example_qa_data.json (a fixed
#      evaluation set is held out and never trained on)
#   2. serve it with the example answers indexed, polling LATEST every second
#   3. users search in their own words and pick the right answer: feedback posted with curl
#   4. export the feedback as training data (GET /feedback/export)
#   5. retrain on data + feedback: the promotion gate compares v0002 with v0001 on the fixed set
#   6. the service notices the new LATEST and swaps to v0002 while serving
# Fast settings (1 epoch, 48 tokens, fp32 ONNX) keep it to a few minutes on a laptop CPU.
# Everything lives in $DEMO_DIR (default demo-data/retrain), recreated on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-demo-data/retrain}
PORT=${PORT:-8010}
NAME=qaembed-retrain-demo
REGISTRY="$DEMO_DIR/registry"
URL="http://127.0.0.1:$PORT"
DATA=examples/example_qa_data.json
# warmup 0: with ~5 steps per epoch the default warmup would keep the learning rate from ever peaking
FAST=(--epochs 1 --warmup_steps 0 --max_seq_length 48 --variants onnx --variant onnx)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"

# The fixed evaluation set (a quarter of the answers) and the "users": other questions, reworded.
"$PY" - "$DEMO_DIR" "$DATA" <<'PY'
import json, sys
from service.engine import corpus_id
from training.data import load_qa_data
from training.split import split_by_passage
out, data = sys.argv[1], sys.argv[2]
split = split_by_passage(load_qa_data([data]).records, 0.75, seed=3)
with open(f"{out}/fixed_eval.jsonl", "w", encoding="utf-8") as f:
    for r in split.eval:
        f.write(json.dumps({"question": r.question, "answer": r.positive}, ensure_ascii=False) + "\n")
with open(f"{out}/users.tsv", "w", encoding="utf-8") as f:
    for r in split.train[:20]:
        f.write(f"Şunu merak ediyorum: {r.question}\t{corpus_id(r.positive)}\n")
PY

echo "== 1/6 publishing v0001 (base model fine-tuned on $DATA)"
"$PY" -m retrain --registry "$REGISTRY" --name "$NAME" --data "$DATA" \
  --eval_data "$DEMO_DIR/fixed_eval.jsonl" --base_model sentence-transformers/all-MiniLM-L6-v2 "${FAST[@]}"

echo "== 2/6 serving $NAME on $URL (checks LATEST every second)"
"$PY" -m service --registry "$REGISTRY" --name "$NAME" --data_dir "$DEMO_DIR/state" --corpus "$DATA" \
  --variant onnx --reload_interval 1 --host 127.0.0.1 --port "$PORT" --log_level warning &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT  # `|| true`: set -e applies in traps
for _ in $(seq 1 180); do
  curl -fsS "$URL/ready" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "the service stopped; see its output above" >&2; exit 1; }
  sleep 1
done
version() { curl -fsS "$URL/info" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["model"]["version"])'; }
echo "serving $(version)"

echo "== 3/6 users search and pick their answer: POST /feedback"
n=0
while IFS=$'\t' read -r query answer_id; do
  body=$("$PY" -c 'import json,sys; print(json.dumps({"query": sys.argv[1], "top_k": 3}))' "$query")
  shown=$(curl -fsS "$URL/search" -H 'Content-Type: application/json' -d "$body" \
    | "$PY" -c 'import json,sys; print(json.dumps([h["id"] for h in json.load(sys.stdin)["results"]]))')
  feedback=$("$PY" -c 'import json,sys; print(json.dumps({"query": sys.argv[1], "document_id": sys.argv[2],
    "shown_ids": json.loads(sys.argv[3])}, ensure_ascii=False))' "$query" "$answer_id" "$shown")
  [ $n -eq 0 ] && echo "curl -X POST $URL/feedback -d '$feedback'"
  curl -fsS "$URL/feedback" -H 'Content-Type: application/json' -d "$feedback" >/dev/null
  n=$((n + 1))
done < "$DEMO_DIR/users.tsv"
echo "$n feedback records; $(curl -fsS "$URL/metrics" | grep '^qaembed_feedback_total')"

echo "== 4/6 exporting feedback: GET /feedback/export (or: python -m service export-feedback --data_dir ...)"
curl -fsS "$URL/feedback/export" -o "$DEMO_DIR/feedback.jsonl"
echo "$(wc -l < "$DEMO_DIR/feedback.jsonl") training records, e.g.:"
head -c 400 "$DEMO_DIR/feedback.jsonl"; echo " ..."

echo "== 5/6 retraining on data + feedback; promotion gate on the fixed evaluation set"
"$PY" -m retrain --registry "$REGISTRY" --name "$NAME" --data "$DATA" --feedback "$DEMO_DIR/feedback.jsonl" \
  --eval_data "$DEMO_DIR/fixed_eval.jsonl" --tolerance 0.02 "${FAST[@]}"
"$PY" - "$REGISTRY/$NAME/reports" <<'PY'
import json, pathlib, sys
report = json.loads(sorted(pathlib.Path(sys.argv[1]).glob("v*.json"))[-1].read_text())
m = report["metrics"]
print(f"\n{'metric':<14}{'before ' + report['current']:>16}{'after ' + report['candidate']:>16}")
for key in ("accuracy@1", "accuracy@3", "mrr@10", "ndcg@10"):
    print(f"{key:<14}{m['current'][key]:>16.4f}{m['candidate'][key]:>16.4f}")
print(f"\n{'PROMOTED' if report['promoted'] else 'REJECTED'}: {report['reason']}")
PY

echo "== 6/6 waiting for the service to pick up LATEST=$(cat "$REGISTRY/$NAME/LATEST")"
latest=$(cat "$REGISTRY/$NAME/LATEST")
for _ in $(seq 1 120); do
  [ "$(version)" = "$latest" ] && break
  sleep 1
done
echo "serving $(version) (re-embedded in the background, swapped atomically); GET /admin/reload:"
curl -fsS "$URL/admin/reload"; echo
echo "Rollback would be: $PY -m export rollback --registry $REGISTRY --name $NAME"
