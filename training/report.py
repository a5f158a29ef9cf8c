"""What a training run leaves for people: the comparison table, plots and the model card.

Every view shows the four rankings of the held-out split side by side (``RANKERS``): BM25, the base model, the
fine-tuned model and the hybrid of the fine-tuned model with BM25, and says plainly whether the fine-tuned model
beats BM25 (:func:`verdict`): a keyword index is the baseline a semantic search has to beat.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training runs in Jobs without a display
import matplotlib.pyplot as plt  # noqa: E402

from training.metrics import METRIC_NAMES  # noqa: E402

# (key in metrics.json, label): the order of every table and plot
RANKERS = (("bm25", "bm25"), ("base", "base"), ("finetuned", "fine-tuned"), ("hybrid", "hybrid"))


def comparison_table(results: dict) -> str:
    """The rankers of ``results`` (``metrics.json``'s keys; a missing one shows "-"), one metric per row, and the
    fine-tuned model's gain over its base in points (×100)."""
    rows = [f"{'metric':<12} " + " ".join(f"{label:>10}" for _, label in RANKERS) + f" {'gain':>8}"]
    for name in METRIC_NAMES:
        values = [_metric(results, key, name) for key, _ in RANKERS]
        base, finetuned = _metric(results, "base", name), _metric(results, "finetuned", name)
        gain = f"{(finetuned - base) * 100:+.1f}" if base is not None and finetuned is not None else "-"
        rows.append(f"{name:<12} " + " ".join(f"{_fmt(v):>10}" for v in values) + f" {gain:>8}")
    return "\n".join(rows)


def verdict(results: dict) -> str:
    """One sentence: does the fine-tuned model beat BM25 on MRR@10, and what does the hybrid add."""
    bm25, finetuned = _metric(results, "bm25", "mrr@10"), _metric(results, "finetuned", "mrr@10")
    if bm25 is None or finetuned is None:
        return "No held-out split: the fine-tuned model was not compared with BM25."
    if finetuned > bm25:
        text = f"The fine-tuned model beats BM25: MRR@10 {finetuned:.4f} vs {bm25:.4f}."
    else:
        text = (f"The fine-tuned model does NOT beat BM25: MRR@10 {finetuned:.4f} vs {bm25:.4f}; "
                "a keyword index alone would rank the held-out passages better.")
    hybrid, alpha = _metric(results, "hybrid", "mrr@10"), (results.get("fusion") or {}).get("alpha")
    if hybrid is not None and alpha is not None:
        text += f" Hybrid of the two (α = {alpha}: {alpha} × model + {1 - alpha:.1f} × BM25): MRR@10 {hybrid:.4f}."
    return text


def plot_loss(history: list[tuple[int, float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses, marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(RANKERS)
    xs = range(len(METRIC_NAMES))
    for position, (key, label) in enumerate(RANKERS):
        offset = (position - (len(RANKERS) - 1) / 2) * width
        values = [_metric(results, key, name) or 0.0 for name in METRIC_NAMES]
        bars = ax.bar([x + offset for x in xs], values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(list(xs), METRIC_NAMES, fontsize=8)
    ax.set(ylim=(0, 1.25), title="BM25, base, fine-tuned and hybrid (held-out passages)")
    ax.legend(loc="upper center", ncol=len(RANKERS), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_card(report: dict) -> str:
    """A short README.md stating data, configuration and metrics of the run."""
    config, data = report["config"], report["data"]
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, qaembed]",
        f"base_model: {config['model_name']}",
        "---",
        "",
        f"# {Path(config['output_dir']).name}",
        "",
        f"Fine-tuned by qaembed from `{config['model_name']}` (preset `{config['preset']}`) on question→answer data",
        "for semantic search: questions retrieve the passages that answer them.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer('path/to/this/folder')",
        "q = model.encode(['Sorunuz?'], prompt_name='query')  # applies the query instruction, if any",
        "p = model.encode(['Bir cevap metni.'], prompt_name='document')",
        "print(model.similarity(q, p))",
        "```",
        "",
        "## Data",
        "",
        f"- sources: {', '.join(f'`{s}`' for s in data['sources'])} (sha256 `{data['sha256'][:16]}…`)",
        f"- {data['pairs']} pairs ({data['duplicates_dropped']} exact duplicates dropped), "
        f"{data['unique_passages']} unique passages, {data['explicit_negatives']} explicit negatives",
        f"- split by passage (seed {config['seed']}): {data['train_pairs']} training pairs, "
        f"{data['eval_pairs']} held-out pairs over {data['eval_passages']} passages never trained on",
        f"- passages longer than max_seq_length={config['max_seq_length']} tokens: "
        f"{data['passages_truncated_pct']:.1f} % ({_chunking_text(report.get('chunking'))})",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config, indent=2, ensure_ascii=False),
        "```",
        "",
        "## Retrieval metrics on the held-out split",
        "",
        f"**{verdict(report)}**",
        "",
        "```",
        comparison_table(report),
        "```",
        "",
        "bm25: keyword search (SQLite FTS5, analyzer "
        f"`{json.dumps((report.get('fusion') or {}).get('analyzer'))}`); hybrid: the fine-tuned model's and BM25's "
        "scores, each min-max normalised per query, weighted α : 1 − α, with α chosen on this same split "
        "(`fusion` in metrics.json), so its number here is optimistic.",
        "",
        "![training loss](loss.png) ![bm25, base, fine-tuned and hybrid](compare.png)",
        "",
    ]
    return "\n".join(lines)


def _chunking_text(chunking: dict | None) -> str:
    if not chunking or not chunking.get("stride"):
        return "truncated for training and evaluation"
    return (f"truncated for training; evaluation scores a passage by its best window of {chunking['window']} tokens, "
            f"stride {chunking['stride']}, as the service searches")


def _metric(results: dict, ranker: str, name: str) -> float | None:
    metrics = results.get(ranker)
    return None if metrics is None else metrics.get(name)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
