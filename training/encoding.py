"""Encode queries and passages with a SentenceTransformer the way every stage must: the query
prompt (instruction) on questions only, passages plain (as the trainer and the service see them), and
unit-length vectors.

Passages longer than the model's ``max_seq_length`` are chunked (:mod:`training.chunking`): :meth:`passages`
returns the vectors of every window (the model's fast tokenizer gives the offsets), which
:func:`training.metrics.similarity` scores as each passage's best window, as the service does.
``chunk_stride=0`` turns it off (passages truncated); :meth:`plain_passages` (and the miner's ``__call__``)
embed each passage once, truncated.

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

from training.chunking import Chunking, Span, WindowVectors, chunked_encoder


class SentenceEncoder:
    def __init__(self, model: SentenceTransformer, batch_size: int = 32, chunk_stride: int | None = None):
        """``chunk_stride``: tokens between window starts (None: half a window; 0: no chunking)."""
        self.model = model
        self.batch_size = batch_size
        self.chunking = Chunking.for_model(model.max_seq_length, special_tokens(model), chunk_stride)
        self._windows = chunked_encoder(self.plain_passages, self.content_offsets, self.chunking)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, prompt_name="query")

    def passages(self, texts: Sequence[str]) -> WindowVectors:
        """Every window of every passage embedded (one per passage where it fits, or chunking is off)."""
        return self._windows(texts)

    def plain_passages(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per passage, truncated to ``max_seq_length``."""
        # prompt="", not None: neither a "document" prompt nor a default_prompt_name of the model is applied,
        # as training prompts the question column only and the bundle and the service embed passages plain.
        return self._encode(texts, prompt="")

    def content_offsets(self, texts: Sequence[str]) -> list[list[Span]]:
        """Character offsets of each text's tokens, untruncated, without special tokens."""
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                       return_offsets_mapping=True, verbose=False)
        return [[(int(a), int(b)) for a, b in offsets] for offsets in encoded["offset_mapping"]]

    def __call__(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """The ``(texts, is_query)`` form that :class:`training.negatives.NegativeMiner` takes (passages
        truncated: mining ranks candidates, one vector each)."""
        return self.queries(texts) if is_query else self.plain_passages(texts)

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


def special_tokens(model: SentenceTransformer) -> int:
    """Special tokens the model's tokenizer adds around one text (e.g. ``[CLS]``, ``[SEP]``: 2)."""
    return int(model.tokenizer.num_special_tokens_to_add(pair=False))
