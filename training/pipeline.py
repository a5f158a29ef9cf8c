"""One training run end to end: split → base metrics → negatives → fine-tune → metrics → publish.

The held-out split is ranked four ways (``metrics.json``: ``bm25``, ``base``, ``finetuned``, ``hybrid``) so a user
sees whether the fine-tuned model beats a keyword index; ``fusion`` records the hybrid's α, chosen on the split
(``training.retrieval``), and the analyzer it was chosen with: what a search fusing the same way needs.

The finished model folder appears at ``output_dir`` only when everything succeeded: work happens
in ``<output_dir>.partial/`` (checkpoints for ``--resume`` included) and is moved into place last,
so an interrupted or failed run never leaves a half-written model where a user expects one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from training import report
from training.analyzer import DEFAULT_ANALYZER, Analyzer
from training.config import TrainingConfig
from training.data import QAData, QARecord, load_qa_data, write_pairs_jsonl
from training.encoding import SentenceEncoder
from training.finetune import fine_tune
from training.metrics import RetrievalTask, evaluate
from training.models import ModelLoadError, load_base_model
from training.negatives import NegativeMiner
from training.retrieval import compare_retrievers
from training.split import Split, split_by_passage

EVAL_DATA_FILE = "eval_data.jsonl"  # the held-out split, in the guide's JSONL format
MODEL_FOLDER_FILES = ("metrics.json", "config_sentence_transformers.json")  # every finished run writes both


def run_training(config: TrainingConfig, data: QAData, log=print) -> dict:
    """Run the whole job and return the ``metrics.json`` payload (also written to ``output_dir``)."""
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir)
    work_dir = Path(f"{output_dir}.partial")
    split = _limit_train(split_by_passage(data.records, config.train_split, config.seed), config)
    eval_task = RetrievalTask.from_records(split.eval) if split.eval else None

    model = load_base_model(config.model_name, config.pooling_mode, config.max_seq_length, config.query_instruction)
    encoder = SentenceEncoder(model, config.batch_size)
    summary = data_summary(data, model.tokenizer, config.max_seq_length)
    summary.update(
        train_pairs=len(split.train),
        eval_pairs=len(split.eval),
        train_passages=len({r.positive for r in split.train}),
        eval_passages=len({r.positive for r in split.eval}),
        negatives_removed_as_eval_passages=split.negatives_removed,
    )
    log(_summary_text(summary))

    base_metrics = evaluate(eval_task, encoder.queries, encoder.passages) if eval_task else None
    train_records = _with_negatives(split.train, config, encoder, log)
    summary["negatives_per_question"] = min((len(r.negatives) for r in train_records), default=0)

    result = fine_tune(model, train_records, eval_task, config, work_dir / "checkpoints")
    if result.rows_per_step < 0.9 * config.batch_size:
        log(f"note: batches held {result.rows_per_step} rows on average, not {config.batch_size}: a question's passage "
            "appears once per batch and never as another row's negative, and this data has few passages for its "
            "questions and negatives; fewer in-batch negatives")
    # The fine-tuned dense ranking, BM25 and their fusion at the α that does best on the held-out split.
    retrievers = (compare_retrievers(eval_task, encoder.queries, encoder.passages, Analyzer.named(DEFAULT_ANALYZER))
                  if eval_task else {})

    payload = {
        "bm25": retrievers.get("bm25"),
        "base": base_metrics,
        "finetuned": retrievers.get("dense"),
        "hybrid": retrievers.get("hybrid"),
        "fusion": retrievers.get("fusion"),
        "chunking": encoder.chunking.describe(),  # how dense scored passages longer than max_seq_length
        "data": summary,
        "config": asdict(config),
        "training": {
            "seconds": result.seconds,
            "samples_per_second": result.samples_per_second,
            "steps": result.steps,
            "rows_per_step": result.rows_per_step,
            "peak_rss_mb": result.peak_rss_mb,
            "warmup_steps": result.warmup.steps,
            "warmup_note": result.warmup.note,
            "best_checkpoint": Path(result.best_checkpoint).name if result.best_checkpoint else None,
            "resumed_from": Path(result.resumed_from).name if result.resumed_from else None,
        },
    }
    if not _is_main_process():
        return payload  # under torchrun every rank trains; only rank 0 writes the model
    staging = work_dir / "model"
    if staging.exists():
        shutil.rmtree(staging)
    model.save(str(staging))
    _write_outputs(staging, payload, result.loss_history, split.eval)
    _replace_dir(staging, output_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    log("\n" + report.comparison_table(payload))
    log(report.verdict(payload))
    log(f"\nModel saved to {output_dir}")
    return payload


def check_output_dir(output_dir: Path) -> None:
    """Refuse, before anything is loaded or written, an ``output_dir`` that the finished run would replace but
    that is not a previous run's model folder (``--output_dir ./models`` would delete every model in it)."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder")
    if any(output_dir.iterdir()) and not all((output_dir / name).is_file() for name in MODEL_FOLDER_FILES):
        raise ValueError(
            f"--output_dir {output_dir} is not empty and is not a model folder written by python -m training "
            f"(it lacks {' or '.join(MODEL_FOLDER_FILES)}); the run would replace it: choose a new or empty folder"
        )


