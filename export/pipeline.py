"""Export a sentence-transformers model, gate it and publish it as the next bundle version.

Steps: ONNX fp32 (pooling + normalisation in the graph), tokenizer and PyTorch reference embeddings,
after which the PyTorch model is released → onnxruntime fusions (``onnx-optimized``) → dynamic int8 of
the fused graph → optional fp16; then the parity and batch-invariance gates on real texts and the quality
gate when eval data is given, one variant's session at a time (int8 quantised again with more fp32 layers
while it fails one, ``fp32_layers="auto"``), and an atomic publish. Everything is built
in the registry's staging folder and discarded when a step or a gate fails (unless ``force``).

Example::

    >>> from export.pipeline import export_model                               # doctest: +SKIP
    >>> export_model("path/to/model", "registry", "minilm", variants=["onnx", "int8"])  # doctest: +SKIP
    PosixPath('registry/minilm/v0001')
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from export import fusion as fusion_alpha
from export import gates
from export.bundle import validate_name
from export.errors import ExportError
from export.quantize import detect_int8_target, quantize_int8
from export.registry import discard_staging, new_staging_dir, publish
from export.runtime import OnnxEncoder, runs_per_sequence

INVARIANCE_TEXTS = 24  # the first parity texts (every built-in sample: short, long, truncated)
# --int8_fp32_layers auto: the fp32 layers tried, fewest first, until int8 passes every gate that runs. Without eval
# data only parity judges, which cannot see a retrieval loss: the sensitive first layer then stays fp32.
FP32_LAYERS_AUTO = {"with_eval_data": (0, 1, 2), "without": (1, 2)}

DEFAULT_VARIANTS = ("onnx", "onnx-optimized", "int8")
FILES = {"onnx": "model.onnx", "onnx-optimized": "model_optimized.onnx", "int8": "model_int8.onnx",
         "fp16": "model_fp16.onnx"}


def export_model(
    model_dir: str,
    registry: str | Path,
    name: str,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    eval_data: Sequence[str | Path] = (),
    int8_target: str = "auto",
    per_channel: bool = True,
    fp32_layers: int | str = "auto",
    max_seq_length: int | None = None,
    include_torch: bool = False,
    force: bool = False,
    threads: int | None = None,
    promote: bool = True,
    analyzer: str | None = None,
    fusion_from: str = "training",
    log: Callable[[str], None] = print,
) -> Path:
    """Export, gate and publish; returns the new version folder. Raises :class:`ExportError` when a
    gate fails (and ``force`` is False) or an input is bad.

    The manifest's ``fusion`` (the hybrid search's α, :mod:`export.fusion`) is the model folder's metrics.json
    ``fusion``, else chosen on ``eval_data`` with the exported model (BM25 side: the ``analyzer`` named, default
    training's), else absent. ``fusion_from="eval_data"`` prefers ``eval_data`` when given (retrain: its fixed
    evaluation set, larger than the training run's held-out share).

    ``fp32_layers``: how many first transformer layers int8 keeps in fp32; ``"auto"`` tries
    :data:`FP32_LAYERS_AUTO` in order and keeps the first whose int8 passes the gates (each try is recorded in
    the manifest's ``quantization.fp32_layers_tried``), so int8 is as fast as the eval data allows."""
    validate_name(name)
    unknown = set(variants) - set(FILES)
    if unknown or "onnx" not in variants:
        raise ExportError(f"--variants must include onnx and come from {', '.join(FILES)} (got {','.join(variants)})")
    records = _load_eval_data(eval_data)
    if fusion_from not in ("training", "eval_data"):
        raise ExportError(f"fusion_from must be training or eval_data, got {fusion_from!r}")
    trained_fusion = None if fusion_from == "eval_data" and records else fusion_alpha.from_training(model_dir)
    target = detect_int8_target() if int8_target == "auto" else int8_target
    ladder = _fp32_layers_ladder(fp32_layers, bool(records))

    # torch and sentence-transformers load only once the inputs are known to be valid (a fast refusal).
    from export.onnx_export import (
        attention_shape,
        export_fp32,
        load_for_export,
        model_facts,
        save_tokenizer,
        save_torch_weights,
    )

    model = load_for_export(model_dir, max_seq_length)
    facts = model_facts(model, model_dir)
    staging = new_staging_dir(registry, name)
    try:
        started = time.perf_counter()
        export_fp32(model, staging / FILES["onnx"])
        log(f"onnx fp32 exported in {time.perf_counter() - started:.1f}s")
        facts["tokenizer"] = save_tokenizer(model, staging)
        if include_torch:
            save_torch_weights(model, staging / "torch")
            facts["torch"] = "torch"
        texts = gates.parity_texts(records)
        # prompt="": the texts exactly as the graph gets them, even if the model sets a default_prompt_name.
        reference = model.encode(texts, prompt="", normalize_embeddings=True, convert_to_numpy=True)
        shape = attention_shape(model)
        # Everything that needs PyTorch is done: release the weights before quantisation and the gates take
        # their own copies (with convert_fp16's file-based path, a bge-m3-sized export peaks at 8.9 GB; 20.3 GB
        # before both changes, docs/benchmarks/export_large.md).
        del model
        gc.collect()
        built, quantize = _build_derived(staging, variants, shape, target, per_channel, ladder[0], log)
        variants = [v for v in variants if v == "onnx" or (staging / FILES[v]).exists()]
        facts["variants"] = {v: {"file": FILES[v], **built.get(v, {})} for v in variants}
        choose = None if trained_fusion or not records else (
            lambda encode: fusion_alpha.choose_on_eval_data(records, eval_data, encode, analyzer))
        retry = (quantize, ladder[1:]) if quantize and isinstance(fp32_layers, str) else None
        facts |= _run_gates(staging, variants, records, texts, reference, facts, threads, force, log, choose,
                            retry_int8=retry)
        if trained_fusion:
            facts["fusion"] = trained_fusion
        log(fusion_alpha.describe(facts.get("fusion")))
        for helper in set(FILES) - set(variants):
            for file in staging.glob(FILES[helper] + "*"):
                file.unlink()
        return publish(staging, facts, promote=promote)
    finally:
        discard_staging(staging)  # a no-op once published (the folder was renamed)


def _fp32_layers_ladder(fp32_layers: int | str, has_eval_data: bool) -> tuple[int, ...]:
    if fp32_layers == "auto":
        return FP32_LAYERS_AUTO["with_eval_data" if has_eval_data else "without"]
    if isinstance(fp32_layers, int) and not isinstance(fp32_layers, bool) and fp32_layers >= 0:
        return (fp32_layers,)
    raise ExportError(f"--int8_fp32_layers must be auto or a whole number >= 0, got {fp32_layers!r}")


def _build_derived(staging: Path, variants, shape: tuple[int, int], target: str, per_channel: bool,
                   fp32_layers: int, log) -> tuple[dict[str, dict], Callable[[int], dict] | None]:
    """Write the variants derived from ``model.onnx``; returns per-variant extras for the manifest and, when
    int8 was built, ``quantize(fp32_layers)``, which rewrites the int8 file and returns its new extras.
    ``shape``: (attention heads, hidden size), which the fusions need."""
    from export.onnx_export import convert_fp16, optimize

    built: dict[str, dict] = {"onnx": {}}
    # onnxruntime's Python fusions hold several copies of the weights: a bge-m3-sized model (2.3 GB) was
    # OOM-killed at 22.8 GB on a 24 GB machine. Over 2 GB (external data) int8 and fp16 come from the plain
    # graph, which the session still fuses at load time; onnx-optimized is not built.
    large = (staging / (FILES["onnx"] + ".data")).exists()
    derived = {"onnx-optimized", "int8", "fp16"} & set(variants)
    if derived and large:
        log("model over 2 GB: no Python fusions (they would need ~10x the weights in memory): onnx-optimized is "
            "not built, int8 and fp16 are converted from the unfused graph")
    elif derived:
        fused = optimize(staging / FILES["onnx"], staging / FILES["onnx-optimized"], *shape)
        built["onnx-optimized"] = {"fused_operators": fused}
        log(f"fused operators: {fused}")
    source = "onnx" if large else "onnx-optimized"
    quantize = None
    if "int8" in variants:
        def quantize(layers: int) -> dict:
            settings = quantize_int8(staging / FILES[source], staging / FILES["int8"], target, per_channel,
                                     large, fp32_layers=layers)
            log(f"int8 quantised for {target} from {source} (per_channel={per_channel}, {layers} fp32 layers)")
            return {"quantization": {**settings, "source_variant": source, "fp32_layers": layers},
                    "external_data": (staging / (FILES["int8"] + ".data")).exists()}

        built["int8"] = quantize(fp32_layers)
    if "fp16" in variants:
        convert_fp16(staging / FILES[source], staging / FILES["fp16"], fused=not large)
        log(f"fp16 converted from {source}")
    for variant, extras in built.items():
        extras["external_data"] = (staging / (FILES[variant] + ".data")).exists()
    return built, quantize


def _run_gates(staging: Path, variants, records, texts, reference, facts: dict, threads, force: bool,
               log, choose_fusion: Callable | None = None,
               retry_int8: tuple[Callable[[int], dict], Sequence[int]] | None = None) -> dict:
    """Parity of every variant to the PyTorch ``reference`` of ``texts`` and its batch invariance; quality of
    fp32 and int8 on the eval ``records``. Each variant's session is opened, measured and dropped before the
    next one. The encoder is the runtime the service runs (its tokenizer, session and post step), run per
    sequence where the variant's manifest entry says so, exactly as the service will run it.

    ``retry_int8 = (quantize, fp32_layers)``: while int8 fails a gate, it is quantised again with the next
    ``fp32_layers`` and measured again (``facts["variants"]["int8"]`` updated, every try recorded there).
    ``choose_fusion(encode)``, when given, chooses the fusion α with the variant the service serves on a CPU
    (int8 when built, else fp32 onnx); its entry becomes ``fusion``."""
    queries = len({r.question for r in records})
    measured = {variant: _measure(staging, variant, facts, records, texts, reference, threads)
                for variant in variants}  # fp16 too: it is meant for GPUs, but onnxruntime's CPU provider runs it
    if retry_int8 and "int8" in variants:
        quantize, next_layers = retry_int8
        tried = []
        for layers in (*next_layers, None):
            failures = _failures(measured, queries, ["int8"])
            int8 = facts["variants"]["int8"]
            quality = measured["int8"].get("quality", {}).get(gates.QUALITY_METRIC)
            tried.append({"fp32_layers": int8["quantization"]["fp32_layers"],
                          "mean_cosine": measured["int8"]["mean_cosine"],
                          **({gates.QUALITY_METRIC: quality} if quality is not None else {}), "failures": failures})
            if not failures or layers is None:
                break
            log(f"int8 with {tried[-1]['fp32_layers']} fp32 layers failed a gate ({'; '.join(failures)}): "
                f"trying {layers}")
            facts["variants"]["int8"] = {**int8, **quantize(layers)}
            measured["int8"] = _measure(staging, "int8", facts, records, texts, reference, threads)
        facts["variants"]["int8"]["quantization"]["fp32_layers_tried"] = tried
        if tried[-1]["failures"] and len(tried) > 1:
            counts = ", ".join(str(t["fp32_layers"]) for t in tried)
            log(f"int8 failed a gate with every fp32 layer count tried ({counts})")

    mean_cosine = {v: m["mean_cosine"] for v, m in measured.items()}
    invariance = {v: m["invariance"] for v, m in measured.items()}
    result = {"parity": {"texts": len(texts), "mean_cosine": mean_cosine,
                         "minimum": {v: gates.PARITY_MIN[v] for v in mean_cosine}}}
    result["batch_invariance"] = {"texts": min(len(texts), INVARIANCE_TEXTS), "max_abs_diff": invariance,
                                  "maximum": gates.BATCH_INVARIANCE_MAX,
                                  "runs": {v: m["runs"] for v, m in measured.items()}}
    failures = _failures(measured, queries)
    log(f"parity (mean cosine to PyTorch): {mean_cosine}; batch invariance (max |Δ|): {invariance}")
    if records:
        quality = {v: m["quality"] for v, m in measured.items() if "quality" in m}
        result["quality"] = {"metric": gates.QUALITY_METRIC, "max_drop": gates.allowed_drop(queries),
                             "pairs": len(records), "questions": queries, "chunking": measured["onnx"]["chunking"],
                             **quality}
        log("quality: " + ", ".join(f"{v} {gates.QUALITY_METRIC}={m[gates.QUALITY_METRIC]}"
                                     for v, m in quality.items()))
    if failures and not force:
        raise ExportError("gate failed, not published (--force to publish anyway): " + "; ".join(failures))
    if failures:
        log("WARNING: publishing despite failed gates (--force): " + "; ".join(failures))
    result["gate_failures_forced"] = failures
    if choose_fusion:
        fusion_variant = "int8" if "int8" in variants else "onnx"
        encoder = _encoder(staging, fusion_variant, facts, threads)
        result["fusion"] = {**choose_fusion(encoder.encode), "variant": fusion_variant}
    return result


def _encoder(staging: Path, variant: str, facts: dict, threads) -> OnnxEncoder:
    """The runtime encoder of a staged variant, run as the service will run it."""
    return OnnxEncoder.from_files(staging / FILES[variant], staging / facts["tokenizer"], facts["max_seq_length"],
                                  threads, query_prompt=facts["query_prompt"],
                                  per_sequence=runs_per_sequence(variant, facts["variants"][variant]))


def _measure(staging: Path, variant: str, facts: dict, records, texts, reference, threads) -> dict:
    """One variant's gate measurements: parity, batch invariance, and quality (fp32 onnx and int8) on
    ``records``; its session is dropped before returning."""
    encoder = _encoder(staging, variant, facts, threads)
    measured = {
        "runs": "one sequence per pass" if encoder.session.per_sequence else "padded batches",
        "mean_cosine": gates.parity(reference, {variant: encoder.encode}, texts)[variant],
        "invariance": gates.batch_invariance(lambda batch, e=encoder: e.run(e.tokenizer.encode(batch)),
                                             texts[:INVARIANCE_TEXTS]),
    }
    if records and variant in ("onnx", "int8"):
        measured["quality"] = gates.quality(records, {variant: encoder.encode})[variant]
        measured["chunking"] = gates.quality_chunking(encoder.encode)
    del encoder
    gc.collect()
    return measured


def _failures(measured: dict[str, dict], queries: int, variants: Sequence[str] | None = None) -> list[str]:
    """The gates' failures over the ``measured`` variants (parity, then invariance, then quality); ``variants``:
    only theirs (int8's quality is judged against fp32 onnx's either way)."""
    judged = {v: m for v, m in measured.items() if variants is None or v in variants}
    return (gates.parity_failures({v: m["mean_cosine"] for v, m in judged.items()})
            + gates.invariance_failures({v: m["invariance"] for v, m in judged.items()})
            + gates.quality_failures({v: m["quality"] for v, m in measured.items() if "quality" in m}, queries))


def _load_eval_data(paths: Sequence[str | Path]):
    if not paths:
        return ()
    from training.data import DataError, load_qa_data

    try:
        return load_qa_data(list(paths)).records
    except DataError as error:
        raise ExportError(f"--eval_data: {error}") from None

