"""Request schemas (pydantic: they are the OpenAPI components) and the checks a schema cannot express.

Unknown fields are ignored (clients of TEI and OpenAI send more than we read). Types are strict: ``"top_k":
true`` or ``"truncate": "yes"`` is a 422, not a 1 or a True. Shape errors are answered by FastAPI's validation
(422, :mod:`service.http.errors`); the ``check_*`` functions add what depends on the settings (limits: 413) or
on the response encoder (what could not be sent back as JSON: 422).

A limit that is a setting is declared on its field with :func:`limit` (``maxItems`` = ``max_inputs``) and
resolved per app in the OpenAPI document (:mod:`service.http.openapi`), so the schema states the numbers the
code enforces.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from ..errors import TooLarge, Unprocessable
from ..settings import Settings

Scalar = str | int | float | bool | None

# What a text needs to be worth embedding: one character that is neither whitespace, a control character nor
# an invisible format mark. Literal characters, not escapes, so every regex dialect (Python, the JSON-schema
# validators, a client's generator) reads the same class.
_INVISIBLE = "\x00-\x20\x7f-\xa0\xad\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff"
TEXT_PATTERN = f"[^{_INVISIBLE}]"
_VISIBLE = re.compile(TEXT_PATTERN)
# A document id ends up in a URL path (GET /documents/{id}): no "/", no control characters, and not "." or
# "..", which a client's URL building turns into another path. No look-ahead: not every dialect has it.
_ID_CHAR = "[^/\x00-\x1f]"
_ID_HEAD = "[^/\x00-\x1f.]"
ID_PATTERN = f"^(?:{_ID_HEAD}{_ID_CHAR}*|\\.{_ID_HEAD}{_ID_CHAR}*|\\.\\.{_ID_CHAR}+)$"
_ID = re.compile(ID_PATTERN)
MAX_ID_LENGTH = 256


def limit(**keywords: str) -> dict[str, dict[str, str]]:
    """JSON-schema keywords whose values are settings, e.g. ``limit(maxItems="max_inputs")``; the OpenAPI
    document of an app states the values of its settings."""
    return {"x-settings": keywords}


# a text to embed or search with; check_texts enforces both the pattern and the length
Text = Annotated[str, Field(json_schema_extra={"pattern": TEXT_PATTERN, **limit(maxLength="max_input_chars")})]
Texts = Annotated[list[Text], Field(json_schema_extra={"minItems": 1, **limit(maxItems="max_inputs")})]
DocumentId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class EmbedRequest(_Model):
    """Hugging Face text-embeddings-inference ``/embed``."""

    inputs: Text | Texts
    # accepted for TEI clients; the exported graph pools and L2-normalises, so vectors are always unit length
    normalize: bool = Field(True, description="accepted for compatibility: embeddings are always unit length")
    truncate: bool = Field(True, description="cut a text over max_seq_length tokens (false: 413 instead)")
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        "right", description="which end of a text over max_seq_length tokens is cut (left keeps its end)")
    prompt_name: Literal["query", "document", "passage"] | None = Field(
        None, description="query: embed with the model's query instruction")


class OpenAIEmbeddingRequest(_Model):
    """OpenAI ``/v1/embeddings``: texts only (token-id arrays are refused with a 422 that says so)."""

    input: Text | Texts
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="the model's dimension (it cannot shorten)")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, value: Any) -> Any:
        """Token-id arrays (``[1, 2]``, ``[[1, 2]]``: what LangChain's OpenAIEmbeddings sends by default) get a
        message saying what to do, not a list of type errors."""
        items = value if isinstance(value, list) else []
        if any(type(x) is int or (isinstance(x, list) and any(type(t) is int for t in x)) for x in items):
            raise PydanticCustomError(
                "token_ids", "token ids are not accepted, send the texts themselves (LangChain's OpenAIEmbeddings: "
                             "set check_embedding_ctx_length=False)")
        return value


class SearchRequest(_Model):
    """Exactly one of ``query`` (results: a list of hits) or ``queries`` (results: one list per query)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["query"], "properties": {"query": {"type": "string"}}},
        {"required": ["queries"], "properties": {"queries": {"type": "array"}}}]})

    query: Text | None = None
    queries: Texts | None = None
    top_k: StrictInt = Field(5, ge=1, json_schema_extra=limit(maximum="max_top_k"))
    filter: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="metadata filter: key → value, or key → any of a list of values")
    return_text: bool = Field(True, description="false: hits without their text")
    return_metadata: bool = Field(True, description="false: hits without their metadata")
    mode: Literal["hybrid", "dense", "lexical"] = Field(
        "hybrid", description="hybrid: dense and lexical (BM25) fused; dense: the model only; lexical: BM25 only "
                              "(the model does not run)")
    alpha: float | None = Field(
        None, ge=0, le=1, description="hybrid, weighted fusion: the dense side's weight (1: dense order, 0: lexical "
                                      "order); unset: the service's (GET /info search.alpha)")
    fusion: Literal["weighted", "rrf"] = Field(
        "weighted", description="hybrid: weighted (alpha over per-query min-max normalised scores) or rrf "
                                "(reciprocal rank fusion, k=60; alpha unused)")


