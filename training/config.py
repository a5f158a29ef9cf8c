"""The one place training defaults live: :class:`TrainingConfig` and the presets of the guide's two trainers.

A training run (``python -m training``, the retraining stage, the benchmarks) is a :class:`TrainingConfig`.
Every field has a default; a preset overrides the model and its own values, and a caller overrides what
it sets explicitly. Nothing else repeats a default: the CLIs take theirs from here.

| preset         | model                          | lr   | max_seq_length | pooling | query instruction |
|----------------|--------------------------------|------|----------------|---------|-------------------|
| `turkish-bert` | dbmdz/bert-base-turkish-cased  | 2e-5 | 128            | mean    | off               |
| `bge`          | BAAI/bge-m3                    | 1e-5 | 512            | cls     | on                |

Common defaults: epochs 3, batch_size 16, warm-up of the guide's 100 steps but at most 10 % of the run
(:func:`plan_warmup`), train_split 0.8, 3 hard negatives per question mined from ranks 0-100 with a relative
margin of 0.05, MNRL loss (cached: mini-batches of 32), seed 42.

The field names are what ``metrics.json`` records under ``config``: renaming one changes that file format.

Example::

    >>> from training.config import preset_config
    >>> config = preset_config("bge", output_dir="out", epochs=1)
    >>> config.learning_rate, config.pooling_mode, config.epochs, config.num_negatives
    (1e-05, 'cls', 1, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

# The instruction BGE models were trained with for retrieval queries (applied to queries only).
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
DEFAULT_PRESET = "turkish-bert"
LOSSES = ("mnrl", "cached_mnrl")
POOLING_MODES = ("mean", "cls", "max", "lasttoken")
NEGATIVE_SOURCES = ("model", "bm25")  # --negatives_from: who ranks the candidates of training.negatives
GUIDE_WARMUP_STEPS = 100  # the guide's trainers' warm-up, sized for their large data sets
MAX_WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    """One training run. The defaults are the ``turkish-bert`` preset's."""

    preset: str = DEFAULT_PRESET
    model_name: str = "dbmdz/bert-base-turkish-cased"
    output_dir: str = "./models/turkish-bert-qa-finetuned"
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_steps: int | None = None  # None: the guide's 100, capped at 10 % of the run (plan_warmup)
    max_seq_length: int = 128
    train_split: float = 0.8  # share of pairs for training; the split is by passage
    hard_negatives: bool = True  # False: in-batch negatives only
    num_negatives: int = 3  # per question: explicit ones first, then mined with the base model
    pooling_mode: str = "mean"
    query_instruction: str = ""
    loss: str = "mnrl"  # or "cached_mnrl": large batches in bounded memory
    mini_batch_size: int = 32  # with cached_mnrl
    seed: int = 42
    negatives_range_min: int = 0  # skip this many top-ranked candidates
    negatives_range_max: int = 100  # consider candidates up to this rank
    negatives_margin: float = 0.05  # skip candidates above (1 - margin) × the positive's score (likely positives)
    negatives_from: str = "model"  # who ranks the mining candidates: "model" (the base model) or "bm25"
    resume: bool = False  # continue an interrupted run from its last checkpoint
    max_train_samples: int | None = None  # train on at most this many pairs of the train split (seeded sample)

    def check(self) -> None:
        """Raise ``ValueError`` naming the flag of a value the run cannot use.

        Checked before the model loads: FAISS and the loss would fail later with bare assertions.
        """
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "max_seq_length": self.max_seq_length,
                    "negatives_range_max": self.negatives_range_max, "mini_batch_size": self.mini_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        if not 0 <= self.negatives_range_min < self.negatives_range_max:
            raise ValueError(f"--negatives_range_min must be at least 0 and below --negatives_range_max "
                             f"{self.negatives_range_max}, got {self.negatives_range_min}")
        if self.negatives_from not in NEGATIVE_SOURCES:
            raise ValueError(f"--negatives_from must be {' or '.join(NEGATIVE_SOURCES)}, got {self.negatives_from!r}")
        if not 0.0 <= self.negatives_margin < 1.0:  # also refuses nan
            raise ValueError(f"--negatives_margin must be in [0, 1), got {self.negatives_margin}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.train_split <= 1.0:
            raise ValueError(f"--train_split must be in (0, 1], got {self.train_split}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be at least 1, got {self.max_train_samples}")
        if self.num_negatives < 0 or (self.warmup_steps or 0) < 0:
            raise ValueError("--num_negatives and --warmup_steps must not be negative")


class Warmup(NamedTuple):
    steps: int
    note: str | None  # why the steps differ from the default, or a warning about an explicit value


def plan_warmup(requested: int | None, total_steps: int) -> Warmup:
    """The learning-rate warm-up of a run of ``total_steps`` optimiser steps.

    ``requested`` ``None`` (no ``--warmup_steps``) is the guide's 100 steps, capped at 10 % of the run: 1,280
    pairs at batch 32 are 37 steps, and a 100-step warm-up would never reach the learning rate. An explicit
    value is kept as given, with a warning when it is over 10 % of the run.

    >>> plan_warmup(None, 37).steps, plan_warmup(5, 37).steps
    (3, 5)
    >>> plan_warmup(None, 5000), plan_warmup(20, 1000)
    (Warmup(steps=100, note=None), Warmup(steps=20, note=None))
    """
    cap = int(total_steps * MAX_WARMUP_SHARE)
    if requested is None:
        if GUIDE_WARMUP_STEPS <= cap:
            return Warmup(GUIDE_WARMUP_STEPS, None)
        return Warmup(cap, f"warm-up capped at {cap} steps, 10 % of the run's {total_steps} training steps (the "
                           f"default is {GUIDE_WARMUP_STEPS}; set --warmup_steps to choose)")
    if requested <= cap:
        return Warmup(requested, None)
    effect = ("the learning rate never reaches --learning_rate" if requested >= total_steps
              else f"its first {requested} steps train below --learning_rate")
    return Warmup(requested, f"warning: --warmup_steps {requested} is over 10 % of the run's {total_steps} training "
                             f"steps: {effect} (kept, as given)")


DEFAULTS = TrainingConfig()

PRESETS = {
    "turkish-bert": DEFAULTS,
    "bge": replace(
        DEFAULTS,
        preset="bge",
        model_name="BAAI/bge-m3",
        output_dir="./models/bge-qa-finetuned",
        learning_rate=1e-5,
        max_seq_length=512,
        pooling_mode="cls",
        query_instruction=BGE_QUERY_INSTRUCTION,
    ),
}


def preset_config(preset: str = DEFAULT_PRESET, **overrides) -> TrainingConfig:
    """The ``preset``'s config with ``overrides`` (fields of :class:`TrainingConfig`; ``None`` keeps the preset's)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[preset], **{key: value for key, value in overrides.items() if value is not None})
