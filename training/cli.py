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

from training.data import DataError, load_qa_data
from training.presets import BGE_QUERY_INSTRUCTION, DEFAULT_PRESET, PRESETS

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
    p.add_argument("--pooling_mode", choices=("mean", "cls", "max", "lasttoken"))
    p.add_argument("--no_hard_negatives", action="store_true", help="in-batch negatives only")
    p.add_argument("--num_negatives", type=int, help="hard negatives per question (explicit ones first, then mined)")
    p.add_argument("--negatives_range_min", type=int, default=0, help="skip this many top-ranked candidates")
    p.add_argument("--negatives_range_max", type=int, default=100, help="consider candidates up to this rank")
    p.add_argument("--negatives_margin", type=float, default=0.05,
                   help="skip candidates scoring above (1 - margin) × the positive's score (likely false negatives)")
    p.add_argument("--no_instructions", action="store_true", help="no query instruction (bge preset)")
    p.add_argument("--query_instruction", help=f"query instruction (bge default: {BGE_QUERY_INSTRUCTION!r})")
    p.add_argument("--loss", choices=("mnrl", "cached_mnrl"), default="mnrl")
    p.add_argument("--mini_batch_size", type=int, default=32, help="with --loss cached_mnrl")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--test_only", action="store_true",
                   help="evaluate the model in --output_dir on --data_path (default: its held-out split)")
    p.add_argument("--compare", action="store_true", help="base vs fine-tuned side by side")
    p.add_argument("--samples", type=int, default=3, help="sample questions shown by --test_only")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    output_dir = args.output_dir or preset.output_dir
    try:
        if args.test_only or args.compare:
            from training.pipeline import test_saved_model

            test_saved_model(output_dir, args.data_path, args.model_name, args.samples if args.test_only else 0,
                             compare=args.compare)
            return 0
        if not args.data_path:
            parser.error("--data_path is required for training")
        config = _run_config(args, preset, output_dir)
        data = load_qa_data(args.data_path)  # validate before anything heavy is imported or written
        from training.pipeline import train

        train(config, data)
        return 0
    except (DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


def _run_config(args, preset, output_dir: str):
    from training.pipeline import RunConfig

    def pick(name):
        value = getattr(args, name)
        return getattr(preset, name) if value is None else value

    if args.no_instructions or not preset.use_instructions and args.query_instruction is None:
        instruction = ""
    else:
        instruction = args.query_instruction if args.query_instruction is not None else BGE_QUERY_INSTRUCTION
    config = RunConfig(
        preset=preset.name,
        model_name=pick("model_name"),
        output_dir=output_dir,
        epochs=pick("epochs"),
        batch_size=pick("batch_size"),
        learning_rate=pick("learning_rate"),
        warmup_steps=pick("warmup_steps"),
        max_seq_length=pick("max_seq_length"),
        train_split=pick("train_split"),
        hard_negatives=not args.no_hard_negatives,
        num_negatives=pick("num_negatives"),
        pooling_mode=pick("pooling_mode"),
        query_instruction=instruction,
        loss=args.loss,
        mini_batch_size=args.mini_batch_size,
        seed=args.seed,
        negatives_range_min=args.negatives_range_min,
        negatives_range_max=args.negatives_range_max,
        negatives_margin=args.negatives_margin,
        resume=args.resume,
    )
    _check(config)
    return config


def _check(config) -> None:
    # Checked here, before the model loads: FAISS and the loss fail later with bare assertions.
    positive = {"epochs": config.epochs, "batch_size": config.batch_size, "max_seq_length": config.max_seq_length,
                "negatives_range_max": config.negatives_range_max, "mini_batch_size": config.mini_batch_size}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if not 0 <= config.negatives_range_min < config.negatives_range_max:
        raise ValueError(f"--negatives_range_min must be at least 0 and below --negatives_range_max "
                         f"{config.negatives_range_max}, got {config.negatives_range_min}")
    if not 0.0 <= config.negatives_margin < 1.0:  # also refuses nan
        raise ValueError(f"--negatives_margin must be in [0, 1), got {config.negatives_margin}")
    if config.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {config.learning_rate}")
    if not 0.0 < config.train_split <= 1.0:
        raise ValueError(f"--train_split must be in (0, 1], got {config.train_split}")
    if config.num_negatives < 0 or config.warmup_steps < 0:
        raise ValueError("--num_negatives and --warmup_steps must not be negative")
