"""Dynamic int8 quantisation configured for the CPU that will serve the model.

optimum's ``AutoQuantizationConfig`` presets per instruction set are used as they are (avx512_vnni:
u8 activations x s8 weights for VPDPBUSD; avx2: u8 x u8, which avoids the saturating VPMADDUBSW
path of u8 x s8 on CPUs without VNNI). Quantise the *fused* graph (``onnx-optimized``): fused
Attention becomes one QAttention kernel instead of many small quantised MatMuls.

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


def quantize_int8(source: Path, target: Path, int8_target: str, per_channel: bool, external_data: bool) -> dict:
    """Write the dynamically quantised ``source`` to ``target``; returns the settings for the manifest.

    The settings are optimum's preset for ``int8_target``; the call is onnxruntime's ``quantize_dynamic``
    because optimum's ``ORTQuantizer`` cannot pass ``DefaultTensorType``, without which quantising the
    fused graph fails (shape inference gives no type for outputs of contrib ops such as Attention).
    """
    from onnxruntime.quantization import quantize_dynamic
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if int8_target not in INT8_TARGETS:
        raise ExportError(f"unknown int8 target {int8_target!r}; choose from {', '.join(INT8_TARGETS)}")
    config = getattr(AutoQuantizationConfig, int8_target)(is_static=False, per_channel=per_channel)
    operators = [getattr(op, "value", op) for op in config.operators_to_quantize]
    quantize_dynamic(
        source, target, op_types_to_quantize=operators, per_channel=config.per_channel,
        reduce_range=config.reduce_range, weight_type=config.weights_dtype,
        use_external_data_format=external_data,
        extra_options={
            "WeightSymmetric": config.weights_symmetric,
            "ActivationSymmetric": config.activations_symmetric,
            "DefaultTensorType": onnx.TensorProto.FLOAT,
        },
    )
    return {
        "target": int8_target,
        "per_channel": config.per_channel,
        "weights": config.weights_dtype.name,
        "activations": config.activations_dtype.name,
        "reduce_range": config.reduce_range,
        "operators": operators,
        "source_variant": "onnx-optimized",
    }
