"""Fine-tune a SentenceTransformer on (question, passage, negatives...) with the MNRL loss family.

* ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (``mnrl``) or
  ``CachedMultipleNegativesRankingLoss`` (``cached_mnrl``: large batches in bounded memory).
* Batches never repeat a question or passage, nor hold one as another row's negative (it would be scored
  as a false in-batch negative of itself), and stay full when passages have many questions
  (:mod:`training.sampler`).
* The query instruction is applied to the question column only, via the trainer's ``prompts``.
* Evaluation each epoch with :mod:`training.metrics` (the same MRR@10 as the final report); the
  best checkpoint by MRR@10 is kept. Runs under ``torchrun`` as DDP without changes.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from training.config import LOSSES, TrainingConfig, Warmup, plan_warmup
from training.data import QARecord
from training.encoding import SentenceEncoder
from training.metrics import RetrievalTask, evaluate
from training.sampler import PassageBalancedBatchSampler

EVALUATOR_NAME = "qa"
BEST_METRIC = f"eval_{EVALUATOR_NAME}_mrr@10"


class TrainingError(ValueError):
    """Training cannot proceed with this data and configuration (a user error: exit code 2)."""


@dataclass(frozen=True)
class TrainResult:
    seconds: float  # wall time of trainer.train(), evaluation and checkpoints included
    samples_per_second: float  # over the training steps alone (see StepTimer)
    steps: int
    rows_per_step: float  # below batch_size when too few distinct passages fill the batches
    peak_rss_mb: float
    warmup: Warmup  # the steps used, and why they are not the default (or a warning about an explicit value)
    loss_history: list[tuple[int, float]]
    best_checkpoint: str | None
    resumed_from: str | None


class StepTimer(TrainerCallback):
    """Seconds spent in training steps (data loading, forward, backward, optimiser), nothing else.

    Time between one step's end and the next is counted; the epoch-end evaluation and checkpoint
    save fall between an epoch's last step and the next epoch's start, so they are not. This is the
    throughput a user compares across loops and machines; HF's ``train_samples_per_second`` also
    counts evaluation and saving, which depend on the eval set and the disk.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0  # this run's steps only: a resumed run does not count the earlier ones
        self._last = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds += now - self._last
        self.steps += 1
        self._last = now

    def samples_per_second(self, rows_per_step: float) -> float:
        return round(rows_per_step * self.steps / self.seconds, 2) if self.seconds else 0.0


def rows_per_step(trainer) -> float:
    """Mean training rows per optimiser step over all processes, from one epoch's actual batches
    (smaller than ``batch_size`` when the data has too few distinct passages to fill them)."""
    sizes = [len(batch) for batch in trainer.get_train_dataloader().batch_sampler]
    return trainer.args.world_size * sum(sizes) / max(1, len(sizes))


