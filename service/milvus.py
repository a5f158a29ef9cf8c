"""``--index milvus``: documents, metadata, vectors and feedback live in Milvus; replicas are stateless.

Any replica takes writes and every replica sees them (``--milvus_consistency Strong``, the default:
a search or get issued after an acknowledged write sees it, whichever replica wrote it).

Names in Milvus (``P`` = ``--milvus_prefix``, ``N`` = the model name, both made Milvus-safe)::

    P_N_<model version>   one collection per model version: id, text, metadata (JSON), updated_at
                          (ms), vector (a long document's first window), BM25 terms; properties
                          qaembed.model_version, qaembed.state, qaembed.synced_ms
    P_N_<model version>_windows   the windows of its long documents, one row each (:mod:`service.milvus_windows`)
    P_N                   alias: the collection serving now (switched atomically after a re-embed)
    P_N_feedback          POST /feedback records (read by ``python -m service export-feedback``)

A replica always searches the concrete collection of *its own* model version, never the alias, so
no query is searched against another model's vectors, even while replicas roll from one model to
the next. A model change (start or reload with a new version) re-embeds with
:func:`service.storage.milvus.fill`: every
document of the serving collection is streamed, embedded by the new model and written to the new
collection; documents written meanwhile by other replicas (``updated_at``) are caught up, deletes
reconciled; then the alias moves, and writes made before the other replicas noticed are caught up
once more. Writes go only to the collection the alias names: a replica still on the old model
answers them 503 (retry) after the switch until its LATEST watcher reloads it. A delete removes the
id from every model version's collection, so a re-embed in progress cannot resurrect it.

pymilvus is imported only here, only when ``--index milvus`` is chosen (optional extra
``qaembed[milvus]``). Connection failures become :class:`service.errors.IndexUnavailable` (503).

Example (Milvus Lite, a real local engine)::

    >>> import numpy as np, tempfile
    >>> from service.milvus import MilvusStore
    >>> from service.settings import Settings
    >>> s = Settings.build(index="milvus", milvus_uri=tempfile.mkdtemp() + "/m.db", name="demo")
    >>> store = MilvusStore(s)
    >>> from service.documents import Document
    >>> c = store.open("v0001", dim=2)
    >>> c.upsert([Document("a", "alpha", {"lang": "en"}), Document("b", "beta", {"lang": "tr"})],
    ...          np.eye(2, dtype=np.float32))
    >>> store.switch(c); store.serving()
    'qaembed_demo_v0001'
    >>> [h.doc.id for h in c.search(np.eye(2, dtype=np.float32)[:1], k=2, where={"lang": "tr"})[0]]
    ['b']
    >>> store.close()
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from training.analyzer import Analyzer, AnalyzerError
from training.chunking import WindowVectors

from . import milvus_lexical as bm25
from . import milvus_windows as windows
from .collection import DocumentCollection
from .documents import Document, Hit
from .errors import IndexUnavailable, TooLarge
from .milvus_expr import milvus_filter, quote
from .milvus_feedback import MilvusFeedback
from .settings import Settings

log = logging.getLogger("service.milvus")

MAX_TEXT_BYTES = 65_535  # Milvus VARCHAR limit
MAX_ID_BYTES = 1_024  # ids are at most 256 characters (the API checks), 4 bytes each in UTF-8
LEXICAL_SUFFIX = "_bm25"  # a version's collection made again because the previous release's has no BM25 field
_FIELDS = ["text", "metadata", "updated_at"]


def milvus_name(text: str) -> str:
    """A Milvus-safe name part: letters, digits and ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def now_ms() -> int:
    return int(time.time() * 1000)


