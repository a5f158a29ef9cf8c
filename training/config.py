"""The one place training defaults live: :class:`TrainingConfig` and the presets of the guide's two trainers.

A training run (``python -m training``, the retraining stage, the benchmarks) is a :class:`TrainingConfig`.
Every field has a default; a preset overrides the model and its own values, and a caller overrides what
it sets explicitly. Nothing else repeats a default: the CLIs take theirs from here.

| preset         | model                          | lr   | max_seq_length | pooling | query instruction |
|----------------|--------------------------------|------|----------------|---------|-------------------|
| `turkish-bert` | dbmdz/bert-base-turkish-cased  | 2e-5 | 128            | mean    | off               |
| `bge`          | BAAI/bge-m3                    | 1e-5 | 512            | cls     | on                |

Common defaults: epochs 3, batch_size 16, warmup_steps 100, train_split 0.8, 3 hard negatives per question
mined from ranks 0-100 with a relative margin of 0.05, MNRL loss (cached: mini-batches of 32), seed 42.

The field names are what ``metrics.json`` records under ``config``: renaming one changes that file format.

Example::

    >>> from training.config import preset_config
    >>> config = preset_config("bge", output_dir="out", epochs=1)
    >>> config.learning_rate, config.pooling_mode, config.epochs, config.num_negatives
    (1e-05, 'cls', 1, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# The instruction BGE models were trained with for retrieval queries (applied to queries only).
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
DEFAULT_PRESET = "turkish-bert"
LOSSES = ("mnrl", "cached_mnrl")
POOLING_MODES = ("mean", "cls", "max", "lasttoken")


@dataclass(frozen=True)
class TrainingConfig:
    """One training run. The defaults are the ``turkish-bert`` preset's."""

    preset: str = DEFAULT_PRESET
    model_name: str = "dbmdz/bert-base-turkish-cased"
    output_dir: str = "./models/turkish-bert-qa-finetuned"
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_steps: int = 100
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
    resume: bool = False  # continue an interrupted run from its last checkpoint

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
        if not 0.0 <= self.negatives_margin < 1.0:  # also refuses nan
            raise ValueError(f"--negatives_margin must be in [0, 1), got {self.negatives_margin}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.train_split <= 1.0:
            raise ValueError(f"--train_split must be in (0, 1], got {self.train_split}")
        if self.num_negatives < 0 or self.warmup_steps < 0:
            raise ValueError("--num_negatives and --warmup_steps must not be negative")


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
