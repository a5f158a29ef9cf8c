"""Encode queries and passages with a SentenceTransformer the way every stage must: the query
prompt (instruction) on questions only, passages plain (as the trainer and the service see them), and
unit-length vectors.

Example::

    >>> from training.models import load_base_model
    >>> from training.encoding import SentenceEncoder
    >>> encoder = SentenceEncoder(load_base_model("all-MiniLM-L6-v2", "mean", 64))
    >>> encoder.queries(["Python nedir?"]).shape
    (1, 384)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sentence_transformers import SentenceTransformer


class SentenceEncoder:
    def __init__(self, model: SentenceTransformer, batch_size: int = 32):
        self.model = model
        self.batch_size = batch_size

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, prompt_name="query")

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        # prompt="", not None: neither a "document" prompt nor a default_prompt_name of the model is applied,
        # as training prompts the question column only and the bundle and the service embed passages plain.
        return self._encode(texts, prompt="")

    def __call__(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """The ``(texts, is_query)`` form that :class:`training.negatives.NegativeMiner` takes."""
        return self.queries(texts) if is_query else self.passages(texts)

    def _encode(self, texts: Sequence[str], prompt_name: str | None = None, prompt: str | None = None) -> np.ndarray:
        return self.model.encode(
            list(texts),
            prompt_name=prompt_name,
            prompt=prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
