"""Read-only index bundles: a corpus embedded once by a Job, published like a model, served by many replicas.

``python -m service build-index`` embeds the passages of QA files with a model bundle and publishes
``<registry>/<index name>/vNNNN/`` through :func:`export.registry.publish` (versioned, every file
sha256-checked, ``LATEST`` moved atomically). The bundle carries the model's files (hard links when
the registry allows) *and* the FAISS collection built with it::

    manifest.json      the model's facts + "index": {type, documents, rows, dimension, corpus, model, chunking,
                       lexical}
    model*.onnx, tokenizer.json, ...     the model that embedded the documents
    documents.jsonl, vectors.npy, [windows.json,] index.faiss   service.storage.bundle.save_collection
    lexical.sqlite3    the BM25 index (FTS5, ``--analyzer``), service.storage.bundle_lexical.save_lexical

A replica serves it with ``python -m service --registry R --name <index name>`` (the storage mode of
:mod:`service.storage.bundle`): model and vectors come from one bundle, so they always match. Document
writes answer 405 (the corpus changes by publishing a new version); the replica's LATEST watcher
(``--reload_interval``) loads a new version in the background and swaps model and index together, as for
a model reload.

Example::

    python -m service build-index --registry registry --model minilm --name faq-index \\
        --corpus examples/example_qa_data.json          # prints registry/faq-index/v0001
    python -m service --registry registry --name faq-index
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from training.analyzer import ANALYZER_NAMES, DEFAULT_ANALYZER, Analyzer

from .corpus import corpus_documents
from .index import Collection, IndexConfig
from .settings import INDEX_TYPES, Settings
from .storage.bundle import save_collection
from .storage.bundle_lexical import save_lexical

log = logging.getLogger("service.index_bundle")

# manifest entries that name one bundle (the index bundle gets its own from publish)
_IDENTITY = ("format", "name", "version", "created_at", "files")


def build(registry: Path, model: str, name: str, corpus: Sequence[Path], model_version: str | None = None,
          index: str = "auto", promote: bool = True, analyzer: str = DEFAULT_ANALYZER) -> Path:
    """Embed the passages of ``corpus`` with ``model``, index their words with ``analyzer``, and publish both
    as the next version of ``name``."""
    from export.bundle import open_bundle
    from export.registry import discard_staging, new_staging_dir, publish

    from .model import open_serving_model

    if index == "milvus":
        raise ValueError("an index bundle holds a FAISS index: --index must be a FAISS type")
    words = Analyzer.named(analyzer)
    source = open_bundle(registry, model, model_version)
    settings = Settings.build(registry=registry, name=model, version=source.version, warmup=False,
                              max_queue_size=4096, index=index)
    docs = corpus_documents(corpus)
    loaded = open_serving_model(settings)
    try:  # long passages as the service embeds them: every window (training.chunking)
        rows = asyncio.run(loaded.embed_documents([d.text for d in docs], bulk=True))
        chunking = loaded.chunking.describe()
    finally:
        loaded.close()
    collection = Collection.from_arrays(source.dimension, IndexConfig.from_settings(settings), source.version,
                                        docs, rows.vectors, owners=rows.owners, spans=rows.spans)
    staging = new_staging_dir(registry, name)
    try:
        for relative in source.manifest["files"]:  # the model travels with its vectors
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source.path / relative, target)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(source.path / relative, target)
        facts = {k: v for k, v in source.manifest.items() if k not in _IDENTITY}
        facts["index"] = {**save_collection(collection, staging), "corpus": [p.name for p in corpus],
                          "model": {"name": source.name, "version": source.version}, "chunking": chunking}
        facts["index"]["lexical"] = save_lexical(collection.live_rows()[0], staging, words)
        return publish(staging, facts, promote=promote)
    except BaseException:
        discard_staging(staging)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service build-index``: prints the published folder; exit 2 on bad input."""
    from export.bundle import BundleError
    from training.data import DataError

    p = argparse.ArgumentParser(prog="python -m service build-index",
                                description="Embed a corpus and publish it as a read-only index bundle.")
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--model", required=True, help="model bundle name in the registry")
    p.add_argument("--model_version", help="model version (default: its LATEST)")
    p.add_argument("--name", required=True, help="name of the index bundle (what replicas serve)")
    p.add_argument("--corpus", type=Path, nargs="+", required=True, help="QA files: their passages are indexed")
    p.add_argument("--index", default="auto", choices=[t for t in INDEX_TYPES if t != "milvus"])
    p.add_argument("--analyzer", default=DEFAULT_ANALYZER, choices=ANALYZER_NAMES,
                   help="lexical analyzer of the bundle's BM25 index (recorded in it; replicas query with it)")
    p.add_argument("--no_promote", action="store_true", help="publish without moving LATEST")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        folder = build(args.registry, args.model, args.name, args.corpus, args.model_version, args.index,
                       promote=not args.no_promote, analyzer=args.analyzer)
    except (BundleError, DataError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"published": str(folder)}), file=sys.stderr)
    print(folder)
    return 0
