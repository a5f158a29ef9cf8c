"""Pre-processing stage: text → token ids, truncated to the model's ``max_seq_length``.

The query instruction (``query_prompt``) is prepended to queries only, never to documents, just
as sentence-transformers does with ``prompt_name="query"``.

Example::

    >>> from service.tokenization import TextTokenizer
    >>> tok = TextTokenizer(tokenizer_json_path, max_seq_length=8)          # doctest: +SKIP
    >>> [len(e.ids) for e in tok.encode(["a b", "one two three four five six seven eight"])]  # doctest: +SKIP
    [4, 8]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import TooLarge


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids of one text (already truncated); ``len(ids)`` is its token cost."""

    ids: np.ndarray  # int64 [seq]
    type_ids: np.ndarray  # int64 [seq]

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """Thread-safe wrapper around a ``tokenizers.Tokenizer`` with fixed truncation, no padding."""

    def __init__(self, tokenizer_path: str | Path, max_seq_length: int, query_prompt: str = "") -> None:
        self.max_seq_length = int(max_seq_length)
        self.query_prompt = query_prompt or ""
        # one tokenizer per truncation side: a tokenizer's truncation is its state, shared by threads
        self._tok = {}
        for side in ("right", "left"):
            tok = Tokenizer.from_file(str(tokenizer_path))
            tok.no_padding()
            tok.enable_truncation(self.max_seq_length, direction=side)
            self._tok[side] = tok

    def encode(self, texts: Sequence[str], *, is_query: bool = False, truncate: bool = True,
               truncation_direction: str = "right") -> list[Encoded]:
        """Encode texts; with ``truncate=False`` a text over ``max_seq_length`` tokens raises 413;
        ``truncation_direction="left"`` keeps the end of a long text instead of its start (TEI's option)."""
        if is_query and self.query_prompt:
            texts = [self.query_prompt + t for t in texts]
        encodings = self._tok[truncation_direction].encode_batch(list(texts), add_special_tokens=True)
        out = []
        for i, enc in enumerate(encodings):
            if not truncate and enc.overflowing:
                raise TooLarge(f"input {i} is longer than the model's {self.max_seq_length} tokens "
                               "and truncate is false")
            out.append(Encoded(np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.type_ids, dtype=np.int64)))
        return out

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(e) for e in self.encode(texts))