def _limit_train(split: Split, config: TrainingConfig) -> Split:
    """``--max_train_samples``: a seeded sample of the train side, in its order; the held-out side is kept whole."""
    limit = config.max_train_samples
    if limit is None or limit >= len(split.train):
        return split
    keep = sorted(random.Random(config.seed).sample(range(len(split.train)), limit))
    return Split(tuple(split.train[i] for i in keep), split.eval, split.negatives_removed)


def data_summary(data: QAData, tokenizer, max_seq_length: int) -> dict:
    """Counts, hash and token lengths (with the share of passages that will be truncated)."""
    questions = [r.question for r in data.records]
    passages = data.passages
    q_lengths = _token_lengths(tokenizer, questions)
    p_lengths = _token_lengths(tokenizer, passages)
    digest = hashlib.sha256()
    for source in data.sources:
        digest.update(Path(source).read_bytes())
    return {
        "sources": list(data.sources),
        "sha256": digest.hexdigest(),
        "pairs": len(data.records),
        "duplicates_dropped": data.duplicates_dropped,
        "unique_passages": len(passages),
        "explicit_negatives": data.explicit_negatives,
        "avg_question_tokens": round(float(np.mean(q_lengths)), 1),
        "avg_passage_tokens": round(float(np.mean(p_lengths)), 1),
        "passages_truncated_pct": round(100.0 * float(np.mean(p_lengths > max_seq_length)), 1),
    }


def test_saved_model(model_dir: str, data_paths: list[str] | None, base_model: str | None, samples: int,
                     compare: bool = False, log=print):
    """``--test_only``/``--compare``: evaluate the saved model (and its base) on whole data files.

    Without data files, the held-out split saved by the training run is used. A base model that cannot be
    loaded (e.g. a hub id while offline) is an error only for ``compare``; ``--test_only`` reports the
    fine-tuned model alone, with a note.
    """
    model_dir_path = Path(model_dir)
    saved = _read_saved_metrics(model_dir_path)
    paths = data_paths or [str(model_dir_path / EVAL_DATA_FILE)]
    data = load_qa_data(paths)
    task = RetrievalTask.from_records(data.records)
    config = saved.get("config", {})
    base_name = base_model or config.get("model_name")
    finetuned = SentenceEncoder(load_base_model(model_dir))
    fusion = saved.get("fusion") or {}  # the training run's α and analyzer; none in an older model folder
    analyzer = (Analyzer.from_description(fusion["analyzer"]) if "analyzer" in fusion
                else Analyzer.named(DEFAULT_ANALYZER))
    retrievers = compare_retrievers(task, finetuned.queries, finetuned.passages, analyzer, fusion.get("alpha"))
    result = {"bm25": retrievers["bm25"], "base": None, "finetuned": retrievers["dense"],
              "hybrid": retrievers["hybrid"], "fusion": retrievers["fusion"], "chunking": finetuned.chunking.describe()}
    if base_name:
        try:
            # The base model as training configured it: same pooling, length and query instruction.
            base = SentenceEncoder(
                load_base_model(base_name, config.get("pooling_mode"), config.get("max_seq_length"),
                           config.get("query_instruction"))
            )
        except ModelLoadError as error:
            if compare:
                raise
            log(f"note: the base model is not shown, only the fine-tuned one: {error}\n")
        else:
            result["base"] = evaluate(task, base.queries, base.passages)
    log(f"Evaluated on {', '.join(paths)}: {len(task.queries)} questions, {len(task.corpus)} passages; hybrid at "
        + (f"the training run's α {fusion['alpha']}\n" if "alpha" in fusion
           else f"α {result['fusion']['alpha']}, chosen on this data (the model folder records none)\n"))
    log(report.comparison_table(result))
    log(report.verdict(result))
    if samples:
        log("\n" + _sample_answers(finetuned, task, samples))
    return result


