"""Lexical (BM25) search with ``--index milvus``: Milvus's own BM25 function over the deployment's analysed terms.

Every document collection this release creates in Milvus (:meth:`service.milvus.MilvusStore.open`) has, next
to ``text`` and ``vector``:

    terms    VARCHAR, enable_analyzer: the document's terms as :class:`training.analyzer.Analyzer` (``--analyzer``)
             makes them, joined by spaces
    sparse   SPARSE_FLOAT_VECTOR, the output of a ``FunctionType.BM25`` function over ``terms``
             (index SPARSE_INVERTED_INDEX, metric BM25)

and records the analyzer's description in the collection property ``qaembed.analyzer``: opening it with another
``--analyzer`` is refused (:class:`training.analyzer.AnalyzerError`) instead of answering queries analysed
differently from its documents. Its rows are one per document: the windows of a long document live in another
collection (:mod:`service.milvus_windows`), because Milvus counts every row of a collection in BM25's statistics
(the number of documents, their average length).

Why the terms are analysed here and not by a Milvus analyzer (``standard`` tokenizer + ``lowercase`` +
``stemmer: turkish``): Milvus's ``lowercase`` filter lowercases ``I`` to ``i`` and ``İ`` to ``i`` + U+0307 (the
language-neutral Unicode mapping), where Turkish needs ``I``→``ı`` and ``İ``→``i``, so ``IŞIK`` and ``ışık``
would be two words; and the ``tr`` analyzer stems by 5-character prefixes, measured better than snowball
Turkish (docs/benchmarks/lexical.md). Analysing with the same :class:`Analyzer` as the SQLite FTS5 index
(local, in-memory and bundle modes) makes every backend's BM25 see exactly the same terms.

Milvus Lite 3.2.2 has no ``whitespace`` tokenizer (only ``standard`` and ``jieba``), so ``terms`` uses
``standard`` with no filters. It splits only at characters that are not letters or digits, and an analyzer term
is made of letters and digits only, so each term stays exactly one Milvus token (Turkish, CJK, Thai and Arabic
terms checked in ``tests/test_milvus_hybrid.py``); the terms are already lowercase, so its case handling changes
nothing.

Scores: Milvus Lite returns the BM25 score negated as the ``distance`` (best first, most negative first); a
Milvus server returns it positive. BM25 scores are never negative, so ``abs(distance)`` is the score either way
(higher is better, as :class:`service.lexical.LexicalSource` promises). Their scale differs from FTS5's
``bm25()`` (another IDF formula); the fusion normalises each side per query (min-max), so only the order and the
relative gaps count. Fusion itself is done by the service (:mod:`service.search`, :mod:`training.fusion`), not
by Milvus's hybrid search: its ``WeightedRanker`` normalises scores with arctan, not the per-query min-max that
training chose α with, so the same α would mean something else on Milvus.

Query text is only ever words: it goes through the analyzer and the terms are handed to Milvus as the text of
a BM25 query (no filter expression, no syntax): ``"``, ``*``, ``AND``, ``NEAR`` or ``-`` are punctuation the
analyzer drops or plain words.
"""

from __future__ import annotations

import json
from typing import Any

from training.analyzer import Analyzer

from .lexical import LexicalHits, LexicalSource

TERMS_FIELD = "terms"
SPARSE_FIELD = "sparse"
BM25_FUNCTION = "bm25"
ANALYZER_PROPERTY = "qaembed.analyzer"
MILVUS_ANALYZER = {"tokenizer": "standard"}  # see the module docstring: the terms come analysed
MAX_TERMS_BYTES = 65_535  # Milvus VARCHAR limit


def add_lexical_fields(pymilvus: Any, schema: Any, index: Any) -> None:
    """Add ``terms`` → BM25 → ``sparse`` (field, function, index) to a collection schema being created."""
    schema.add_field(TERMS_FIELD, pymilvus.DataType.VARCHAR, max_length=MAX_TERMS_BYTES, enable_analyzer=True,
                     analyzer_params=MILVUS_ANALYZER)
    schema.add_field(SPARSE_FIELD, pymilvus.DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(pymilvus.Function(name=BM25_FUNCTION, function_type=pymilvus.FunctionType.BM25,
                                          input_field_names=[TERMS_FIELD], output_field_names=[SPARSE_FIELD]))
    index.add_index(SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")


def has_lexical_fields(described: dict) -> bool:
    """Whether a collection (``describe_collection``) has the BM25 field: the previous release's have none."""
    return any(f["name"] == SPARSE_FIELD for f in described.get("fields", []))


def recorded_analyzer(properties: dict) -> Analyzer | None:
    """The analyzer a collection records (``None``: it records none)."""
    stored = properties.get(ANALYZER_PROPERTY)
    return Analyzer.from_description(json.loads(stored)) if stored else None


def analyzer_property(analyzer: Analyzer) -> str:
    return json.dumps(analyzer.describe(), sort_keys=True)


def terms_text(analyzer: Analyzer, text: str) -> str:
    """The ``terms`` value of a document: its analysed terms joined by spaces. A text whose terms take more than
    Milvus's VARCHAR limit in UTF-8 (possible only near the 64 KB text limit: Turkish ``I``→``ı`` doubles a byte)
    keeps the terms that fit, from the start."""
    joined = " ".join(analyzer.terms(text))
    if len(joined.encode()) <= MAX_TERMS_BYTES:
        return joined
    return joined.encode()[:MAX_TERMS_BYTES].decode(errors="ignore").rsplit(" ", 1)[0]


class MilvusLexical(LexicalSource):
    """BM25 over one Milvus collection's ``sparse`` field (a :class:`service.milvus.MilvusCollection`)."""

    def __init__(self, collection: Any, analyzer: Analyzer) -> None:
        self.collection, self.analyzer = collection, analyzer

    def search(self, query: str, k: int) -> LexicalHits:
        terms = tuple(dict.fromkeys(self.analyzer.terms(query)))  # each once: an OR of terms, as FTS5 ranks
        if not terms:
            return LexicalHits([], terms)
        c = self.collection
        results = c.store.call(c.client.search, c.name, data=[" ".join(terms)], anns_field=SPARSE_FIELD, limit=k,
                               search_params={"metric_type": "BM25"}, consistency_level=c.consistency)
        hits = [(str(h["id"]), abs(float(h["distance"]))) for h in results[0]]
        return LexicalHits(sorted(hits, key=lambda hit: -hit[1]), terms)

    def info(self) -> dict:
        return {"engine": "milvus bm25", "analyzer": self.analyzer.describe(), "collection": self.collection.name}