class DocumentIn(_Model):
    id: DocumentId | None = Field(None, description="unset: a new random id")
    text: Text
    metadata: dict[str, Any] | None = Field(
        None, description="JSON object stored with the document and matched by search filters",
        json_schema_extra=limit(**{"x-maxBytes": "max_metadata_bytes"}))

    @field_validator("id")
    @classmethod
    def _reachable_id(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise PydanticCustomError("document_id", "an id must not be '.' or '..' nor contain '/' or control "
                                                     "characters: GET /documents/{id} could not reach it")
        return value


class DocumentsRequest(_Model):
    documents: list[DocumentIn] = Field(json_schema_extra={"minItems": 1, **limit(maxItems="max_inputs")})


class FeedbackRequest(_Model):
    """The answer a user chose (or rejected, ``label: negative``) for a query, and what was shown."""

    query: Text
    document_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    shown_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]] = Field(
        default_factory=list, json_schema_extra=limit(maxItems="max_inputs"))
    label: Literal["positive", "negative"] = "positive"


class ReloadRequest(_Model):
    # checked here, so a typo is a 422 now rather than a failed background reload later
    version: str | None = Field(None, pattern=r"^v\d{4,}$", description="a bundle version such as v0003")


def check_json_safe(value: Any, what: str) -> int:
    """Refuse what cannot be stored or sent back as JSON: NaN/Infinity, lone surrogates, and what orjson (the
    response encoder) refuses, integers beyond 64 bits and nesting over 254 levels: stored, such a document
    would turn every later search that returns it into a 500. Returns its size as JSON (bytes)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        return len(orjson.dumps(value))
    except (ValueError, UnicodeEncodeError, orjson.JSONEncodeError) as exc:
        # orjson says what it refused ("Integer exceeds 64-bit range"); the others would quote the input
        reason = str(exc) if isinstance(exc, orjson.JSONEncodeError) else type(exc).__name__
        raise Unprocessable(f"{what} is not valid JSON text: {reason}") from None


def check_texts(texts: list[str], settings: Settings, what: str = "inputs") -> None:
    """Texts to embed: valid JSON text, at least one, each with a visible character, within the request limits."""
    if all(type(t) is str for t in texts):
        # what check_json_safe refuses in a string is a lone surrogate only: the same answer without encoding the
        # list as JSON twice (per request on /embed)
        try:
            "".join(texts).encode("utf-8")
        except UnicodeEncodeError:
            raise Unprocessable(f"{what} is not valid JSON text: UnicodeEncodeError") from None
    else:
        check_json_safe(texts, what)
    if not texts:
        raise Unprocessable(f"{what} must not be empty")
    if len(texts) > settings.max_inputs:
        raise TooLarge(f"{len(texts)} {what}, at most {settings.max_inputs} per request")
    for i, text in enumerate(texts):
        if not _VISIBLE.search(text):
            raise Unprocessable(f"{what}[{i}] is blank (only whitespace, control or invisible characters)")
        if len(text) > settings.max_input_chars:
            raise TooLarge(f"{what}[{i}] has {len(text)} characters, at most {settings.max_input_chars}")


_NESTING_BYTES = len(b'{"results":[[{"metadata":}]]}')


def check_metadata(metadata: dict | None, settings: Settings, what: str) -> None:
    """A document's metadata: storable JSON (:func:`check_json_safe`) within ``max_metadata_bytes``, so that no
    stored document can make a search answer huge."""
    # as deep as a response nests it ({"results": [[hit]]} for "queries"), so any stored document can be sent back
    size = check_json_safe({"results": [[{"metadata": metadata or {}}]]}, what) - _NESTING_BYTES
    if size > settings.max_metadata_bytes:
        raise TooLarge(f"{what} is {size} bytes as JSON, at most {settings.max_metadata_bytes} (--max_metadata_bytes)")
