"""Request schemas (pydantic: they are the OpenAPI components) and the checks a schema cannot express.

Unknown fields are ignored (clients of TEI and OpenAI send more than we read). Shape errors are answered
by FastAPI's validation (422, :mod:`service.http.errors`); the ``check_*`` functions add what depends on the
settings (limits: 413) or on the response encoder (what could not be sent back as JSON: 422).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..errors import TooLarge, Unprocessable
from ..settings import Settings

Scalar = str | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbedRequest(_Model):
    """Hugging Face text-embeddings-inference ``/embed``."""

    inputs: str | list[str]
    # accepted for TEI clients; the exported graph pools and L2-normalises, so vectors are always unit length
    normalize: bool = Field(True, description="accepted for compatibility: embeddings are always unit length")
    truncate: bool = True
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        "right", description="which end of a text over max_seq_length tokens is cut (left keeps its end)")
    prompt_name: str | None = None


class OpenAIEmbeddingRequest(_Model):
    """OpenAI ``/v1/embeddings`` (text inputs; token-id inputs are refused)."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class SearchRequest(_Model):
    query: str | None = None
    queries: list[str] | None = None
    top_k: int = Field(5, ge=1)
    filter: dict[str, Scalar | list[Scalar]] | None = None


class DocumentIn(_Model):
    id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^/\x00-\x1f]+$")
    text: str
    metadata: dict[str, Any] | None = None


class DocumentsRequest(_Model):
    documents: list[DocumentIn]


class FeedbackRequest(_Model):
    """The answer a user chose (or rejected, ``label: negative``) for a query, and what was shown."""

    query: str
    document_id: str = Field(min_length=1, max_length=256)
    shown_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    label: Literal["positive", "negative"] = "positive"


class ReloadRequest(_Model):
    # checked here, so a typo is a 422 now rather than a failed background reload later
    version: str | None = Field(None, pattern=r"^v\d{4,}$", description="a bundle version such as v0003")


def check_json_safe(value: Any, what: str) -> None:
    """Refuse what cannot be stored or sent back as JSON: NaN/Infinity, lone surrogates, and what orjson (the
    response encoder) refuses, integers beyond 64 bits and nesting over 254 levels: stored, such a document
    would turn every later search that returns it into a 500."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        orjson.dumps(value)
    except (ValueError, UnicodeEncodeError, orjson.JSONEncodeError) as exc:
        # orjson says what it refused ("Integer exceeds 64-bit range"); the others would quote the input
        reason = str(exc) if isinstance(exc, orjson.JSONEncodeError) else type(exc).__name__
        raise Unprocessable(f"{what} is not valid JSON text: {reason}") from None


def check_texts(texts: list[str], settings: Settings, what: str = "inputs") -> None:
    """Texts to embed: valid JSON text, at least one, none blank, within the request limits."""
    check_json_safe(texts, what)
    if not texts:
        raise Unprocessable(f"{what} must not be empty")
    if len(texts) > settings.max_inputs:
        raise TooLarge(f"{len(texts)} {what}, at most {settings.max_inputs} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise Unprocessable(f"{what}[{i}] is empty")
        if len(text) > settings.max_input_chars:
            raise TooLarge(f"{what}[{i}] has {len(text)} characters, at most {settings.max_input_chars}")