def _with_negatives(records, config: TrainingConfig, encoder: SentenceEncoder, log) -> list[QARecord]:
    if not config.hard_negatives:
        log("Negatives: in-batch only (--no_hard_negatives)")
        return [QARecord(r.question, r.positive, (), r.origin) for r in records]
    miner = NegativeMiner(
        encoder,
        source=config.negatives_from,
        num_negatives=config.num_negatives,
        range_min=config.negatives_range_min,
        range_max=config.negatives_range_max,
        relative_margin=config.negatives_margin,
        seed=config.seed,
    )
    explicit = sum(len(r.negatives) for r in records)
    filled = miner.fill(records, [r.positive for r in records])
    per_question = min((len(r.negatives) for r in filled), default=0)
    ranker = "the base model" if config.negatives_from == "model" else "BM25"
    log(f"Negatives: {explicit} explicit, {miner.stats.mined} mined with {ranker}; "
        f"{per_question} per question in training")
    if miner.stats.below_window or miner.stats.random:
        log(f"  note: {miner.stats.below_window} questions took candidates ranked past "
            f"--negatives_range_max {config.negatives_range_max}, {miner.stats.random} were topped up with random "
            f"training passages ({ranker} found too few other candidates for them)")
    if per_question < config.num_negatives:
        log(f"  note: only {per_question} of {config.num_negatives} negatives per question: "
            "the training set has too few passages")
    return filled


def _write_outputs(folder: Path, payload: dict, loss_history, eval_records) -> None:
    (folder / "metrics.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_pairs_jsonl(eval_records, folder / EVAL_DATA_FILE)
    report.plot_loss(loss_history, folder / "loss.png")
    report.plot_comparison(payload, folder / "compare.png")
    (folder / "README.md").write_text(report.model_card(payload), encoding="utf-8")


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is replaced only once ``new`` is complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]])


def _summary_text(s: dict) -> str:
    return (
        f"Data: {s['pairs']} pairs ({s['duplicates_dropped']} exact duplicates dropped), "
        f"{s['unique_passages']} unique passages, {s['explicit_negatives']} explicit negatives\n"
        f"  average tokens: question {s['avg_question_tokens']}, passage {s['avg_passage_tokens']}; "
        f"{s['passages_truncated_pct']} % of passages exceed max_seq_length and are truncated\n"
        f"Split by passage: train {s['train_pairs']} pairs / {s['train_passages']} passages, "
        f"eval {s['eval_pairs']} pairs / {s['eval_passages']} passages"
    )


def _sample_answers(encoder: SentenceEncoder, task: RetrievalTask, samples: int) -> str:
    queries = list(task.queries[:samples])
    scores = encoder.passages(list(task.corpus)).best(encoder.queries(queries))  # a passage: its best window
    lines = ["Sample questions and their top answers:"]
    for query, row in zip(queries, scores):
        lines.append(f"\nQ: {query}")
        for rank, pid in enumerate(np.argsort(-row)[:3], start=1):
            lines.append(f"  {rank}. ({row[pid]:.3f}) {_shorten(task.corpus[pid])}")
    return "\n".join(lines)


def _read_saved_metrics(model_dir: Path) -> dict:
    path = model_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _shorten(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
