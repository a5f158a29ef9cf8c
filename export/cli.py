"""``python -m export``: publish a model as a bundle, and manage the registry.

Usage::

    python -m export --model_dir DIR --registry REG --name NAME [--eval_data FILE ...]
                     [--variants onnx,onnx-optimized,int8,fp16] [--int8_target auto|avx2|...] [--force]
    python -m export list     --registry REG [--name NAME]
    python -m export show     --registry REG --name NAME [--version V]
    python -m export verify   BUNDLE_DIR
    python -m export promote  --registry REG --name NAME --version V
    python -m export rollback --registry REG --name NAME

A publish prints the new version folder on its last line. User errors (bad input, failed gate,
tampered bundle) print one ``error: ...`` line on stderr and exit 1; usage errors exit 2.

Example::

    >>> from export.cli import main
    >>> main(["verify", "/nonexistent/bundle"])  # stderr: error: /nonexistent/bundle/manifest.json: missing, ...
    1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from export import registry
from export.bundle import (
    BundleError,
    latest_version,
    list_names,
    list_versions,
    open_bundle,
    validate_name,
    verify_bundle,
)
from export.errors import ExportError

COMMANDS = ("list", "show", "verify", "promote", "rollback")
RETRAIN = "retrain"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return _manage(argv)
        if argv and argv[0] == RETRAIN:
            return _retrain(argv[1:])
        return _publish(argv)
    except (BundleError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _publish(argv: list[str]) -> int:
    from export.pipeline import DEFAULT_VARIANTS, export_model  # torch: only for a publish
    from export.quantize import INT8_TARGETS

    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a sentence-transformers model to ONNX and publish it as a bundle. "
        f"Other commands: {', '.join(COMMANDS)}.",
    )
    parser.add_argument("--model_dir", required=True, help="model folder (or hub name available offline)")
    parser.add_argument("--registry", required=True, help="registry folder")
    parser.add_argument("--name", required=True, help="bundle name, e.g. qa-minilm")
    parser.add_argument("--eval_data", nargs="+", default=[], help="QA data for the quality gate")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated: onnx,onnx-optimized,int8,fp16 (onnx is required)")
    parser.add_argument("--int8_target", default="auto", choices=("auto", *INT8_TARGETS),
                        help="CPU instruction set the int8 file is configured for (auto: this CPU)")
    parser.add_argument("--per_channel", action=argparse.BooleanOptionalAction, default=True,
                        help="per-channel int8 weight scales")
    parser.add_argument("--int8_fp32_layers", type=int, default=1,
                        help="keep the first N transformer layers fp32 in the int8 file (accuracy vs speed)")
    parser.add_argument("--max_seq_length", type=int, default=None, help="override the model's max_seq_length")
    parser.add_argument("--include_torch", action="store_true", help="also ship the PyTorch model folder")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the gates")
    parser.add_argument("--force", action="store_true", help="publish even when a gate fails (recorded)")
    args = parser.parse_args(argv)
    path = export_model(
        args.model_dir, args.registry, args.name,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        eval_data=args.eval_data, int8_target=args.int8_target, per_channel=args.per_channel,
        fp32_layers=args.int8_fp32_layers,
        max_seq_length=args.max_seq_length, include_torch=args.include_torch, force=args.force,
        threads=args.threads,
    )
    print(path)
    return 0


def _manage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m export")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="names and versions; * marks LATEST")
    listing.add_argument("--registry", required=True)
    listing.add_argument("--name")
    show = commands.add_parser("show", help="print a verified bundle's manifest")
    show.add_argument("--registry", required=True)
    show.add_argument("--name", required=True)
    show.add_argument("--version")
    verify = commands.add_parser("verify", help="check every checksum of a bundle folder")
    verify.add_argument("bundle_dir")
    promote = commands.add_parser("promote", help="point LATEST at a version (after verifying it)")
    promote.add_argument("--registry", required=True)
    promote.add_argument("--name", required=True)
    promote.add_argument("--version", required=True)
    rollback = commands.add_parser("rollback", help="point LATEST back at the version promoted before it")
    rollback.add_argument("--registry", required=True)
    rollback.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    if args.command == "list":
        for name in [validate_name(args.name)] if args.name else list_names(args.registry):
            latest = _latest_or_none(args.registry, name)
            for version in list_versions(args.registry, name):
                print(f"{name}\t{version}" + ("\t*" if version == latest else ""))
    elif args.command == "show":
        found = open_bundle(args.registry, args.name, args.version)
        print(json.dumps(found.manifest, indent=2, ensure_ascii=False))
    elif args.command == "verify":
        found = verify_bundle(args.bundle_dir)
        print(f"ok {found.name} {found.version}: {len(found.manifest['files'])} files verified")
    elif args.command == "promote":
        print(registry.set_latest(args.registry, args.name, args.version).path)
    else:
        print(registry.rollback(args.registry, args.name).path)
    return 0


def _retrain(argv: list[str]) -> int:
    from export.retrain import RetrainConfig, retrain  # torch: only for a retrain

    parser = argparse.ArgumentParser(
        prog="python -m export retrain",
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
    parser.add_argument("--from", dest="start", choices=("current", "base"), default="current",
                        help="continue from the published model's weights, or start over from the base model")
    parser.add_argument("--base_model", help="base model (default: the published bundle's)")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="MRR@10 the candidate may lose against the current model and still be promoted")
    parser.add_argument("--variants", default="onnx,onnx-optimized,int8", help="variants to export")
    parser.add_argument("--variant", default="int8", help="variant the gate evaluates (what the service serves)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--warmup_steps", type=int, default=10)
    parser.add_argument("--max_seq_length", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--report", help="also write the decision report (JSON) here")
    args = vars(parser.parse_args(argv))
    report_path = args.pop("report")
    args["variants"] = tuple(args["variants"].split(","))
    report = retrain(RetrainConfig(**args))
    if report_path:
        Path(report_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # A rejection is a normal outcome (exit 0): the report says what was decided and why.
    print(open_bundle(args["registry"], args["name"], report["candidate"]).path)
    return 0


def _latest_or_none(registry: str, name: str) -> str | None:
    try:
        return latest_version(registry, name)
    except BundleError:
        return None
