"""Encode texts with an exported ONNX graph and its tokenizer: onnxruntime + tokenizers, no torch.

Used by the export gates, the tests and the benchmark, so all of them measure the same thing.
Texts are sorted by length before batching (as ``SentenceTransformer.encode`` does), which keeps
padding, and so wasted compute, small.

Example::

    >>> from export.bundle import open_bundle                      # doctest: +SKIP
    >>> from export.runtime import OnnxEncoder                     # doctest: +SKIP
    >>> bundle = open_bundle("registry", "minilm")                 # doctest: +SKIP
    >>> encoder = OnnxEncoder.from_bundle(bundle, "int8", threads=2)  # doctest: +SKIP
    >>> encoder.encode(["Python nedir?"]).shape                    # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from export.bundle import Bundle


def session_options(threads: int | None = None, config: dict[str, str] | None = None) -> ort.SessionOptions:
    """Full graph optimisation; ``threads`` intra-op threads (None: onnxruntime's default, all cores);
    ``config``: session config entries, e.g. ``{"session.intra_op.allow_spinning": "0"}``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return options


class OnnxEncoder:
    """``encode(texts) -> float32 [n, dim]`` with one onnxruntime CPU session."""

    def __init__(self, onnx_path: str | Path, tokenizer_path: str | Path, max_seq_length: int,
                 threads: int | None = None, prompt: str = "", config: dict[str, str] | None = None):
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options(threads, config), providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.prompt = prompt

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str, threads: int | None = None, prompt: str = "") -> OnnxEncoder:
        return cls(bundle.variant_path(variant), bundle.tokenizer_path, bundle.max_seq_length, threads, prompt)

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([self.prompt + text for text in texts])
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.input_names}

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        order = np.argsort([-len(text) for text in texts], kind="stable")
        output: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(texts), batch_size):
            ids = order[start:start + batch_size]
            embeddings = self.session.run(None, self.tokenize([texts[i] for i in ids]))[0]
            for row, index in zip(embeddings, ids):
                output[index] = row
        return np.asarray(output, dtype=np.float32).reshape(len(texts), -1)
