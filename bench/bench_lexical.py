"""Lexical (BM25) vs dense retrieval on the shared Turkish data, and which analyzer ``tr`` should default to.

For each evaluation set (corpus = the set's unique passages, queries = its questions, MRR@10 of the gold
passage, scored by :func:`training.metrics.evaluate_rankings` like every other number of the project):

  * BM25 (SQLite FTS5, :class:`training.lexical.LexicalIndex`) with each analyzer: ``tr`` + snowball Turkish
    (PyStemmer), ``tr`` + 5-character prefix stems, ``simple`` (lowercase + word tokens);
  * dense: the bundled all-MiniLM-L6-v2, base (not fine-tuned), through sentence-transformers with the model's
    own max_seq_length (passages past it truncated, as the service embeds them today);
  * hybrid: that dense ranking fused with BM25 (the default ``tr`` analyzer) by
    :func:`training.fusion.weighted_fusion` at the α that does best on the set itself (an upper bound: training
    chooses α on its held-out split), and reciprocal-rank fusion (k = 60) for reference.

BM25 alone is also measured on the train files (more queries and passages) to check the analyzer choice.

    python bench/bench_lexical.py [--data_dir ../shared/data/turkish-qa] [--skip_train_sets]

Writes ``docs/benchmarks/lexical.md``. A quality measurement: machine load changes its duration, not its numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.analyzer import DEFAULT_ANALYZER, Analyzer  # noqa: E402
from training.data import load_qa_data  # noqa: E402
from training.fusion import rrf_fusion  # noqa: E402
from training.metrics import RetrievalTask, evaluate_rankings  # noqa: E402
from training.retrieval import choose_alpha, dense_rankings, hybrid_rankings, lexical_rankings, ranking_keys  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "turkish-qa"
EVAL_FILES = ("tquad1.dev.jsonl", "enelpi2020.test.jsonl")
TRAIN_FILES = ("tquad1.train.jsonl", "enelpi2020.train.jsonl")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ANALYZERS = {
    "BM25, tr + snowball Turkish": Analyzer.named("tr", stemmer="snowball"),
    "BM25, tr + 5-char prefix": Analyzer.named("tr", stemmer="prefix", prefix_length=5),
    "BM25, simple": Analyzer.named("simple"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--skip_train_sets", action="store_true", help="no BM25 check on the train files")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "benchmarks" / "lexical.md")
    args = parser.parse_args()
    started = time.monotonic()

    from training.encoding import SentenceEncoder
    from training.models import load_base_model

    model = load_base_model(MODEL)
    encoder = SentenceEncoder(model, batch_size=32)
    results = {name: evaluate_set(args.data_dir / name, encoder) for name in EVAL_FILES}
    train_results = {} if args.skip_train_sets else {
        name: {label: bm25_mrr(task_of(args.data_dir / name), analyzer) for label, analyzer in ANALYZERS.items()}
        for name in TRAIN_FILES}
    command = "python bench/bench_lexical.py" + (" --skip_train_sets" if args.skip_train_sets else "")
    report = render(results, train_results, command, time.monotonic() - started, model.max_seq_length)
    args.report.write_text(report, encoding="utf-8")
    print(report)


def task_of(path: Path) -> RetrievalTask:
    return RetrievalTask.from_records(load_qa_data([path]).records)


def bm25_mrr(task: RetrievalTask, analyzer: Analyzer) -> float:
    return evaluate_rankings(task, ranking_keys(lexical_rankings(task, analyzer)))["mrr@10"]


def evaluate_set(path: Path, encoder) -> dict:
    task = task_of(path)
    print(f"{path.name}: {len(task.queries)} questions, {len(task.corpus)} passages", flush=True)
    rows = {label: bm25_mrr(task, analyzer) for label, analyzer in ANALYZERS.items()}
    dense = dense_rankings(task, encoder.queries, encoder.passages)
    lexical = lexical_rankings(task, Analyzer.named(DEFAULT_ANALYZER))
    rows["dense, base MiniLM"] = evaluate_rankings(task, ranking_keys(dense))["mrr@10"]
    alpha, by_alpha = choose_alpha(task, dense, lexical)
    rows[f"hybrid, weighted (α = {alpha})"] = evaluate_rankings(
        task, ranking_keys(hybrid_rankings(dense, lexical, alpha)))["mrr@10"]
    rrf = [[hit.key for hit in rrf_fusion(d, lx)] for d, lx in zip(dense, lexical)]
    rows["hybrid, RRF (k = 60)"] = evaluate_rankings(task, rrf)["mrr@10"]
    return {"queries": len(task.queries), "passages": len(task.corpus), "rows": rows, "by_alpha": by_alpha}


def render(results: dict, train_results: dict, command: str, seconds: float, max_seq_length: int) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    labels = list(next(iter(results.values()))["rows"])
    lines = [
        "# Lexical vs dense retrieval on the shared Turkish data",
        "",
        f"Command: `{command}` ({os.cpu_count()} CPU cores, no GPU; {seconds:.0f} s; load average {load} at the "
        "end, other work included: a quality measurement, so load changes the duration, not the numbers).",
        f"Corpus = each set's unique passages; MRR@10 of the gold passage. Dense: `{MODEL}` (bundled), base, via "
        f"sentence-transformers, max_seq_length {max_seq_length} (longer passages truncated). Hybrid: dense + BM25 "
        f"(analyzer `{DEFAULT_ANALYZER}` = {Analyzer.named(DEFAULT_ANALYZER).describe()}), top "
        "100 of each side; the weighted fusion's α is the best of 0.0..1.0 on the set itself (an upper bound).",
        "",
        "| ranker | " + " | ".join(f"{name} ({r['queries']} q, {r['passages']} p)" for name, r in results.items())
        + " |",
        "|---|" + "---|" * len(results),
    ]
    for label in labels:
        best = {name: max(r["rows"].values()) for name, r in results.items()}
        cells = [(f"**{r['rows'][label]:.3f}**" if r["rows"][label] == best[name] else f"{r['rows'][label]:.3f}")
                 for name, r in results.items()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "MRR@10 of the weighted hybrid by α (α weighs the dense score, 1 − α BM25's):", "",
              "| set | " + " | ".join(next(iter(results.values()))["by_alpha"]) + " |",
              "|---|" + "---|" * len(next(iter(results.values()))["by_alpha"])]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["by_alpha"].values()) + " |")
    if train_results:
        lines += ["", "BM25 alone on the train files (more queries; corpus = the file's unique passages):", "",
                  "| analyzer | " + " | ".join(train_results) + " |", "|---|" + "---|" * len(train_results)]
        for label in ANALYZERS:
            lines.append(f"| {label} | " + " | ".join(f"{r[label]:.3f}" for r in train_results.values()) + " |")
    lines += ["", "## Reading it", "", *reading(results, train_results), ""]
    return "\n".join(lines)


def reading(results: dict, train_results: dict) -> list[str]:
    snowball, prefix, simple = ANALYZERS
    every = [r["rows"] for r in results.values()] + list(train_results.values())
    prefix_wins = sum(rows[prefix] > rows[snowball] for rows in every)
    stem_wins = sum(rows[prefix] > rows[simple] for rows in every)
    dense, rrf = "dense, base MiniLM", "hybrid, RRF (k = 60)"
    alphas = {name: max(r["by_alpha"], key=lambda a: (r["by_alpha"][a], a)) for name, r in results.items()}
    return [
        f"* Analyzer: the 5-character prefix beats snowball Turkish on {prefix_wins} of {len(every)} sets "
        f"(by {min(rows[prefix] - rows[snowball] for rows in every) * 100:+.1f} to "
        f"{max(rows[prefix] - rows[snowball] for rows in every) * 100:+.1f} points MRR@10), so `tr` defaults to "
        "it (`training/analyzer.py`); snowball stays available (`stemmer=\"snowball\"`). The prefix beats no "
        f"stemming (`simple`) on {stem_wins} of {len(every)} sets.",
        *(f"* {name}: BM25 ({r['rows'][prefix]:.3f}) is {(r['rows'][prefix] - r['rows'][dense]) * 100:+.1f} points "
          f"over the base dense model ({r['rows'][dense]:.3f}); the weighted hybrid's best α is {alphas[name]} "
          f"({r['by_alpha'][alphas[name]]:.3f}), RRF gives {r['rows'][rrf]:.3f}."
          for name, r in results.items()),
        "* With the base model the dense side adds nothing BM25 lacks (best α near 0), and RRF, which weighs both "
        "rankings equally whatever their quality, lands far below BM25 alone: fusion must be weighted, with α "
        "chosen on data. Training chooses α for the fine-tuned model on its held-out split (`metrics.json` "
        "`fusion`), where the dense side is stronger.",
    ]


if __name__ == "__main__":
    main()
