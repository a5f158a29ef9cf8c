"""What a training run leaves for people: the comparison table, plots and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training runs in Jobs without a display
import matplotlib.pyplot as plt  # noqa: E402

from training.metrics import METRIC_NAMES  # noqa: E402


def comparison_table(base: dict | None, finetuned: dict | None) -> str:
    """Base vs fine-tuned, one metric per row, with the gain in points (×100)."""
    rows = [f"{'metric':<12} {'base':>8} {'fine-tuned':>11} {'gain':>8}"]
    for name in METRIC_NAMES:
        b = None if base is None else base.get(name)
        f = None if finetuned is None else finetuned.get(name)
        gain = f"{(f - b) * 100:+.1f}" if b is not None and f is not None else "-"
        rows.append(f"{name:<12} {_fmt(b):>8} {_fmt(f):>11} {gain:>8}")
    return "\n".join(rows)


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


def plot_comparison(base: dict | None, finetuned: dict | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    xs = range(len(METRIC_NAMES))
    for offset, (label, metrics) in zip((-width / 2, width / 2), (("base", base), ("fine-tuned", finetuned))):
        values = [0.0 if metrics is None else metrics.get(name, 0.0) for name in METRIC_NAMES]
        bars = ax.bar([x + offset for x in xs], values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(list(xs), METRIC_NAMES, fontsize=8)
    ax.set(ylim=(0, 1.1), title="Base vs fine-tuned (held-out passages)")
    ax.legend()
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
        f"- passages longer than max_seq_length={config['max_seq_length']} tokens (truncated): "
        f"{data['passages_truncated_pct']:.1f} %",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config, indent=2, ensure_ascii=False),
        "```",
        "",
        "## Retrieval metrics on the held-out split",
        "",
        "```",
        comparison_table(report.get("base"), report.get("finetuned")),
        "```",
        "",
        "![training loss](loss.png) ![base vs fine-tuned](compare.png)",
        "",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
