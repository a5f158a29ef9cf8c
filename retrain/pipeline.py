"""Retraining with a promotion gate: what the retraining CronJob runs (``python -m retrain``, :mod:`retrain.cli`).

    data + feedback ──► train (from the current model or the base) ──► export a candidate bundle
        ──► evaluate candidate and current on the same fixed evaluation set (the served variant)
        ──► promote (move LATEST) only if MRR@10 is not worse than current by more than --tolerance;
            otherwise the candidate stays an unpromoted, rejected version with its report.

Every decision is written to ``<registry>/<name>/reports/<version>.json`` (and ``--report``) and logged.
The fixed evaluation set is never trained on: records whose passage appears in it are removed
from the training data (and from negatives), so the gate compares models on unseen passages.

Feedback comes as files (``--feedback``: files or folders; empty ones mean "none yet") and/or straight
from a running service (``--feedback_url http://qaembed:8080/feedback/export``, with the admin key from
``QAEMBED_ADMIN_API_KEY``, the variable the serving pods read): the CronJob needs no access to the
service's volume.

Example::

    python -m retrain --registry registry --name qa --data faq.json --feedback feedback.jsonl \\
        --eval_data fixed_eval.jsonl --tolerance 0.01
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from export.bundle import Bundle, BundleError, latest_version, open_bundle, validate_name, validate_version
from export.fsutil import write_durably
from export.registry import REPORTS, set_latest
from export.runtime import OnnxEncoder, TextTokenizer
from training.config import DEFAULTS as TRAINING_DEFAULTS
from training.config import TrainingConfig
from training.data import DataError, QAData, QARecord, data_files, load_qa_data
from training.metrics import RetrievalTask, evaluate

# Share of the training pairs the run trains on; the rest picks the best epoch's checkpoint (the promotion gate
# uses the fixed evaluation set, never this split).
TRAIN_SPLIT = 0.9


class RetrainError(Exception):
    """Retraining cannot run with these inputs (bad data or flags, unreachable feedback); the message says why."""


@dataclass(frozen=True)
class RetrainConfig:
    """One retraining run: the flags of ``python -m retrain`` (the report records it under ``config``)."""

    registry: str
    name: str
    data: Sequence[str]
    eval_data: Sequence[str]
    feedback: Sequence[str] = ()
    feedback_url: str | None = None  # a service's GET /feedback/export, fetched before training
    start: str = "current"  # "current": continue from the published model's weights; "base": start over
    base_model: str | None = None  # default: the published bundle's base model
    tolerance: float = 0.01  # MRR@10 the candidate may lose against the current model and still be promoted
    variants: Sequence[str] = ("onnx", "onnx-optimized", "int8")  # exported
    variant: str = "int8"  # the variant the gate evaluates: what the service serves
    epochs: int = TRAINING_DEFAULTS.epochs
    batch_size: int = TRAINING_DEFAULTS.batch_size
    learning_rate: float = TRAINING_DEFAULTS.learning_rate
    warmup_steps: int = 10  # retraining sets are small: a long warm-up would take most of the run
    max_seq_length: int | None = None  # default: the start model's
    seed: int = TRAINING_DEFAULTS.seed
    analyzer: str | None = None  # lexical analyzer the hybrid's α is chosen with (default: training's)


def retrain(config: RetrainConfig, log: Callable[[str], None] = print) -> dict:
    """Run the pipeline; returns the decision report (also written under the registry)."""
    current = _current_bundle(config)
    eval_records = _load(config.eval_data, "--eval_data")
    # The fetched feedback file lives as long as the run: training hashes every source for its summary.
    fetched = Path(tempfile.mkdtemp(prefix="qaembed-feedback-"))
    try:
        return _retrain(config, current, eval_records, fetched, log)
    finally:
        shutil.rmtree(fetched, ignore_errors=True)


def _retrain(config: RetrainConfig, current, eval_records, fetched: Path, log: Callable[[str], None]) -> dict:
    from export.pipeline import export_model
    from training.pipeline import run_training

    eval_passages = {r.positive for r in eval_records}
    feedback = [str(f) for f in data_files(config.feedback) if not f.is_file() or f.stat().st_size > 0]
    if config.feedback_url:
        feedback += fetch_feedback(config.feedback_url, fetched / "feedback.jsonl", log)
    data = _load_data(config.data, feedback)
    train_records, excluded = _exclude_passages(data.records, eval_passages)
    if not train_records:
        raise RetrainError("no training data left once the evaluation passages are excluded")
    log(f"training data: {len(train_records)} pairs ({len(data.records)} loaded, {excluded} on evaluation "
        f"passages excluded, {data.duplicates_dropped} duplicates dropped)")

    start_model, facts = _start_model(config, current)
    log(f"starting from {start_model}")
    with tempfile.TemporaryDirectory(prefix="qaembed-retrain-") as work:
        model_dir = Path(work) / "model"
        run = TrainingConfig(
            preset="retrain", model_name=start_model, output_dir=str(model_dir), epochs=config.epochs,
            batch_size=config.batch_size, learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
            max_seq_length=config.max_seq_length or facts["max_seq_length"], train_split=TRAIN_SPLIT,
            pooling_mode=facts["pooling"], query_instruction=facts["query_prompt"], seed=config.seed,
        )  # negatives, loss and the rest: the training defaults (training.config)
        try:
            run.check()
        except ValueError as error:
            raise RetrainError(str(error)) from None
        run_training(run, QAData(tuple(train_records), data.duplicates_dropped, data.sources), log=log)
        # The hybrid search's α travels in the manifest, chosen on the fixed evaluation set with the exported
        # candidate (the set the gate trusts; the training run's held-out share is smaller).
        candidate_dir = export_model(str(model_dir), config.registry, config.name, variants=config.variants,
                                     eval_data=config.eval_data, include_torch=True, promote=current is None,
                                     analyzer=config.analyzer, fusion_from="eval_data", log=log)
    candidate = open_bundle(config.registry, config.name, candidate_dir.name)

    task = RetrievalTask.from_records(eval_records)
    if config.variant not in candidate.variants or (current and config.variant not in current.variants):
        raise RetrainError(f"--variant {config.variant} is not in both bundles; choose one of {candidate.variants}")
    scores = {"candidate": _score(candidate, config.variant, task)}
    if current is not None:
        scores["current"] = _score(current, config.variant, task)
    decision = _decide(scores, config.tolerance)
    if decision["promoted"] and current is not None:
        set_latest(config.registry, config.name, candidate.version)
    report = {
        "name": config.name,
        "candidate": candidate.version,
        "current": current.version if current else None,
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **decision,
        "metrics": scores,
        "variant": config.variant,
        # how passages were cut for the gate's scores (as the service cuts them: default stride)
        "chunking": TextTokenizer(candidate.tokenizer_path, candidate.max_seq_length).chunking().describe(),
        "eval_data": list(config.eval_data),
        "fusion": candidate.manifest.get("fusion"),
        "training": {"pairs": len(train_records), "excluded_eval_passage_pairs": excluded,
                     "sources": list(data.sources), "started_from": start_model},
        "config": asdict(config),
    }
    path = write_report(config.registry, config.name, report)
    log(f"{'PROMOTED' if decision['promoted'] else 'REJECTED'} {candidate.version}: {decision['reason']} "
        f"(report: {path})")
    return report


def fetch_feedback(url: str, out: Path, log: Callable[[str], None] = print) -> list[str]:
    """GET ``url`` (a service's ``/feedback/export``) into ``out``; ``[]`` when it holds no feedback yet.

    The admin key comes from ``QAEMBED_ADMIN_API_KEY`` (never a flag: flags show in process lists).
    """
    key = os.environ.get("QAEMBED_ADMIN_API_KEY")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
        out.write_bytes(body)
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:300]
        hint = " (set QAEMBED_ADMIN_API_KEY to the service's admin key)" if error.code in (401, 403) else ""
        raise RetrainError(f"feedback from {url}: HTTP {error.code} {detail}{hint}") from None
    except (urllib.error.URLError, OSError) as error:
        raise RetrainError(f"feedback from {url}: {getattr(error, 'reason', error)}") from None
    rows = sum(1 for line in body.splitlines() if line.strip())
    log(f"feedback: {rows} rows from {url}")
    return [str(out)] if rows else []


def write_report(registry: str | Path, name: str, report: dict) -> Path:
    """Write ``<registry>/<name>/reports/<candidate>.json`` atomically (rollback reads the decision back)."""
    folder = Path(registry) / validate_name(name) / REPORTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{validate_version(report['candidate'])}.json"
    write_durably(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def _decide(scores: dict, tolerance: float) -> dict:
    candidate = scores["candidate"]["mrr@10"]
    if "current" not in scores:
        return {"promoted": True, "reason": "first version: nothing to compare against"}
    current = scores["current"]["mrr@10"]
    delta = round(candidate - current, 6)
    if delta >= -tolerance:
        return {"promoted": True, "delta_mrr@10": delta,
                "reason": f"MRR@10 {candidate:.4f} vs current {current:.4f} (Δ {delta:+.4f} ≥ -{tolerance})"}
    return {"promoted": False, "delta_mrr@10": delta,
            "reason": f"MRR@10 {candidate:.4f} is worse than current {current:.4f} by more than {tolerance}"}


def _score(bundle: Bundle, variant: str, task: RetrievalTask) -> dict:
    queries = OnnxEncoder.from_bundle(bundle, variant, prompt=bundle.query_prompt)
    passages = OnnxEncoder.from_bundle(bundle, variant)
    # passages chunked and scored by their best window, as the service ingests and searches them
    return evaluate(task, queries.encode, passages.passages)


def _current_bundle(config: RetrainConfig) -> Bundle | None:
    try:
        latest_version(config.registry, config.name)
    except BundleError:
        return None  # nothing published yet: the candidate becomes the first version
    return open_bundle(config.registry, config.name)


def _start_model(config: RetrainConfig, current) -> tuple[str, dict]:
    """The model to train from, and the pooling/prompt/length facts to train it with."""
    if current is None:
        if not config.base_model:
            raise RetrainError("nothing is published yet: give --base_model to train the first version")
        from training.models import ModelLoadError, load_base_model

        try:
            model = load_base_model(config.base_model)
        except ModelLoadError as error:
            raise RetrainError(str(error)) from None
        facts = {"pooling": _pooling_of(model), "query_prompt": model.prompts.get("query", ""),
                 "max_seq_length": model.max_seq_length}
        return config.base_model, facts
    facts = {k: current.manifest[k] for k in ("pooling", "query_prompt", "max_seq_length")}
    torch_dir = current.manifest.get("torch")
    if config.start == "current":
        if not torch_dir:
            raise RetrainError(f"{current.name} {current.version} has no PyTorch weights to continue from; "
                              "use --from base")
        return str(current.path / torch_dir), facts
    return config.base_model or current.manifest["base_model"], facts


def _pooling_of(model) -> str:
    from export.onnx_export import model_facts

    return model_facts(model, "")["pooling"]


def _exclude_passages(records: Sequence[QARecord], passages: set[str]) -> tuple[list[QARecord], int]:
    kept = []
    for record in records:
        if record.positive in passages:
            continue
        negatives = tuple(n for n in record.negatives if n not in passages)
        kept.append(QARecord(record.question, record.positive, negatives, record.origin))
    return kept, len(records) - len(kept)


def _load_data(data: Sequence[str], feedback: Sequence[str]) -> QAData:
    try:
        return load_qa_data([*data, *feedback])
    except DataError as error:
        raise RetrainError(str(error)) from None


def _load(paths: Sequence[str], flag: str) -> tuple[QARecord, ...]:
    if not paths:
        raise RetrainError(f"{flag} is required: the promotion gate compares models on a fixed evaluation set")
    try:
        return load_qa_data(list(paths)).records
    except DataError as error:
        raise RetrainError(f"{flag}: {error}") from None
