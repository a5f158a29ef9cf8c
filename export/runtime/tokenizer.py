"""Pre step of the runtime: text → token ids, truncated to the model's ``max_seq_length``, and padding.

Contract:

* The query instruction (``query_prompt``) is prepended to queries only (``is_query=True``), never to
  documents, just as sentence-transformers does with ``prompt_name="query"``.
* ``truncation_direction="right"`` keeps the start of a long text (the library's truncation);
  ``"left"`` keeps its end (TEI's option) and never cuts the special tokens nor a query's instruction.
* ``truncate=False`` raises :class:`InputTooLong` (a plain exception: callers map it, e.g. to HTTP 413)
  for a text over ``max_seq_length`` tokens, whichever the direction.
* :func:`pad_batch` is the one way encodings become the graph's ``int64 [batch, seq]`` inputs.
* Long documents: :meth:`TextTokenizer.content_offsets` (untruncated, no special tokens) and
  :meth:`TextTokenizer.chunking` (window = ``max_seq_length`` less the special tokens) feed
  :mod:`training.chunking`, the one definition of windows the service, the gates and training share.

Example::

    >>> from export.runtime import TextTokenizer, pad_batch
    >>> tok = TextTokenizer(tokenizer_json_path, max_seq_length=8)          # doctest: +SKIP
    >>> [len(e) for e in tok.encode(["a b", "one two three four five six seven eight"])]  # doctest: +SKIP
    [4, 8]
    >>> ids, mask, types = pad_batch(tok.encode(["a b", "c"]))              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from training.chunking import Chunking, Span

TRUNCATION_DIRECTIONS = ("right", "left")


class InputTooLong(ValueError):
    """A text is longer than the model's ``max_seq_length`` tokens and truncation is off."""


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
        # Two tokenizers, as truncation is a tokenizer's state, shared by threads: the library truncates on the
        # right; left truncation is cut by hand from an untruncated encoding, to keep the query instruction.
        self._right = Tokenizer.from_file(str(tokenizer_path))
        self._right.no_padding()
        self._right.enable_truncation(self.max_seq_length)
        self._untruncated = Tokenizer.from_file(str(tokenizer_path))
        self._untruncated.no_padding()
        self._untruncated.no_truncation()

    @property
    def special_tokens(self) -> int:
        """Special tokens added around one text (``[CLS]`` and ``[SEP]``: 2)."""
        return len(self._untruncated.encode("", add_special_tokens=True).ids)

    def chunking(self, stride: int | None = None) -> Chunking:
        """Windows of ``max_seq_length`` less the special tokens; ``stride`` None: half a window, 0: off."""
        return Chunking.for_model(self.max_seq_length, self.special_tokens, stride)

    def content_offsets(self, texts: Sequence[str]) -> list[list[Span]]:
        """Character offsets of each text's tokens, untruncated, special tokens left out (documents: no prompt)."""
        encodings = self._untruncated.encode_batch(list(texts), add_special_tokens=True)
        # each read of an Encoding's property builds the whole list again: read each once (per index, a 300-token
        # passage cost 50 ms, every ingest)
        return [[tuple(offset) for offset, special in zip(enc.offsets, enc.special_tokens_mask, strict=True)
                 if not special] for enc in encodings]

    def encode(self, texts: Sequence[str], *, is_query: bool = False, truncate: bool = True,
               truncation_direction: str = "right") -> list[Encoded]:
        """Encode texts (see the module's contract); raises :class:`InputTooLong` with ``truncate=False``."""
        if truncation_direction not in TRUNCATION_DIRECTIONS:
            raise ValueError(f"truncation_direction must be right or left, got {truncation_direction!r}")
        prompt = self.query_prompt if is_query else ""
        texts = [prompt + t for t in texts]
        if truncation_direction == "left":
            encodings = self._untruncated.encode_batch(texts, add_special_tokens=True)
            pieces = [self._cut_left(enc, len(prompt)) for enc in encodings]
        else:
            encodings = self._right.encode_batch(texts, add_special_tokens=True)
            pieces = [(enc.ids, enc.type_ids, bool(enc.overflowing)) for enc in encodings]
        out = []
        for i, (ids, type_ids, overflowed) in enumerate(pieces):
            if not truncate and overflowed:
                raise InputTooLong(f"input {i} is longer than the model's {self.max_seq_length} tokens "
                                   "and truncate is false")
            out.append(Encoded(np.asarray(ids, dtype=np.int64), np.asarray(type_ids, dtype=np.int64)))
        return out

    def _cut_left(self, enc, prompt_chars: int) -> tuple[list[int], list[int], bool]:
        """Drop tokens from the start of the text, never the special tokens around it nor the prompt's."""
        ids, type_ids = enc.ids, enc.type_ids  # each property read builds its list: read once
        n = len(ids)
        if n <= self.max_seq_length:
            return ids, type_ids, False
        special, offsets = enc.special_tokens_mask, enc.offsets
        body = [i for i in range(n) if not special[i]]
        lead, trail = list(range(body[0])), list(range(body[-1] + 1, n))
        room = self.max_seq_length - len(lead) - len(trail)
        prompt = [i for i in body if offsets[i][1] <= prompt_chars]
        text = body[len(prompt):]
        kept = prompt + text[len(text) - (room - len(prompt)):] if room > len(prompt) else body[-room:]
        keep = lead + kept + trail
        return [ids[i] for i in keep], [type_ids[i] for i in keep], True


def pad_batch(encodings: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask, token_type_ids)``, each ``int64 [batch, longest]``, zero-padded on the
    right; the graph's pooling masks the padding out, so a text's vector does not depend on its batch."""
    longest = max(len(e) for e in encodings)
    ids = np.zeros((len(encodings), longest), dtype=np.int64)
    mask = np.zeros((len(encodings), longest), dtype=np.int64)
    types = np.zeros((len(encodings), longest), dtype=np.int64)
    for i, enc in enumerate(encodings):
        n = len(enc)
        ids[i, :n] = enc.ids
        mask[i, :n] = 1
        types[i, :n] = enc.type_ids
    return ids, mask, types
