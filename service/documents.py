"""The one document type, from the HTTP request to the SQLite store, the collections, Milvus and index bundles.

A :class:`Document` is what a client stores: an id, the text that is embedded and searched, and
JSON metadata that filters match (:mod:`service.collection`). It carries no vector: vectors travel
next to documents (one matrix row per document), because the same document is embedded again by
every model version it is served with. A :class:`Hit` is a document found by a search, with its
score (inner product of unit vectors = cosine).

The HTTP layer gives a document sent without an id a :func:`new_document_id`; below it, every
document has its id.

Example::

    >>> from service.documents import Document, Hit
    >>> doc = Document("d1", "Ankara is the capital.", {"lang": "en"})
    >>> Hit(doc, 0.5).to_json()
    {'id': 'd1', 'text': 'Ankara is the capital.', 'score': 0.5, 'metadata': {'lang': 'en'}}
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    metadata: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The document as ``GET /documents/{id}`` and an index bundle's documents.jsonl write it."""
        return {"id": self.id, "text": self.text, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, row: Mapping) -> Document:
        """Read back what :meth:`to_json` wrote, or the previous release's write-ahead log (``metadata`` may be
        missing or null)."""
        return cls(row["id"], row["text"], row.get("metadata") or {})


@dataclass(frozen=True, slots=True)
class Hit:
    doc: Document
    score: float
    # hybrid search: the raw score on each side (None where that side did not list the document)
    dense_score: float | None = None
    lexical_score: float | None = None
    # a chunked document: the character offsets [start, end) of the window that scored best
    span: tuple[int, int] | None = None

    def to_json(self) -> dict:
        return {"id": self.doc.id, "text": self.doc.text, "score": self.score, "metadata": dict(self.doc.metadata)}


def new_document_id() -> str:
    """A fresh id for a document stored without one (32 hex digits, a random UUID)."""
    return uuid.uuid4().hex
