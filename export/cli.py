"""``python -m export``: publish a model as a bundle, and manage the registry.

Usage::

    python -m export --model_dir DIR --registry REG --name NAME [--eval_data FILE ...]
                     [--variants onnx,onnx-optimized,int8,fp16] [--int8_target auto|avx2|...] [--force]
    python -m export list     --registry REG [--name NAME]
    python -m export show     --registry REG --name NAME [--version V]
    python -m export verify   BUNDLE_DIR
    python -m export promote  --registry REG --name NAME --version V
    python -m export rollback --registry REG --name NAME
    python -m export retrain  ...   the same as ``python -m retrain ...`` (:mod:`retrain.cli`)

A publish prints what the gates decided and the hybrid search's fusion α (:mod:`export.fusion`), then the new
version folder on its last line. User errors (bad
input, failed gate, tampered bundle) print one ``error: ...`` line on stderr and exit 1; usage errors exit 2.

Example::

    >>> from export.cli import main
    >>> main(["verify", "/nonexistent/bundle"])  # stderr: error: /nonexistent/bundle/manifest.json: missing, ...
    1
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Sequence

from export import fusion, registry
from export.bundle import (
    MANIFEST,
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
    from torch.jit import TracerWarning

    from export.pipeline import DEFAULT_VARIANTS, export_model  # torch: only for a publish
    from export.quantize import INT8_TARGETS
    from training.analyzer import ANALYZER_NAMES
    from training.models import resolve_model_path

    # Noise a user can do nothing about: the tracer's warning about a shape check in sentence-transformers' Pooling
    # (the parity gate compares the traced graph with PyTorch), and onnxruntime's advice to pre-process before
    # quantising (what it quantises is the fused, shape-inferred graph: pre-processed already).
    warnings.filterwarnings("ignore", category=TracerWarning)
    logging.getLogger().addFilter(lambda record: "pre-processing before quantization" not in record.getMessage())

    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a sentence-transformers model to ONNX and publish it as a bundle. "
        f"Other commands: {', '.join(COMMANDS)}.",
    )
    parser.add_argument("--model_dir", required=True,
                        help="model folder, or a hub name: sentence-transformers/all-MiniLM-L6-v2 loads offline from "
                        "the bundled package, as in python -m training")
    parser.add_argument("--registry", required=True, help="registry folder")
    parser.add_argument("--name", required=True, help="bundle name, e.g. qa-minilm")
    parser.add_argument("--eval_data", nargs="+", default=[], help="QA data for the quality gate")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated: onnx,onnx-optimized,int8,fp16 (onnx is required)")
    parser.add_argument("--int8_target", default="auto", choices=("auto", *INT8_TARGETS),
                        help="CPU instruction set the int8 file is configured for (auto: this CPU)")
    parser.add_argument("--per_channel", action=argparse.BooleanOptionalAction, default=True,
                        help="per-channel int8 weight scales")
    parser.add_argument("--int8_fp32_layers", type=fp32_layers_option, default="auto",
                        help="keep the first N transformer layers fp32 in the int8 file (accuracy vs speed); auto: "
                        "the fewest that pass the gates, from 0 with --eval_data (the quality gate judges), else 1")
    parser.add_argument("--max_seq_length", type=int, default=None, help="override the model's max_seq_length")
    parser.add_argument("--include_torch", action="store_true", help="also ship the PyTorch model folder")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the gates")
    parser.add_argument("--force", action="store_true", help="publish even when a gate fails (recorded)")
    parser.add_argument("--analyzer", choices=ANALYZER_NAMES, default=None,
                        help="lexical analyzer of the hybrid search whose α is chosen on --eval_data when the model "
                        "folder's metrics.json records none (default: training's)")
    args = parser.parse_args(argv)
    path = export_model(
        resolve_model_path(args.model_dir), args.registry, args.name,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        eval_data=args.eval_data, int8_target=args.int8_target, per_channel=args.per_channel,
        fp32_layers=args.int8_fp32_layers,
        max_seq_length=args.max_seq_length, include_torch=args.include_torch, force=args.force,
        threads=args.threads, analyzer=args.analyzer,
    )
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    print(gate_verdict(manifest))
    print(fusion.describe(manifest.get("fusion")))
    print(path)
    return 0


def fp32_layers_option(value: str) -> int | str:
    """``--int8_fp32_layers``: ``auto`` or a whole number."""
    if value == "auto":
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"auto or a whole number >= 0, got {value!r}")


def gate_verdict(manifest: dict) -> str:
    """One line: which gates a published bundle passed, or which failed and were forced."""
    forced = manifest.get("gate_failures_forced") or []
    if forced:
        return "gates FAILED, published anyway (--force): " + "; ".join(forced)
    parity = manifest.get("parity")
    if not parity:  # written by other tools than export_model
        return "no gate results in the manifest"
    passed = [f"parity ({', '.join(f'{v} {c:.4f}' for v, c in parity['mean_cosine'].items())} mean cosine to "
              f"PyTorch)"]
    quality = manifest.get("quality")
    if quality:
        scores = {v: m[quality["metric"]] for v, m in quality.items() if isinstance(m, dict) and quality["metric"] in m}
        passed.append(f"quality ({quality['metric']} {', '.join(f'{v} {s:.4f}' for v, s in scores.items())}, "
                      f"max drop {quality['max_drop']:.4f})")
    return "gates passed: " + " and ".join(passed) + ("" if quality else "; quality not checked (no --eval_data)")


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
        print(f"ok {found.name} {found.version}: {len(found.manifest['files'])} files verified; "
              f"{gate_verdict(found.manifest)}")
    elif args.command == "promote":
        print(registry.set_latest(args.registry, args.name, args.version).path)
    else:
        print(registry.rollback(args.registry, args.name).path)
    return 0


def _retrain(argv: list[str]) -> int:
    # Retraining is its own stage above export (retrain/): run it as a program, never import it, so export
    # keeps depending on nothing above it. Same flags, output and exit status as `python -m retrain`.
    return subprocess.run([sys.executable, "-m", RETRAIN, *argv], check=False).returncode


def _latest_or_none(root: str, name: str) -> str | None:
    try:
        return latest_version(root, name)
    except BundleError:
        return None
