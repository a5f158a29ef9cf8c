#!/usr/bin/env bash
# The GPU checks, in one call on a lent GPU machine (prepared by bench/gpu/prepare.sh, carried as .gpu):
#   1. what the machine offers (CUDA, bf16, FAISS GPUs, onnxruntime providers, CUDA 12 cuBLAS for faiss-gpu);
#   2. `python -m training` on CUDA under torchrun (the DDP code path, bf16, rank-0 writes), and with
#      --loss cached_mnrl;
#   3. bench/bench_training.py on CUDA: qaembed's trainer vs a plain sentence-transformers loop;
#   4. the service's torch backend on CUDA: parity with CPU and throughput.
# The model is BERT-base sized (the turkish-bert preset's architecture) with random weights and MiniLM's
# tokenizer: hub models can't be fetched there and the bundled MiniLM is too big to carry along with
# the wheels, so quality numbers from this run mean nothing; speed and code paths do.
#   OUT=/tmp/gpu bash bench/gpu/run.sh          # all steps
#   OUT=/tmp/gpu bash bench/gpu/run.sh 1 2      # some of them (1 always runs: it builds the model)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
step() { echo; echo "=== $* ($(date +%T))"; }
wanted() { [ $# -eq 0 ] || [[ " $* " == *" $STEP "* ]]; }
MODEL=/tmp/bert-base-random

step "1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 - <<'PY'
import faiss, onnxruntime, sentence_transformers, torch, transformers
print("torch", torch.__version__, torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
print("sentence-transformers", sentence_transformers.__version__, "transformers", transformers.__version__)
print("faiss", faiss.__version__, "GPUs seen by faiss:", faiss.get_num_gpus())
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PY
echo "cuBLAS 12 (needed by faiss-gpu-cu12 / onnxruntime-gpu):"
find / -xdev \( -name 'libcublas.so.12*' -o -name 'libcublasLt.so.12*' \) 2>/dev/null | head -3 || true
python3 - <<'PY'
import torch
from transformers import AutoTokenizer, BertConfig, BertModel
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(".gpu/tokenizer")
BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained("/tmp/bert-base-random")
tokenizer.save_pretrained("/tmp/bert-base-random")
PY

STEP=2; if wanted "$@"; then
step "2a. python -m training under torchrun (1 process, CUDA, NCCL)"
torchrun --nproc_per_node 1 -m training --model_name $MODEL --pooling_mode mean --data_path .gpu/data/tquad1.train.jsonl \
  --epochs 1 --batch_size 32 --warmup_steps 10 --max_seq_length 128 --output_dir /tmp/run-ddp 2>&1 | grep -v "it/s]" | tail -25
python3 -c "import json; m = json.load(open('/tmp/run-ddp/metrics.json')); print('training', m['training'])"
ls /tmp/run-ddp
step "2b. under torchrun incomplete batches are dropped: 84 pairs over 32 passages can't fill one (expect exit 2)"
torchrun --nproc_per_node 1 -m training --model_name $MODEL --pooling_mode mean --data_path examples/example_qa_data.json \
  --epochs 1 --output_dir /tmp/run-tiny 2>&1 | grep -v "it/s]" | tail -3
echo "exit code: ${PIPESTATUS[0]}; output folder written: $(test -e /tmp/run-tiny && echo yes || echo no)"
step "2c. --loss cached_mnrl on CUDA"
python3 -m training --model_name $MODEL --pooling_mode mean --data_path examples/example_qa_data.json --epochs 1 \
  --batch_size 64 --loss cached_mnrl --mini_batch_size 8 --warmup_steps 1 --output_dir /tmp/run-cached 2>&1 | tail -8
fi

STEP=3; if wanted "$@"; then
step "3. training benchmark on CUDA"
python3 bench/bench_training.py --data_dir .gpu/data --pairs 6000 --epochs 1 --batch_size 32 --model $MODEL \
  --report training-gpu --work_dir /tmp/bench 2>&1 | tail -40
cp docs/benchmarks/training-gpu.md docs/benchmarks/training-gpu.png "$OUT"/ 2>/dev/null
fi

STEP=4; if wanted "$@"; then
step "4. service torch backend on CUDA vs CPU"
python3 - <<'PY'
import time
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from service.backends.base import ModelSpec
from service.backends.torch import TorchBackend

folder = Path("/tmp/run-ddp")
spec = ModelSpec(name="gpu-check", version="1", tokenizer_path=folder, max_seq_length=128, dimension=768,
                 torch_model=folder)
texts = [line.split('"question": "')[1].split('"')[0] for line in open(".gpu/data/tquad1.dev.jsonl", encoding="utf-8")]
features = SentenceTransformer(str(folder), device="cpu").tokenize(texts[:256])
ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy()
types = features["token_type_ids"].numpy() if "token_type_ids" in features else None
cpu, gpu = TorchBackend(spec, device="cpu"), TorchBackend(spec, device="cuda")
a, b = cpu.embed(ids, mask, types), gpu.embed(ids, mask, types)
print(f"cuda vs cpu: max |diff| {np.abs(a - b).max():.2e}, min cosine {float((a * b).sum(1).min()):.6f}")
for backend in (gpu, cpu):
    backend.embed(ids[:64], mask[:64], None if types is None else types[:64])
    started, rounds = time.perf_counter(), 20 if backend is gpu else 2
    for _ in range(rounds):
        backend.embed(ids, mask, types)
    rate = rounds * len(ids) / (time.perf_counter() - started)
    print(f"{backend.device}: {rate:.0f} queries/s (batch {len(ids)}, padded to {ids.shape[1]} tokens)")
PY
fi
step done
