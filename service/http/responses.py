"""What the routes answer: the response models of the OpenAPI document, the error body, and search hits shaped
within the response budget.

The routes write their JSON with orjson themselves; the models here describe those bodies (FastAPI does not
re-validate a ``Response`` a route returns), and tests/test_contract.py holds the two together.

:func:`search_results` sizes an answer from the stored texts and metadata of its hits before it is built:
queries × top_k × up to ``max_metadata_bytes`` each is too much to build first and measure after (a 2 KB
request once made a 1.5 GB answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, RootModel

from ..documents import Hit
from ..errors import TooLarge


class ResponseTooLarge(TooLarge):
    type = "response_too_large"


# ------------------------------------------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "code"}}``."""

    error: ErrorDetail


# ------------------------------------------------------------------------------------------------- bodies
class Embeddings(RootModel[list[list[float]]]):
    """One unit vector per input, in order (TEI's ``/embed``)."""


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddings(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class HitOut(BaseModel):
    """A document found; ``text`` and ``metadata`` are left out when the request asked so. ``score`` ranks (the
    fused score in hybrid mode, else the side's own); ``dense_score`` (cosine) and ``lexical_score`` (BM25) are
    each side's raw score, null where that side did not list the document; ``span`` the [start, end) characters
    of the best-scoring window of a chunked document (null: the whole document)."""

    id: str
    score: float
    dense_score: float | None
    lexical_score: float | None
    span: list[int] | None
    text: str | None = None
    metadata: dict[str, Any] | None = None


class Fusion(BaseModel):
    """How a hybrid search fused its sides: ``method`` weighted (``alpha``, and ``alpha_source``: request,
    setting, bundle or default) or rrf (``k``); ``candidates`` taken from each side."""

    method: Literal["weighted", "rrf"]
    candidates: int
    alpha: float | None = None
    alpha_source: Literal["request", "setting", "bundle", "default"] | None = None
    k: int | None = None


class Searched(BaseModel):
    """What ran for one query: ``mode`` hybrid, dense or lexical (a hybrid query with no words left after analysis
    ran dense, and ``note`` says why), its analysed ``terms`` (null when no lexical side ran)."""

    mode: Literal["hybrid", "dense", "lexical"]
    terms: list[str] | None
    note: str | None


class SearchResults(BaseModel):
    """``results`` and ``searched``: for "query" a list of hits and one object, for "queries" one of each per
    query, in order. ``mode``: the mode asked; ``fusion``: set in hybrid mode."""

    results: list[HitOut] | list[list[HitOut]]
    mode: Literal["hybrid", "dense", "lexical"]
    fusion: Fusion | None
    searched: Searched | list[Searched]


class StoredIds(BaseModel):
    ids: list[str]


class DocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]


class Deleted(BaseModel):
    id: str
    deleted: Literal[True]


class FeedbackStored(BaseModel):
    stored: Literal[True]
    label: Literal["positive", "negative"]
    document_id: str
    shown: int


class Health(BaseModel):
    status: Literal["ok"]
    state: str


class Ready(BaseModel):
    status: Literal["ready"]
    model: str
    version: str
    documents: int


class Info(RootModel[dict[str, Any]]):
    """Model, index, limits, durability, reload state and the settings (keys shown as set or not)."""


class ReloadStatus(BaseModel):
    """``state``: idle, loading, swapping, done, unchanged, failed or cancelled; the rest as far as it got."""

    model_config = ConfigDict(extra="allow")
    state: str


# ------------------------------------------------------------------------------------------------- search
# ',"score":', ',"dense_score":', ',"lexical_score":' with floats at their longest, and ',"span":[start,end]'
_SCORE_BYTES = 160


def search_results(rows: Sequence[Sequence[Hit]], *, text: bool, metadata: bool, budget: int) -> list[list[dict]]:
    """The hits as JSON objects (with their text and metadata if asked), refused with :class:`ResponseTooLarge`
    when they would take more than ``budget`` bytes. Each stored document is measured once, and the count stops
    at the budget: the work is bounded by it, not by queries × top_k."""
    sizes: dict[int, int] = {}
    total = 0
    for row in rows:
        for hit in row:
            key = id(hit.doc)
            if key not in sizes:
                sizes[key] = len(orjson.dumps(_fields(hit, text, metadata))) + _SCORE_BYTES
            total += sizes[key]
            if total > budget:
                queries, top_k = len(rows), max(len(r) for r in rows)
                raise ResponseTooLarge(
                    f"the answer would take more than {budget} bytes (--max_response_bytes): lower top_k "
                    f"({top_k}), send fewer queries ({queries}) or leave out what you do not need "
                    f"(\"return_metadata\": false, \"return_text\": false)")
    return [[{**_fields(h, text, metadata), "score": h.score, "dense_score": h.dense_score,
              "lexical_score": h.lexical_score, "span": list(h.span) if h.span is not None else None} for h in row]
            for row in rows]


def _fields(hit: Hit, text: bool, metadata: bool) -> dict:
    fields: dict[str, Any] = {"id": hit.doc.id}
    if text:
        fields["text"] = hit.doc.text
    if metadata:
        fields["metadata"] = dict(hit.doc.metadata)
    return fields
