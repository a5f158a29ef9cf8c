"""`python -m training`: the guide's two trainers as one command with two presets.

Examples::

    python -m training --preset turkish-bert --data_path examples/example_qa_data.json
    python -m training --preset bge --model_name BAAI/bge-small-en-v1.5 --data_path data.json --batch_size 32
    python -m training --preset bge --output_dir ./models/bge-qa-finetuned --test_only
    python -m training --output_dir ./models/turkish-bert-qa-finetuned --compare

Every user error (bad data, unknown model, bad flag value) ends with one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from training.config import (
    BGE_QUERY_INSTRUCTION,
    DEFAULT_PRESET,
    DEFAULTS,
    LOSSES,
    NEGATIVE_SOURCES,
    POOLING_MODES,
    PRESETS,
    TrainingConfig,
    preset_config,
)
from training.data import DataError, load_qa_data

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Fine-tune a sentence-embedding model on question→answer data and compare it with its base.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="defaults of the guide's trainers: turkish-bert (finetune_turkish_bert_qa.py) or bge")
    p.add_argument("--data_path", nargs="+",
                   help="one or more .json/.jsonl/.csv files or folders of them (duplicates removed across them)")
    p.add_argument("--output_dir", help="model folder to write (default: the preset's)")
    p.add_argument("--model_name", help="hub id or local folder (default: the preset's); "
                   "sentence-transformers/all-MiniLM-L6-v2 loads offline from the bundled package")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--warmup_steps", type=int)
    p.add_argument("--max_seq_length", type=int)
    p.add_argument("--train_split", type=float, help="share of pairs for training; the split is by passage")
    p.add_argument("--pooling_mode", choices=POOLING_MODES)
    p.add_argument("--no_hard_negatives", action="store_true", help="in-batch negatives only")
    p.add_argument("--num_negatives", type=int, help="hard negatives per question (explicit ones first, then mined)")
    p.add_argument("--negatives_range_min", type=int, default=DEFAULTS.negatives_range_min,
                   help="skip this many top-ranked candidates")
    p.add_argument("--negatives_range_max", type=int, default=DEFAULTS.negatives_range_max,
                   help="consider candidates up to this rank")
    p.add_argument("--negatives_from", choices=NEGATIVE_SOURCES, default=DEFAULTS.negatives_from,
                   help="rank mining candidates with the base model, or with BM25 (DPR-style lexical negatives)")
    p.add_argument("--negatives_margin", type=float, default=DEFAULTS.negatives_margin,
                   help="skip candidates scoring above (1 - margin) × the positive's score (likely false negatives)")
    p.add_argument("--no_instructions", action="store_true", help="no query instruction (bge preset)")
    p.add_argument("--query_instruction", help=f"query instruction (bge default: {BGE_QUERY_INSTRUCTION!r})")
    p.add_argument("--loss", choices=LOSSES, default=DEFAULTS.loss)
    p.add_argument("--mini_batch_size", type=int, default=DEFAULTS.mini_batch_size, help="with --loss cached_mnrl")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--max_train_samples", type=int,
                   help="train on a seeded sample of this many pairs of the train split (the held-out split is "
                        "kept whole): a quick, comparable run on a large file")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--test_only", action="store_true",
                   help="evaluate the model in --output_dir on --data_path (default: its held-out split)")
    p.add_argument("--compare", action="store_true", help="base vs fine-tuned side by side")
    p.add_argument("--samples", type=int, default=3, help="sample questions shown by --test_only")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    output_dir = args.output_dir or PRESETS[args.preset].output_dir
    try:
        if args.test_only or args.compare:
            from training.pipeline import test_saved_model

            test_saved_model(output_dir, args.data_path, args.model_name, args.samples if args.test_only else 0,
                             compare=args.compare)
            return 0
        if not args.data_path:
            parser.error("--data_path is required for training")
        config = _training_config(args)
        data = load_qa_data(args.data_path)  # validate before anything heavy is imported or written
        from training.pipeline import run_training

        run_training(config, data)
        return 0
    except (DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


def _training_config(args) -> TrainingConfig:
    """The preset's config with every flag the user gave (an unset flag is ``None`` and keeps the preset's)."""
    fields = ("model_name", "output_dir", "epochs", "batch_size", "learning_rate", "warmup_steps", "max_seq_length",
              "train_split", "num_negatives", "pooling_mode", "query_instruction", "loss", "mini_batch_size", "seed",
              "negatives_range_min", "negatives_range_max", "negatives_margin", "negatives_from", "max_train_samples")
    overrides = {name: getattr(args, name) for name in fields}
    if args.no_instructions:
        overrides["query_instruction"] = ""
    config = preset_config(args.preset, **overrides, hard_negatives=not args.no_hard_negatives, resume=args.resume)
    config.check()
    return config