class MilvusStore(MilvusFeedback):
    """One connection to a Milvus server/cluster (or a Milvus Lite file) and the names of one model."""

    def __init__(self, settings: Settings) -> None:
        try:
            import pymilvus
        except ImportError:  # not retried: fails the start at once
            raise ImportError("--index milvus needs pymilvus: pip install 'qaembed[milvus]'") from None
        # pymilvus logs every failed RPC with a traceback; our own message says what failed, once
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        self._errors = (pymilvus.exceptions.MilvusException, ConnectionError, TimeoutError)
        self._pymilvus = pymilvus
        self.settings = settings
        self.uri = settings.milvus_uri
        token = settings.milvus_token
        if settings.milvus_token_file is not None:
            token = settings.milvus_token_file.read_text(encoding="utf-8").strip()
        self.alias = milvus_name(f"{settings.milvus_prefix}_{settings.name}")
        self.feedback_name = f"{self.alias}_feedback"
        self.analyzer = Analyzer.named(settings.analyzer)
        self.client = self.call(pymilvus.MilvusClient, uri=self.uri, token=token or "", timeout=10)

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Run one pymilvus call; an unreachable or refusing Milvus becomes a 503 with its reason."""
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            message = getattr(exc, "message", None) or str(exc)
            raise IndexUnavailable(f"milvus at {self.uri}: {message}") from None

    def ping(self) -> None:
        self.call(self.client.list_collections)

    def collection_name(self, version: str) -> str:
        return f"{self.alias}_{milvus_name(version)}"

    def versions(self) -> list[str]:
        """The collections of every model version of this name (their windows' collections not included)."""
        return [n for n in self.call(self.client.list_collections) if n.startswith(self.alias + "_")
                and n != self.feedback_name and not n.endswith(windows.SUFFIX)]

    def attach(self, name: str) -> MilvusCollection:
        """An existing collection (e.g. the one the alias names), with its dimension and model version."""
        described = self.call(self.client.describe_collection, name)
        dim = next(int(f["params"]["dim"]) for f in described["fields"] if f["name"] == "vector")
        version = described.get("properties", {}).get("qaembed.model_version", "")
        analyzer = None
        if bm25.has_lexical_fields(described):
            try:
                analyzer = bm25.recorded_analyzer(described.get("properties", {}))
            except AnalyzerError:  # another release's analyzer: still readable as a fill source, not searchable
                log.warning("collection %s records an analyzer this release does not know", name)
        has_windows = self.call(self.client.has_collection, name + windows.SUFFIX)
        return MilvusCollection(self, name, dim, version, analyzer, has_windows)

    def serving(self) -> str | None:
        """The collection the alias names (``None`` before the first switch)."""
        if self.alias not in self.call(self.client.list_aliases).get("aliases", []):
            return None
        return self.call(self.client.describe_alias, self.alias)["collection_name"]

    def open(self, version: str, dim: int) -> MilvusCollection:
        """The collection of model ``version``, created (state ``building``) when missing, with the BM25 field
        (:mod:`service.milvus_lexical`). A collection of the previous release (no BM25 field) is left as it is:
        this version's documents go to a new collection ``<name>_bm25``, filled from the serving one like a
        model change (``service.storage.milvus.fill``). Raises :class:`training.analyzer.AnalyzerError` when
        the collection records another analyzer than ``--analyzer``."""
        name = self.collection_name(version)
        if self.call(self.client.has_collection, name) and not self._lexical(name):
            name += LEXICAL_SUFFIX
        if not self.call(self.client.has_collection, name):
            pm = self._pymilvus
            schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", pm.DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
            schema.add_field("text", pm.DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
            schema.add_field("metadata", pm.DataType.JSON)
            schema.add_field("updated_at", pm.DataType.INT64)
            schema.add_field("vector", pm.DataType.FLOAT_VECTOR, dim=dim)
            index = self.client.prepare_index_params()
            index.add_index("vector", index_type=self.settings.milvus_index_type, metric_type="IP",
                            params=self._build_params())
            bm25.add_lexical_fields(pm, schema, index)
            try:
                self.call(self.client.create_collection, name, schema=schema, index_params=index,
                          consistency_level=self.settings.milvus_consistency,
                          properties={"qaembed.model_name": self.settings.name or "",
                                      "qaembed.model_version": version, "qaembed.state": "building",
                                      bm25.ANALYZER_PROPERTY: bm25.analyzer_property(self.analyzer)})
                log.info("created collection %s (dim %d, %s)", name, dim, self.settings.milvus_index_type)
            except IndexUnavailable as exc:  # another replica created it first, or is creating it right now
                if not self._appears(name):
                    raise exc from None
        recorded = bm25.recorded_analyzer(self.call(self.client.describe_collection, name).get("properties", {}))
        if recorded is not None:
            self.analyzer.check_same(recorded.describe())
        self.call(self.client.load_collection, name)
        windows.MilvusWindows(self, name, dim, self.settings.milvus_consistency).create()
        return MilvusCollection(self, name, dim, version, self.analyzer, has_windows=True)

    def _lexical(self, name: str) -> bool:
        return bm25.has_lexical_fields(self.call(self.client.describe_collection, name))

    def _appears(self, name: str, wait_s: float = 5.0) -> bool:
        """Whether collection ``name`` exists within ``wait_s``: two replicas starting together both try to
        create it, and the loser's create can fail before the winner's is visible."""
        deadline = time.monotonic() + wait_s
        while not self.call(self.client.has_collection, name):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _build_params(self) -> dict:
        kind = self.settings.milvus_index_type
        if kind == "HNSW":
            return {"M": self.settings.hnsw_m, "efConstruction": self.settings.ef_construction}
        if kind.startswith("IVF"):
            return {"nlist": self.settings.nlist or 1024}
        return {}

    def search_params(self, k: int) -> dict:
        kind = self.settings.milvus_index_type
        params = {"ef": max(k, self.settings.ef_search)} if kind == "HNSW" else (
            {"nprobe": self.settings.nprobe} if kind.startswith("IVF") else {})
        return {"metric_type": "IP", "params": params}

    def switch(self, collection: MilvusCollection) -> None:
        """Point the alias at ``collection`` (one atomic alias change in Milvus). The collection it named
        before is marked retired: switching back to it later re-checks every document (``fill``)."""
        self.call(self.client.alter_collection_properties, collection.name, properties={"qaembed.state": "ready"})
        current = self.serving()
        if current == collection.name:
            return
        if current is None:
            self.call(self.client.create_alias, collection.name, self.alias)
        else:
            self.call(self.client.alter_alias, collection.name, self.alias)
            self.call(self.client.alter_collection_properties, current, properties={"qaembed.state": "retired"})
        log.info("alias %s: %s → %s", self.alias, current, collection.name)

    def _scan(self, name: str, fields: list[str], expr: str, batch_size: int = 1000) -> Iterator[list[dict]]:
        iterator = self.call(self.client.query_iterator, name, batch_size=batch_size, filter=expr,
                             output_fields=fields)
        try:
            while batch := self.call(iterator.next):
                yield batch
        finally:
            iterator.close()

    def close(self) -> None:
        self.client.close()


class MilvusCollection(DocumentCollection):
    """The documents of one model version in one Milvus collection."""

    workers = 8  # RPCs wait on the network, not on a local index: let several run at once

    def __init__(self, store: MilvusStore, name: str, dim: int, model_version: str,
                 analyzer: Analyzer | None = None, has_windows: bool = False) -> None:
        self.store, self.name, self.dim, self.model_version = store, name, dim, model_version
        self.analyzer = analyzer  # None: the previous release's collection, without the BM25 field
        self.client = store.client
        self.consistency = store.settings.milvus_consistency
        # None: attached without a windows collection (a fill source made by an older release)
        self.windows = windows.MilvusWindows(store, name, dim, self.consistency) if has_windows else None

    def __len__(self) -> int:
        rows = self.store.call(self.client.query, self.name, filter="", output_fields=["count(*)"],
                               consistency_level=self.consistency)
        return int(rows[0]["count(*)"])

    def properties(self) -> dict:
        return self.store.call(self.client.describe_collection, self.name).get("properties", {})

    def get(self, doc_id: str) -> Document | None:
        rows = self.store.call(self.client.get, self.name, ids=[doc_id], output_fields=_FIELDS)
        return Document(doc_id, rows[0]["text"], rows[0]["metadata"] or {}) if rows else None

    def get_many(self, ids: Sequence[str]) -> dict[str, Document]:
        """The documents of ``ids`` that exist, in one RPC (what lexical hits are resolved with)."""
        if not ids:
            return {}
        rows = self.store.call(self.client.get, self.name, ids=list(dict.fromkeys(ids)), output_fields=_FIELDS)
        return {r["id"]: Document(r["id"], r["text"], r["metadata"] or {}) for r in rows}

    def upsert(self, docs: Sequence[Document], vectors: np.ndarray, owners: np.ndarray | None = None,
               spans: Sequence | None = None) -> None:
        """Documents with their windows' vectors (:meth:`DocumentCollection.upsert`; the last of a repeated id
        wins): each document's row, then its windows' rows when it has several (:mod:`service.milvus_windows`)."""
        now = now_ms()
        rows = WindowVectors.of_documents(len(docs), self.dim, vectors, owners, spans)
        self.write([(doc, now) for doc in docs], rows, check=True)

    def write(self, rows: Sequence[tuple[Document, int]], vectors: np.ndarray | WindowVectors,
              check: bool = False) -> None:
        """Upsert documents with their ``updated_at`` (a re-embed keeps the original write time) and their
        vectors: one per document, or every window (:class:`training.chunking.WindowVectors`)."""
        if not isinstance(vectors, WindowVectors):
            vectors = WindowVectors.one_each(np.asarray(vectors, dtype=np.float32).reshape(len(rows), self.dim))
        keep = sorted({doc.id: i for i, (doc, _) in enumerate(rows)}.values())  # a repeated id: the last one wins
        rows, vectors = [rows[i] for i in keep], vectors.select(keep)
        first = windows.first_windows(vectors)
        data = []
        for (doc, updated_at), vector in zip(rows, first, strict=True):
            if len(doc.text.encode()) > MAX_TEXT_BYTES:
                raise TooLarge(f"document {doc.id!r}: text is {len(doc.text.encode())} bytes in UTF-8, "
                               f"Milvus stores at most {MAX_TEXT_BYTES}")
            data.append({"id": doc.id, "text": doc.text, "metadata": dict(doc.metadata),
                         "updated_at": updated_at, "vector": vector.tolist()})
            if self.analyzer is not None:
                data[-1][bm25.TERMS_FIELD] = bm25.terms_text(self.analyzer, doc.text)
        if check:
            self._check_serving()
        if data:
            self.store.call(self.client.upsert, self.name, data)
            if self.windows is not None:
                self.windows.write([doc for doc, _ in rows], vectors)

    def delete(self, ids: Sequence[str]) -> list[str]:
        self._check_serving()
        ids = list(dict.fromkeys(ids))
        found = {r["id"] for r in self.store.call(self.client.get, self.name, ids=ids, output_fields=["id"])}
        for name in self.store.versions():  # a collection being re-embedded must not keep it either
            self.store.call(self.client.delete, name, ids=ids)
            windows.MilvusWindows(self.store, name, self.dim, self.consistency).delete(ids, missing_ok=True)
        return [i for i in ids if i in found]

    def remove(self, ids: Sequence[str]) -> None:
        """Remove documents (and their windows) from this collection only (a re-embed's reconciliation)."""
        for start in range(0, len(ids), 1000):
            self.store.call(self.client.delete, self.name, ids=list(ids[start:start + 1000]))
        if self.windows is not None:
            self.windows.delete(list(ids))

    def _check_serving(self) -> None:
        """Writes go only to the collection the alias names: a replica still on an older model refuses
        them (503, retried elsewhere) once another replica switched, so the switch loses none."""
        serving = self.store.serving()
        if serving not in (None, self.name):
            raise IndexUnavailable(f"documents moved to {serving} (a newer model); this replica serves "
                                   f"{self.name} until it reloads: retry")

    def search(self, queries: np.ndarray, k: int, where: Mapping[str, object] | None = None) -> list[list[Hit]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        expr = milvus_filter(where) if where else ""
        if expr is None:
            return [[] for _ in range(len(queries))]
        results = self.store.call(self.client.search, self.name, data=queries.tolist(), limit=k, filter=expr,
                                  output_fields=["text", "metadata"], search_params=self.store.search_params(k),
                                  consistency_level=self.consistency)
        best = self.windows.search(queries, k, expr) if self.windows is not None else [{}] * len(results)
        merged = [windows.merge(row, chunked, k) for row, chunked in zip(results, best, strict=True)]
        docs = {h["id"]: Document(h["id"], h["entity"]["text"], h["entity"]["metadata"] or {})
                for row in results for h in row}
        docs.update(self.get_many([i for hits in merged for i, _, _ in hits if i not in docs]))
        # a window whose document is gone (deleted between the two searches) is left out
        return [[Hit(docs[i], score, span=span) for i, score, span in hits if i in docs] for hits in merged]

    @property
    def chunked(self) -> bool:
        return self.windows is not None

    def best_windows(self, query: np.ndarray, doc_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if self.windows is None or not doc_ids:
            return {}
        query = np.asarray(query, dtype=np.float32).reshape(1, self.dim)
        found = self.windows.search(query, len(doc_ids), f"doc_id in {quote(doc_ids)}")[0]
        return {doc_id: span for doc_id, (_, span) in found.items()}

    def documents(self, batch_size: int) -> Iterator[list[Document]]:
        for batch in self.rows(batch_size):
            yield [doc for doc, _ in batch]

    def rows(self, batch_size: int, expr: str = "") -> Iterator[list[tuple[Document, int]]]:
        """(document, updated_at) in batches, optionally filtered by a Milvus expression."""
        for batch in self.store._scan(self.name, ["id", *_FIELDS], expr, batch_size):
            yield [(Document(r["id"], r["text"], r["metadata"] or {}), int(r["updated_at"])) for r in batch]

    def updated(self, ids: Sequence[str]) -> dict[str, int]:
        rows = self.store.call(self.client.get, self.name, ids=list(ids), output_fields=["updated_at"])
        return {r["id"]: int(r["updated_at"]) for r in rows}

    def info(self) -> dict:
        return {"type": f"milvus {self.store.settings.milvus_index_type}", "backend": "milvus",
                "collection": self.name, "alias": self.store.alias, "documents": len(self),
                "model_version": self.model_version, "consistency": self.consistency, "read_only": False,
                "windows": len(self) + (self.windows.beyond_first() if self.windows is not None else 0),
                "chunking": windows.DESCRIPTION if self.windows is not None else "none: one vector per document",
                "lexical": "milvus bm25" if self.analyzer is not None else None}

    def lexical(self) -> bm25.MilvusLexical:
        """BM25 over this collection (see :mod:`service.milvus_lexical`)."""
        if self.analyzer is None:
            raise ValueError(f"collection {self.name} has no BM25 field (made by the previous release)")
        return bm25.MilvusLexical(self, self.analyzer)

    def ensure_loaded(self) -> None:
        """Reachable and loaded; collections a Milvus restart released (documents, windows) load again (readiness)."""
        for name in (self.name, *([self.windows.name] if self.windows is not None else [])):
            state = self.store.call(self.client.get_load_state, name)["state"]
            if "Loaded" not in str(state):
                log.warning("collection %s is %s: loading it", name, state)
                self.store.call(self.client.load_collection, name)

