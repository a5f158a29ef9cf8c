"""Training benchmark on real Turkish data (TQuAD + ENELPI): what fine-tuning buys, and at what cost.

Trains all-MiniLM-L6-v2 on a seeded subset of the train files (split by passage, as the product does),
then evaluates on passages never trained on: ``tquad1.dev.jsonl`` and ``enelpi2020.test.jsonl``.

Configurations, each in its own process (so peak RSS is per configuration):
  * ``base``          — the base model, no training
  * ``in_batch``      — ``--no_hard_negatives``
  * ``auto_mined``    — hard negatives mined with the base model (the default)
  * ``plain_st``      — a plain sentence-transformers training loop on the same in-batch data and
                        config: the throughput baseline for ``in_batch`` (target ≥ 0.95×)

The data has no explicit negatives, so there is no "explicit negatives" row.

    python bench/bench_training.py [--data_dir ../shared/data/turkish-qa] [--pairs 2000] [--epochs 1]

Writes ``docs/benchmarks/training.md`` and ``docs/benchmarks/training.png`` (``--report NAME`` for
another name, e.g. a GPU run; ``--model`` for another base model).

Samples/s count the training steps only (:class:`training.finetune.StepTimer`, the same timer for both
loops), so the per-epoch evaluation and checkpoint saves of the product do not weigh on the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inputs import EVAL_SETS, apart_from_eval_sets  # noqa: E402  (bench/)

from training.data import load_qa_data  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "turkish-qa"
TRAIN_FILES = ("tquad1.train.jsonl", "enelpi2020.train.jsonl")
EVAL_FILES = EVAL_SETS
CONFIGS = ("base", "in_batch", "auto_mined", "plain_st")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs sampled (seeded) from the train files")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--warmup_steps", type=int, default=10)
    parser.add_argument("--model", default=MODEL, help="base model: name, alias or folder")
    parser.add_argument("--report", default="training", help="writes docs/benchmarks/<report>.md and .png")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "bench" / "results" / "training")
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args()
    if args.config:
        print(json.dumps(run_one(args)))
        return
    results = {}
    for config in CONFIGS:
        started = time.perf_counter()
        cmd = [sys.executable, __file__, *sys.argv[1:], "--config", config]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[config] = json.loads(out)
        print(f"{config}: done in {time.perf_counter() - started:.0f} s", flush=True)
    write_report(args, results)


def training_subset(args) -> list:
    data = load_qa_data([args.data_dir / name for name in TRAIN_FILES])
    # Sample whole passages so each keeps all its questions, as a real FAQ would.
    by_passage: dict[str, list] = {}
    for record in apart_from_eval_sets(data.records, args.data_dir, EVAL_FILES):
        by_passage.setdefault(record.positive, []).append(record)
    passages = sorted(by_passage)
    random.Random(13).shuffle(passages)
    subset: list = []
    for passage in passages:
        if len(subset) >= args.pairs:
            break
        subset.extend(by_passage[passage])
    return subset


def run_one(args) -> dict:
    from training.data import QAData
    from training.encoding import SentenceEncoder
    from training.metrics import RetrievalTask, evaluate
    from training.models import load_base_model

    records = training_subset(args)
    out_dir = args.work_dir / args.config
    result: dict = {"train_pairs": len(records)}
    if args.config == "base":
        model = load_base_model(args.model, "mean", args.max_seq_length, "")
    elif args.config == "plain_st":
        model, result["training"] = plain_st_loop(args, records, out_dir)
    else:
        from training.config import TrainingConfig
        from training.pipeline import run_training

        config = TrainingConfig(
            model_name=args.model, output_dir=str(out_dir), epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, max_seq_length=args.max_seq_length,
            train_split=0.9, hard_negatives=args.config == "auto_mined",
        )
        data = QAData(records=tuple(records), duplicates_dropped=0,
                      sources=tuple(str(args.data_dir / n) for n in TRAIN_FILES))
        payload = run_training(config, data, log=lambda *a: print(*a, file=sys.stderr))
        result["training"] = payload["training"]
        result["data"] = payload["data"]
        model = load_base_model(str(out_dir))
    encoder = SentenceEncoder(model, 64)
    for name in EVAL_FILES:
        task = RetrievalTask.from_records(load_qa_data([args.data_dir / name]).records)
        result[name] = evaluate(task, encoder.queries, encoder.passages)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def plain_st_loop(args, records, out_dir: Path):
    """The reference: sentence-transformers' own trainer, defaults, same data/config, nothing of ours."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from training.finetune import StepTimer, rows_per_step
    from training.models import load_base_model
    from training.split import split_by_passage

    train_records = split_by_passage(records, 0.9, 42).train
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = load_base_model(args.model, "mean", args.max_seq_length, "")
    dataset = Dataset.from_dict({"anchor": [r.question for r in train_records],
                                 "positive": [r.positive for r in train_records]})
    trainer = SentenceTransformerTrainer(
        model=model,
        args=SentenceTransformerTrainingArguments(
            output_dir=str(out_dir), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, seed=42, save_strategy="no",
            report_to="none", bf16=bf16, fp16=torch.cuda.is_available() and not bf16,  # the precision ours picks
        ),
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[timer := StepTimer()],
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return model, {"seconds": round(seconds, 2), "samples_per_second": timer.samples_per_second(rows_per_step(trainer)),
                   "steps": trainer.state.global_step}


def write_report(args, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = ROOT / "docs" / "benchmarks"
    docs.mkdir(parents=True, exist_ok=True)
    data = results["auto_mined"]["data"]
    lines = [
        "# Training benchmark",
        "",
        f"Command: `python bench/bench_training.py {' '.join(sys.argv[1:])}` on {machine()}.",
        "",
        f"Base model `{args.model}`; {results['base']['train_pairs']} training pairs sampled by passage (seed 13) from "
        f"{' + '.join(TRAIN_FILES)}; 90 % train / 10 % held out by passage for checkpoint selection; "
        f"{args.epochs} epoch(s), batch {args.batch_size}, lr {args.learning_rate}, warmup {args.warmup_steps}, "
        f"max_seq_length {args.max_seq_length}. Evaluated on passages never trained on.",
        "",
        f"Truncation: the model's tokenizer (MiniLM's: uncased English WordPiece) splits Turkish finely: the average "
        f"training passage is {data['avg_passage_tokens']} tokens and {data['passages_truncated_pct']} % of "
        f"passages exceed {args.max_seq_length} tokens, so only their beginning is embedded.",
        "",
    ]
    for name in EVAL_FILES:
        lines += [f"## {name}", "", "| config | Acc@1 | Acc@3 | MRR@10 | nDCG@10 | train s | samples/s | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for config in CONFIGS:
            r = results[config]
            m, t = r[name], r.get("training", {})
            lines.append(
                f"| {config} | {m['accuracy@1']:.3f} | {m['accuracy@3']:.3f} | {m['mrr@10']:.3f} | {m['ndcg@10']:.3f} "
                f"| {t.get('seconds', '-')} | {_num(t.get('samples_per_second'))} | {r['peak_rss_mb']} |"
            )
        lines.append("")
    ours = results["in_batch"]["training"]["samples_per_second"]
    plain = results["plain_st"]["training"]["samples_per_second"]
    lines += [
        "## Throughput against a plain sentence-transformers loop",
        "",
        f"`in_batch` (qaembed: no-duplicate batches, per-epoch MRR@10 evaluation, checkpoints) trains at "
        f"{ours:.2f} samples/s; the plain loop (default sampler, no evaluation, no checkpoints) at {plain:.2f} "
        f"samples/s: **{ours / plain:.2f}×** (target ≥ 0.95×). Both count training steps only (same timer); "
        "the `train s` column is wall time, evaluation and checkpoint saves included.",
        "",
        "Batches (a passage never twice in one; `training/sampler.py`): "
        + "; ".join(f"`{c}` {results[c]['training']['steps']} steps of {results[c]['training']['rows_per_step']} "
                    "rows on average" for c in ("in_batch", "auto_mined") if "rows_per_step" in results[c]["training"])
        + f" (batch size {args.batch_size}). A passage with more questions than there are batches ends in "
        "one-row batches: trained against their mined negatives, left out without any.",
        "",
        f"![training benchmark]({args.report}.png)",
        "",
    ]
    (docs / f"{args.report}.md").write_text("\n".join(lines), encoding="utf-8")

    fig, axes = plt.subplots(1, len(EVAL_FILES), figsize=(10, 3.5), sharey=True)
    for ax, name in zip(axes, EVAL_FILES):
        values = [results[c][name]["mrr@10"] for c in CONFIGS]
        bars = ax.bar(CONFIGS, values, color=["grey", "tab:blue", "tab:green", "tab:orange"])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_title(f"MRR@10 — {name}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(docs / f"{args.report}.png", dpi=100)
    print((docs / f"{args.report}.md").read_text())


def machine() -> str:
    import os

    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)} (bf16 mixed precision)" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores{gpu}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
