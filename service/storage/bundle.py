"""The index-bundle mode: documents and vectors read from a published bundle, read-only.

An index bundle (built by ``python -m service build-index``, :mod:`service.index_bundle`) carries a
model and the FAISS collection that model embedded, so the two always match. Its files, next to
the model's::

    documents.jsonl   one JSON object per document: id, text, metadata (service.documents.Document)
    vectors.npy       float32 [rows, dimension]: one row per document (row i = line i of documents.jsonl),
                      or, when the model chunked long documents, one per window
    windows.json      only when chunked: {"owners": [line of documents.jsonl per row], "spans": [[start,
                      end] | null per row]} (:mod:`training.chunking`; rows of a document are contiguous)
    index.faiss       the trained FAISS index over those rows (read back, never retrained)
    lexical.sqlite3   the BM25 index of the documents (:mod:`.bundle_lexical`; absent in bundles of the
                      previous release, which then serve dense search only)

and the manifest's ``index`` section (``ModelSpec.index``): ``type``, ``documents``, ``dimension``,
``lexical`` (file, analyzer, documents; plus ``corpus`` and ``model``, for people). Document writes answer
405 (the corpus changes by publishing a new version); a reload loads the new version's collection instead
of re-embedding.
Feedback is still taken: into the SQLite store with ``--data_dir``, else in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ..documents import Document
from ..errors import ReadOnlyIndex
from ..index import Collection, IndexConfig, VectorIndex
from ..lexical import LexicalSource
from .base import Write
from .bundle_lexical import LEXICAL_FILE, BundleLexical, MissingLexical
from .journal import Journal, JournaledStorage

if TYPE_CHECKING:
    from ..backends.base import ModelSpec
    from ..generation import Generation
    from ..model import EmbeddingModel

log = logging.getLogger("service.storage")

SAVED = ("documents.jsonl", "vectors.npy", "index.faiss")  # + windows.json when chunked
WINDOWS = "windows.json"


def save_collection(collection: Collection, folder: Path) -> dict:
    """Write ``collection`` (tombstones compacted first) into ``folder`` as :data:`SAVED`; returns the
    manifest's ``index`` facts that :func:`load_collection` needs."""
    if collection.rows != collection.live_rows_count:
        collection.rebuild()
    docs, rows = collection.live_rows()
    with open(folder / "documents.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d.to_json(), ensure_ascii=False) + "\n")
    np.save(folder / "vectors.npy", rows.vectors, allow_pickle=False)
    chunked = len(rows.vectors) != len(docs) or any(span is not None for span in rows.spans)
    if chunked:
        (folder / WINDOWS).write_text(json.dumps({"owners": rows.owners.tolist(),
                                                  "spans": [list(s) if s else None for s in rows.spans]}))
    index = collection.index
    faiss.write_index(faiss.index_gpu_to_cpu(index.index) if index.device == "cuda" else index.index,
                      str(folder / "index.faiss"))
    return {"type": index.kind, "documents": len(docs), "rows": len(rows.vectors), "dimension": collection.dim}


def load_collection(folder: Path, facts: Mapping, config: IndexConfig, model_version: str) -> Collection:
    """The read-only collection :func:`save_collection` wrote into ``folder``."""
    dim = int(facts["dimension"])
    with open(folder / "documents.jsonl", encoding="utf-8") as f:
        docs = [Document.from_json(json.loads(line)) for line in f]
    owners = spans = None
    if (folder / WINDOWS).is_file():  # chunked; absent: one row per document (and every older bundle)
        windows = json.loads((folder / WINDOWS).read_text())
        owners = np.asarray(windows["owners"], dtype=np.int64)
        spans = [tuple(s) if s else None for s in windows["spans"]]
    vectors = np.load(folder / "vectors.npy", allow_pickle=False).reshape(-1, dim)
    index = VectorIndex(dim, facts["type"], config, prebuilt=faiss.read_index(str(folder / "index.faiss")))
    try:
        return Collection.from_arrays(dim, config, model_version, docs, vectors, read_only=True, prebuilt=index,
                                      owners=owners, spans=spans)
    except ValueError as exc:
        raise ValueError(f"{folder}: {exc}") from None


def _bundle_collection(spec: ModelSpec, config: IndexConfig) -> Collection:
    return load_collection(spec.bundle_path, spec.index, config, spec.version)


class BundleStorage(JournaledStorage):
    """Documents from the model's index bundle (read-only); feedback in the journal."""

    def __init__(self, settings, journal: Journal, index_config: IndexConfig) -> None:
        super().__init__(settings, journal)
        self.index_config = index_config
        self._specs: dict[str, ModelSpec] = {}  # model version → its bundle, for lexical_for
        self._lexical: dict[str, LexicalSource] = {}  # model version → its lexical source, closed in close()

    def _collection(self, spec: ModelSpec) -> Collection:
        self._specs[spec.version] = spec
        return _bundle_collection(spec, self.index_config)

    async def open(self, model: EmbeddingModel) -> Collection:
        await asyncio.to_thread(self.journal.recover)  # the data dir keeps feedback only
        collection = await asyncio.to_thread(self._collection, model.spec)
        self.journal.open_log(dirty=False)
        return collection

    async def next_collection(self, model: EmbeddingModel, old: Generation, status: dict) -> Collection:
        if not model.spec.index:
            raise ValueError(f"{model.spec.name}/{model.spec.version} is not an index bundle: this replica serves "
                             "read-only index bundles (restart it to serve a model)")
        status.update(state="loading index")
        return await asyncio.to_thread(self._collection, model.spec)

    def lexical_for(self, collection: Collection) -> LexicalSource:
        """The bundle's ``lexical.sqlite3``, read-only; without it, dense only (:class:`MissingLexical`)."""
        spec = self._specs[collection.model_version]
        if spec.version not in self._lexical:  # kept until close: a retired generation may still search it
            facts = spec.index.get("lexical")
            self._lexical[spec.version] = (BundleLexical(spec.bundle_path / facts.get("file", LEXICAL_FILE), facts)
                                           if facts else MissingLexical(f"{spec.name}/{spec.version}"))
        return self._lexical[spec.version]

    def close(self) -> None:
        for source in self._lexical.values():
            source.close()
        super().close()

    async def catch_up(self, new: Generation, writes: Sequence[Write]) -> None:
        """Nothing: no document writes are taken."""

    def refuse_writes(self, model: EmbeddingModel) -> None:
        raise ReadOnlyIndex(f"this replica serves the read-only index bundle {model.spec.name}/"
                            f"{model.spec.version}: publish a new version (python -m service build-index) instead")
