"""The windows of long documents with ``--index milvus``: a companion collection beside each document collection.

A document the model chunks into several windows (:mod:`training.chunking`) keeps its one row in the document
collection ``P_N_<version>`` (text, metadata, its first window's vector, the BM25 terms), and every one of its
windows, the first included, is a row of ``P_N_<version>_windows``::

    id          "<document id>/<k>" (k = window number; document ids never contain "/")
    doc_id      the document's id
    window      k (0, 1, ...)
    span_start, span_end   [start, end) characters of the window in the document's text
    metadata    the document's metadata, copied: filters apply to windows as to documents
    vector      the window's vector

A document of one window has no rows here (its row in the document collection is the whole text, span None).

Why a companion collection and not one row per window in the document collection: Milvus's BM25 counts every
row of a collection in its statistics (the number of documents and the average length; measured on Milvus Lite
3.2.2: window rows with empty or null ``terms`` change every score), so BM25 would no longer see one row per
document. Here the document collection is exactly the previous release's (its collections serve on unchanged:
their documents are single-window until written again or re-embedded), and BM25 stays per document.

A dense search asks both collections for ``k``: the documents by their first window, and the windows grouped by
``doc_id`` (Milvus ``group_by_field``: each chunked document once, at its best window). A chunked document's
windows include its first, so its best window is never below its document row: merged, each document scores
its best window, with that window's span (a chunked document not among the windows' ``k`` best is beaten by
``k`` others, so it is not among the ``k`` best documents either).

Writes: the document rows, then the windows, then the windows a document no longer has (``window >= its window
count``: no ghost windows after a shorter rewrite). Deletes: the document rows, then every window of them (a
window left by a crash in between names no document: a search drops it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.chunking import WindowVectors

from .errors import IndexUnavailable
from .milvus_expr import quote

SUFFIX = "_windows"  # the companion of collection <name> is <name>_windows
DESCRIPTION = ("every window of a long document is a row of the windows collection; a search returns each "
               "document once, scored by its best window (its span)")
_OUT = ["doc_id", "span_start", "span_end"]


def window_counts(count: int, owners: np.ndarray) -> np.ndarray:
    """Windows per document of a batch (``owners`` index the documents)."""
    return np.bincount(np.asarray(owners, dtype=np.int64), minlength=count)


def first_windows(rows: WindowVectors) -> np.ndarray:
    """Each document's first window's vector (the document row's vector; ``owners`` non-decreasing)."""
    owners = np.asarray(rows.owners, dtype=np.int64)
    return np.asarray(rows.vectors, dtype=np.float32)[np.searchsorted(owners, np.arange(rows.count))]


class MilvusWindows:
    """The windows collection of document collection ``documents`` (``store``: a
    :class:`service.milvus.MilvusStore`)."""

    def __init__(self, store: Any, documents: str, dim: int, consistency: str) -> None:
        self.store, self.name, self.dim, self.consistency = store, documents + SUFFIX, dim, consistency
        self.client = store.client

    def create(self) -> None:
        """Create (if missing) and load the collection; another replica creating it at once is fine."""
        call, pm = self.store.call, self.store._pymilvus
        if not call(self.client.has_collection, self.name):
            schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", pm.DataType.VARCHAR, is_primary=True, max_length=1_100)
            schema.add_field("doc_id", pm.DataType.VARCHAR, max_length=1_024)
            schema.add_field("window", pm.DataType.INT64)
            schema.add_field("span_start", pm.DataType.INT64)
            schema.add_field("span_end", pm.DataType.INT64)
            schema.add_field("metadata", pm.DataType.JSON)
            schema.add_field("vector", pm.DataType.FLOAT_VECTOR, dim=self.dim)
            index = self.client.prepare_index_params()
            index.add_index("vector", index_type=self.store.settings.milvus_index_type, metric_type="IP",
                            params=self.store._build_params())
            index.add_index("doc_id", index_type="INVERTED")
            try:
                call(self.client.create_collection, self.name, schema=schema, index_params=index,
                     consistency_level=self.consistency)
            except IndexUnavailable as exc:  # another replica created it first, or is creating it right now
                if not self.store._appears(self.name):
                    raise exc from None
        call(self.client.load_collection, self.name)

    def write(self, docs: Sequence[Any], rows: WindowVectors) -> None:
        """Store the windows of ``docs`` (``rows.owners`` index them; each id once) and remove the windows they no
        longer have. A document of one window keeps none here."""
        counts = window_counts(len(docs), rows.owners)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        data = []
        for i, (owner, span) in enumerate(zip(rows.owners.tolist(), rows.spans, strict=True)):
            if counts[owner] < 2:
                continue
            doc, k = docs[owner], i - int(starts[owner])
            start, end = span if span is not None else (0, len(doc.text))
            data.append({"id": f"{doc.id}/{k}", "doc_id": doc.id, "window": k, "span_start": int(start),
                         "span_end": int(end), "metadata": dict(doc.metadata),
                         "vector": np.asarray(rows.vectors[i], dtype=np.float32).tolist()})
        if data:
            self.store.call(self.client.upsert, self.name, data)
        by_count: dict[int, list[str]] = {}
        for doc, n in zip(docs, counts.tolist(), strict=True):
            by_count.setdefault(n if n > 1 else 0, []).append(doc.id)
        stale = " or ".join(f"(doc_id in {quote(ids)} and window >= {n})" for n, ids in sorted(by_count.items()))
        if stale:
            self.store.call(self.client.delete, self.name, filter=stale)

    def delete(self, ids: Sequence[str], missing_ok: bool = False) -> None:
        """Remove every window of documents ``ids`` (``missing_ok``: nothing to do when the collection is
        missing: a collection of an older release, without windows)."""
        if missing_ok and not self.store.call(self.client.has_collection, self.name):
            return
        for start in range(0, len(ids), 1000):
            self.store.call(self.client.delete, self.name, filter=f"doc_id in {quote(list(ids[start:start + 1000]))}")

    def search(self, queries: np.ndarray, k: int, expr: str) -> list[dict[str, tuple[float, tuple[int, int]]]]:
        """Per query: the best window of each of the ``k`` best chunked documents, ``{doc id: (score, span)}``."""
        results = self.store.call(self.client.search, self.name, data=queries.tolist(), limit=k, filter=expr,
                                  output_fields=_OUT, group_by_field="doc_id", group_size=1,
                                  search_params=self.store.search_params(k), consistency_level=self.consistency)
        out = []
        for row in results:
            best: dict[str, tuple[float, tuple[int, int]]] = {}
            for h in row:
                e = h["entity"]
                score = float(h["distance"])
                if e["doc_id"] not in best or score > best[e["doc_id"]][0]:
                    best[e["doc_id"]] = (score, (int(e["span_start"]), int(e["span_end"])))
            out.append(best)
        return out

    def beyond_first(self) -> int:
        """Windows after the first of every chunked document (the first is also its document's row)."""
        rows = self.store.call(self.client.query, self.name, filter="window > 0", output_fields=["count(*)"],
                               consistency_level=self.consistency)
        return int(rows[0]["count(*)"])


def merge(documents: Sequence[Mapping], windows: Mapping[str, tuple[float, tuple[int, int]]], k: int
          ) -> list[tuple[str, float, tuple[int, int] | None]]:
    """One query's hits: document rows (``{"id", "distance"}``, scored by their first window) and chunked
    documents' best windows merged; each document once at its best, ``k`` best first: ``(id, score, span)``."""
    best: dict[str, tuple[float, tuple[int, int] | None]] = {str(h["id"]): (float(h["distance"]), None)
                                                             for h in documents}
    for doc_id, (score, span) in windows.items():
        if doc_id not in best or score >= best[doc_id][0]:
            best[doc_id] = (score, span)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
    return [(doc_id, score, span) for doc_id, (score, span) in ranked]
