"""The two trainers of the user's guide, as presets: their models and defaults, exactly.

| preset         | model                          | lr   | max_seq_length | pooling | query instruction |
|----------------|--------------------------------|------|----------------|---------|-------------------|
| `turkish-bert` | dbmdz/bert-base-turkish-cased  | 2e-5 | 128            | mean    | off               |
| `bge`          | BAAI/bge-m3                    | 1e-5 | 512            | cls     | on                |

Common defaults: epochs 3, batch_size 16, warmup_steps 100, train_split 0.8, num_negatives 3.

Example::

    >>> from training.presets import PRESETS
    >>> PRESETS["bge"].learning_rate
    1e-05
"""

from __future__ import annotations

from dataclasses import dataclass

# The instruction BGE models were trained with for retrieval queries (applied to queries only).
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class Preset:
    name: str
    model_name: str
    learning_rate: float
    max_seq_length: int
    pooling_mode: str
    use_instructions: bool
    output_dir: str
    epochs: int = 3
    batch_size: int = 16
    warmup_steps: int = 100
    train_split: float = 0.8
    num_negatives: int = 3


PRESETS = {
    "turkish-bert": Preset(
        name="turkish-bert",
        model_name="dbmdz/bert-base-turkish-cased",
        learning_rate=2e-5,
        max_seq_length=128,
        pooling_mode="mean",
        use_instructions=False,
        output_dir="./models/turkish-bert-qa-finetuned",
    ),
    "bge": Preset(
        name="bge",
        model_name="BAAI/bge-m3",
        learning_rate=1e-5,
        max_seq_length=512,
        pooling_mode="cls",
        use_instructions=True,
        output_dir="./models/bge-qa-finetuned",
    ),
}
DEFAULT_PRESET = "turkish-bert"
