"""Turn a sentence-transformers model into ONNX graphs that output the final, L2-normalised embedding.

Why ``torch.onnx.export`` of a small wrapper and not optimum's exporter: optimum (and
sentence-transformers' ``backend="onnx"``) export only the transformer and leave pooling, Dense
layers and normalisation to Python. Running every module of the SentenceTransformer inside one
traced ``forward`` puts whatever the model's own Pooling/Dense/Normalize modules do into the graph,
so the server needs nothing but a tokenizer and an ONNX session.

Example::

    >>> from export.onnx_export import load_for_export, model_facts, export_fp32  # doctest: +SKIP
    >>> model = load_for_export("path/to/model")                              # doctest: +SKIP
    >>> model_facts(model, "path/to/model")["pooling"]                        # doctest: +SKIP
    'mean'
    >>> export_fp32(model, Path("model.onnx"))                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnx
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from tokenizers import Tokenizer

from export.errors import ExportError
from export.onnx_io import EXTERNAL_DATA_BYTES, save_onnx

OUTPUT = "sentence_embedding"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def load_for_export(model_dir: str, max_seq_length: int | None = None) -> SentenceTransformer:
    """Load on CPU with eager attention: its traced MatMul/Softmax subgraph is the pattern onnxruntime's
    Attention fusion matches (the SDPA trace happens to fuse too with torch 2.13, but that depends on how
    each torch version decomposes SDPA)."""
    try:
        model = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"})
    except Exception as error:  # missing folder, no hub access, broken config: one message for the user
        raise ExportError(f"cannot load sentence-transformers model {model_dir!r}: {error}") from error
    if not isinstance(model[0], Transformer):
        raise ExportError(f"{model_dir}: first module is {type(model[0]).__name__}, expected a Transformer")
    pooling = next((m for m in model if isinstance(m, Pooling)), None)
    if pooling is not None and not pooling.include_prompt:
        raise ExportError(f"{model_dir}: Pooling(include_prompt=False) needs the prompt length, not exportable")
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model.eval()


def model_facts(model: SentenceTransformer, model_dir: str) -> dict:
    """What the bundle manifest records about the model (plus training facts from ``metrics.json``)."""
    training = _training_metrics(model_dir)
    pooling = next((m for m in model if isinstance(m, Pooling)), None)
    prompts = dict(model.prompts or {})
    return {
        "source_model": str(model_dir),
        "base_model": training.get("config", {}).get("model_name") or str(model_dir),
        "training_data_sha256": training.get("data", {}).get("sha256"),
        "dimension": model.get_embedding_dimension(),
        "pooling": _pooling_mode(pooling),
        # The graph always normalises; this says whether the source model did too.
        "normalize": True,
        "source_normalizes": any(isinstance(m, Normalize) for m in model),
        "max_seq_length": model.max_seq_length,
        "query_prompt": prompts.get("query", ""),
        "prompts": prompts,
        "inputs": input_names(model),
        "output": OUTPUT,
        "transformer": model[0].auto_model.config.model_type,
    }


def input_names(model: SentenceTransformer) -> list[str]:
    return [name for name in INPUTS if name in model.tokenizer.model_input_names]


class _Encoder(torch.nn.Module):
    """Transformer + the model's own pooling/dense/normalise modules + a final L2 normalisation."""

    def __init__(self, model: SentenceTransformer, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.names, tensors))
        for module in self.model:
            features = module(features)
        return torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1)


def export_fp32(model: SentenceTransformer, path: Path) -> None:
    """Write the fp32 graph (dynamic batch and sequence axes) to ``path`` (+ ``path.data`` when > 2 GB)."""
    names = input_names(model)
    sample = model.tokenizer(["a short text", "a somewhat longer sample text"], padding=True, return_tensors="pt")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names} | {OUTPUT: {0: "batch"}}
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad():
        # The legacy (TorchScript) exporter: the dynamo one needs onnxscript, which the image lacks.
        torch.onnx.export(
            _Encoder(model, names),
            tuple(sample[name] for name in names),
            str(Path(scratch) / "model.onnx"),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=dynamic,
            opset_version=OPSET,
        )
        save_onnx(onnx.load(str(Path(scratch) / "model.onnx")), path)


def attention_shape(model: SentenceTransformer) -> tuple[int, int]:
    """(attention heads, hidden size) of the encoder: what :func:`optimize` needs to match Attention."""
    config = model[0].auto_model.config
    return config.num_attention_heads, config.hidden_size


def optimize(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict:
    """onnxruntime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...); returns the fused-op counts.

    Only the hardware-independent Python fusions are saved; the session still applies its own
    optimisations at load time on the serving machine.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    _save_onnx_model(optimized, target)
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def convert_fp16(source: Path, target: Path, fused: bool = True) -> None:
    """fp16 weights and compute (for GPU serving); inputs/outputs keep their int64/float32 types.

    ``fused``: ``source`` holds onnxruntime's fused com.microsoft operators, which only its symbolic shape
    inference types. That one copies every weight several times (a bge-m3-sized plain graph peaked at
    19.6 GB), so plain graphs go through ONNX shape inference on the file instead (8 GB less)."""
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    if fused:
        model = OnnxModel(onnx.load(str(source)))
        model.convert_float_to_float16(keep_io_types=True)
    else:
        model = OnnxModel(float16.convert_float_to_float16(str(source), keep_io_types=True))
    _save_onnx_model(model, target)


def save_tokenizer(model: SentenceTransformer, folder: Path) -> str:
    """Save the tokenizer files; ``tokenizer.json`` truncates to max_seq_length and pads to the longest
    text, so ``Tokenizer.from_file(...).encode_batch`` tokenizes exactly like ``SentenceTransformer.encode``."""
    hf_tokenizer = model.tokenizer
    if not getattr(hf_tokenizer, "is_fast", False):
        raise ExportError(f"{type(hf_tokenizer).__name__} has no tokenizer.json (a fast tokenizer is required)")
    hf_tokenizer.save_pretrained(str(folder))
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.enable_truncation(max_length=model.max_seq_length)
    tokenizer.enable_padding(pad_id=hf_tokenizer.pad_token_id, pad_token=hf_tokenizer.pad_token)
    tokenizer.save(str(folder / "tokenizer.json"))
    return "tokenizer.json"


def save_torch_weights(model: SentenceTransformer, folder: Path) -> None:
    """The PyTorch model folder, for GPU serving with sentence-transformers or further fine-tuning."""
    model.save(str(folder))


def _save_onnx_model(model, target: Path) -> None:
    # onnxruntime's OnnxModel also names its external data "<file>.data", like save_onnx.
    weights = sum(len(t.raw_data) for t in model.model.graph.initializer)
    model.save_model_to_file(str(target), use_external_data_format=weights > EXTERNAL_DATA_BYTES)


def _training_metrics(model_dir: str) -> dict:
    file = Path(model_dir) / "metrics.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ExportError(f"{file}: unreadable training metrics ({error})") from None



def _pooling_mode(pooling: Pooling | None) -> str | None:
    if pooling is None:
        return None
    mode = pooling.pooling_mode
    return mode if isinstance(mode, str) else "+".join(mode)