class RetrievalEvaluator(SentenceEvaluator):
    """Scores a model on a held-out :class:`RetrievalTask` during training (primary metric MRR@10)."""

    def __init__(self, task: RetrievalTask, batch_size: int = 32):
        super().__init__()
        self.task = task
        self.batch_size = batch_size
        self.name = EVALUATOR_NAME
        self.primary_metric = "mrr@10"

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        encoder = SentenceEncoder(model, self.batch_size)
        metrics = self.prefix_name_to_metrics(evaluate(self.task, encoder.queries, encoder.passages), self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


def to_dataset(records: list[QARecord]) -> Dataset:
    """Columns ``anchor, positive, negative_1..K``; every row gets the same K (the smallest count).

    The miner gives every question the same count (see :mod:`training.negatives`), so nothing is cut here
    unless the training set itself has too few passages.
    """
    k = min((len(r.negatives) for r in records), default=0)
    columns: dict[str, list[str]] = {"anchor": [r.question for r in records], "positive": [r.positive for r in records]}
    for i in range(k):
        columns[f"negative_{i + 1}"] = [r.negatives[i] for r in records]
    return Dataset.from_dict(columns)


def warmup_for(trainer: SentenceTransformerTrainer, config: TrainingConfig) -> Warmup:
    """The warm-up of ``config`` for the run ``trainer`` is set up for. Its steps are counted from the sampler's
    batches: when few passages fill them, the passage-balanced sampler makes more, smaller batches than
    rows / batch_size (the demo: 40 steps, not 20)."""
    return plan_warmup(config.warmup_steps, len(trainer.get_train_dataloader()) * config.epochs)


def build_trainer(
    model: SentenceTransformer,
    train_records: list[QARecord],
    eval_task: RetrievalTask | None,
    config: TrainingConfig,
    checkpoint_dir: Path,
) -> SentenceTransformerTrainer:
    """The configured trainer; checkpoints go to ``checkpoint_dir``."""
    dataset = to_dataset(train_records)
    evaluate_each_epoch = eval_task is not None and len(eval_task.queries) > 0
    steps_per_epoch = max(1, -(-len(dataset) // config.batch_size))
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        data_seed=config.seed,
        batch_sampler=PassageBalancedBatchSampler,
        prompts={"anchor": config.query_instruction} if config.query_instruction else None,
        eval_strategy="epoch" if evaluate_each_epoch else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=evaluate_each_epoch,
        metric_for_best_model=BEST_METRIC if evaluate_each_epoch else None,
        greater_is_better=True,
        logging_steps=max(1, steps_per_epoch * config.epochs // 25),
        fp16=cuda and not bf16,
        bf16=bf16,
        dataloader_pin_memory=cuda,  # pinning needs a GPU; on CPU it only prints a warning per epoch
        report_to="none",
    )
    # Under torchrun the arguments set up the process group; gathering makes every GPU's passages
    # negatives for every question (world_size × batch_size in-batch negatives).
    distributed = args.world_size > 1
    if config.loss == "cached_mnrl":
        loss = CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=config.mini_batch_size, gather_across_devices=distributed
        )
    elif config.loss == "mnrl":
        loss = MultipleNegativesRankingLoss(model, gather_across_devices=distributed)
    else:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        evaluator=RetrievalEvaluator(eval_task, config.batch_size) if evaluate_each_epoch else None,
    )
    warmup = warmup_for(trainer, config)  # the scheduler reads it when training starts
    trainer.args.warmup_steps = warmup.steps
    if warmup.note:
        print(warmup.note)
    return trainer


def fine_tune(
    model: SentenceTransformer,
    train_records: list[QARecord],
    eval_task: RetrievalTask | None,
    config: TrainingConfig,
    checkpoint_dir: Path,
) -> TrainResult:
    """Train ``model`` in place (``config.resume`` continues from the last checkpoint)."""
    trainer = build_trainer(model, train_records, eval_task, config, checkpoint_dir)
    warmup = warmup_for(trainer, config)  # what build_trainer set, recorded in metrics.json
    timer = StepTimer()
    trainer.add_callback(timer)
    resume_from = get_last_checkpoint(str(checkpoint_dir)) if config.resume and checkpoint_dir.is_dir() else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    if trainer.state.global_step == 0:
        raise TrainingError(
            f"no training step was taken: no batch of {config.batch_size} rows could be formed from "
            f"{len(train_records)} rows with {len(trainer.train_dataset.column_names) - 2} negatives each "
            "(a question's passage appears once per batch and never as another row's negative; under torchrun "
            "incomplete batches are dropped). Lower --batch_size or --num_negatives, or add data."
        )
    history = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    rows = rows_per_step(trainer)
    return TrainResult(
        seconds=round(seconds, 2),
        samples_per_second=timer.samples_per_second(rows),
        steps=int(trainer.state.global_step),
        rows_per_step=round(rows, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        warmup=warmup,
        loss_history=history,
        best_checkpoint=trainer.state.best_model_checkpoint,
        resumed_from=resume_from,
    )

