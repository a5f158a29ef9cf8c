"""``python -m retrain`` (also ``python -m export retrain``): what the retraining CronJob runs.

Usage::

    python -m retrain --registry REG --name NAME --data FILE ... --eval_data FILE ...
                      [--feedback FILE ...] [--feedback_url URL] [--from current|base] [--base_model M]
                      [--tolerance 0.01] [--variants onnx,onnx-optimized,int8] [--variant int8] [--report FILE]

The last line printed is the candidate's version folder, promoted or not: a rejection is a normal outcome
(exit 0) and the report says what was decided and why. User errors (bad data, unreachable feedback URL,
failed export gate) print one ``error: ...`` line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path

from export.bundle import BundleError, open_bundle
from export.errors import ExportError
from retrain.pipeline import RetrainConfig, RetrainError, retrain
from training.analyzer import ANALYZER_NAMES

# The flags' defaults are RetrainConfig's (which takes its training defaults from training.config).
DEFAULTS = argparse.Namespace(**{f.name: f.default for f in fields(RetrainConfig) if f.default is not MISSING})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrain",
        description="Train a candidate on data + feedback, export it, and promote it only if it passes the gate.",
    )
    parser.add_argument("--registry", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", nargs="+", required=True,
                        help="training data files or folders (the original Q&A data)")
    parser.add_argument("--feedback", nargs="*", default=[],
                        help="feedback exported in the training formats: files or folders; empty ones are skipped")
    parser.add_argument("--feedback_url",
                        help="fetch feedback from a running service's GET /feedback/export "
                             "(admin key from QAEMBED_ADMIN_API_KEY)")
    parser.add_argument("--eval_data", nargs="+", required=True,
                        help="the fixed evaluation set of the gate (files or folders)")
    parser.add_argument("--from", dest="start", choices=("current", "base"), default=DEFAULTS.start,
                        help="continue from the published model's weights, or start over from the base model")
    parser.add_argument("--base_model", help="base model (default: the published bundle's)")
    parser.add_argument("--tolerance", type=float, default=DEFAULTS.tolerance,
                        help="MRR@10 the candidate may lose against the current model and still be promoted")
    parser.add_argument("--variants", default=",".join(DEFAULTS.variants), help="variants to export")
    parser.add_argument("--variant", default=DEFAULTS.variant,
                        help="variant the gate evaluates (what the service serves)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--learning_rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--warmup_steps", type=int, default=DEFAULTS.warmup_steps)
    parser.add_argument("--max_seq_length", type=int)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--analyzer", choices=ANALYZER_NAMES,
                        help="lexical analyzer the hybrid search's α is chosen with on --eval_data "
                             "(recorded in the bundle manifest; default: training's)")
    parser.add_argument("--report", help="also write the decision report (JSON) here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    report_path = args.pop("report")
    args["variants"] = tuple(args["variants"].split(","))
    try:
        report = retrain(RetrainConfig(**args))
        if report_path:
            Path(report_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(open_bundle(args["registry"], args["name"], report["candidate"]).path)
    except (BundleError, ExportError, RetrainError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
