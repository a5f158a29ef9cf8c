"""Dynamic int8 quantisation configured for the CPU that will serve the model.

optimum's ``AutoQuantizationConfig`` preset per instruction set (avx512_vnni: u8 activations x s8
weights for VPDPBUSD), with avx2 changed after measuring (see :func:`_preset`). The *fused* graph
(``onnx-optimized``) is quantised, so fused Attention becomes one QAttention kernel.

Example::

    >>> from export.quantize import detect_int8_target
    >>> detect_int8_target(flags={"avx2", "fma"}, machine="x86_64")
    'avx2'
    >>> detect_int8_target(flags={"avx512f", "avx512bw", "avx512_vnni"}, machine="x86_64")
    'avx512_vnni'
"""

from __future__ import annotations

import platform
from pathlib import Path

import onnx

from export.errors import ExportError

INT8_TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        lines = Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect_int8_target(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The best :data:`INT8_TARGETS` entry for this CPU (or for the given flags and machine)."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if {"avx512_vnni", "avx512vnni"} & flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    raise ExportError(f"no int8 target for this CPU ({machine}, no AVX2); pass --int8_target")


def quantize_int8(source: Path, target: Path, int8_target: str, per_channel: bool, external_data: bool,
                  operators: list[str] | None = None, fp32_layers: int = 1) -> dict:
    """Write the dynamically quantised ``source`` to ``target``; returns the settings for the manifest.

    ``operators``: the op types to quantise (None: every type onnxruntime can quantise dynamically).
    ``fp32_layers``: the first transformer layers stay fp32 (they are the most sensitive: on MiniLM, keeping
    layer 0 raised the mean cosine to torch from 0.987 to 0.993 for 10% of the speed-up).

    The settings are optimum's preset for ``int8_target``, except avx2 (see :func:`_preset`); the call is
    onnxruntime's ``quantize_dynamic`` because optimum's ``ORTQuantizer`` cannot pass ``DefaultTensorType``,
    without which quantising the fused graph fails (shape inference has no type for contrib-op outputs).
    """
    from onnxruntime.quantization import quantize_dynamic

    config = _preset(int8_target, per_channel, operators)
    operators = [getattr(op, "value", op) for op in config.operators_to_quantize]
    excluded = first_layer_nodes(source, fp32_layers)
    quantize_dynamic(
        source, target, op_types_to_quantize=operators, per_channel=config.per_channel,
        reduce_range=config.reduce_range, weight_type=config.weights_dtype, nodes_to_exclude=excluded,
        use_external_data_format=external_data,
        extra_options={
            "WeightSymmetric": config.weights_symmetric,
            "ActivationSymmetric": config.activations_symmetric,
            "DefaultTensorType": onnx.TensorProto.FLOAT,
        },
    )
    return {
        # Activation scales are computed at run time over each forward pass: no calibration data; batch-invariant
        # only one sequence per pass (export.runtime.runs_per_sequence), measured in docs/benchmarks.md.
        "mode": "dynamic",
        "activation_scales": "per forward pass (one sequence per pass when served)",
        "calibration": None,
        "target": int8_target,
        "per_channel": config.per_channel,
        "weights": config.weights_dtype.name,
        "activations": config.activations_dtype.name,
        "reduce_range": config.reduce_range,
        "operators": operators,
        "fp32_nodes": excluded,
    }


def first_layer_nodes(path: Path, layers: int) -> list[str]:
    """Names of the nodes of the first ``layers`` transformer layers.

    In a fused graph a layer starts at its fused attention node (the graph is in topological order, so it
    runs until the next one); an unfused graph (models over 2 GB are not fused) keeps torch's module
    paths in node names (``.../encoder/layer.0/attention/...``).
    """
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    if not any(node.op_type in ("Attention", "MultiHeadAttention") for node in nodes):
        prefixes = tuple(f"layer.{i}/" for i in range(layers))
        return [node.name for node in nodes if any(p in node.name for p in prefixes)]
    layer, names = -1, []
    for node in nodes:
        if node.op_type in ("Attention", "MultiHeadAttention"):
            layer += 1
        if 0 <= layer < layers:
            names.append(node.name)
    return names


def _preset(int8_target: str, per_channel: bool, operators: list[str] | None):
    from onnxruntime.quantization import QuantType
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if int8_target not in INT8_TARGETS:
        raise ExportError(f"unknown int8 target {int8_target!r}; choose from {', '.join(INT8_TARGETS)}")
    config = getattr(AutoQuantizationConfig, int8_target)(
        is_static=False, per_channel=per_channel, operators_to_quantize=operators
    )
    if int8_target == "avx2":
        # Measured on AMD EPYC (AVX2, no VNNI), MiniLM, 1 thread: optimum's u8 weights gave 1.30x fp32,
        # s8 weights 1.59x. s8 x u8 on AVX2 sums pairs in saturating int16 (VPMADDUBSW): 7-bit weights
        # (reduce_range) rule the overflow out.
        config.weights_dtype, config.reduce_range = QuantType.QInt8, True
    return config
