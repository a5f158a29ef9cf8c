"""``/search`` in three modes: dense (the model and the vector index), lexical (BM25) and hybrid (both, fused).

One request takes one :class:`~service.generation.Generation` and searches it as ``mode`` says:

* ``dense``: the queries are embedded and the collection returns its ``top_k`` nearest documents.
* ``lexical``: each query's analysed terms are looked up in the generation's lexical source (BM25); the model
  does not run at all.
* ``hybrid`` (the default): both sides give their best :data:`training.fusion.CANDIDATES` documents (or
  ``top_k``, when more) and :func:`training.fusion.weighted_fusion` (``α · dense + (1 − α) · lexical`` over
  per-query min-max normalised scores) or :func:`training.fusion.rrf_fusion` fuses them: the functions and the
  depth training uses to choose α, so the number it reports is what this returns. The lexical side runs in a
  small thread pool of its own (:data:`LEXICAL_THREADS`) while the query is embedded and the vector index
  searched: off the event loop, and never queued behind the index thread. A long document carries the span
  of its window nearest the query (``DocumentCollection.best_windows``) even when only the lexical side
  listed it; in lexical mode hits carry no span (the model does not run).

α: the request's ``alpha``, else ``--hybrid_alpha``, else the model bundle's (``manifest["fusion"]["alpha"]``,
chosen on data by training or export), else :data:`DEFAULT_ALPHA` (:func:`fusion_defaults`, once per
generation; ``/info`` shows which and where it came from).

A query that has no words left after analysis (only punctuation or symbols) searches dense only in hybrid mode
and finds nothing in lexical mode; each query's entry in :attr:`SearchOutcome.runs` says what ran and why.
A lexical hit naming a document the generation's collection does not hold (written to the store but not yet
applied, or deleted since) is dropped.

Filters (``where``) mean what they mean to the collections (:mod:`service.collection`). The dense side filters
in the collection; the lexical side reads the best :data:`FILTERED_LEXICAL_DEPTH` BM25 matches of a filtered
query and keeps those whose metadata passes: a matching document ranked below that depth by BM25 alone is
missed by the lexical side (the dense side may still find it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from training.fusion import CANDIDATES, RRF_K, check_alpha, rrf_fusion, weighted_fusion

from .collection import matches
from .documents import Document, Hit
from .errors import Unprocessable

if TYPE_CHECKING:
    from .backends.base import ModelSpec
    from .generation import Generation
    from .lexical import LexicalSource
    from .metrics import ServiceMetrics
    from .settings import Settings

log = logging.getLogger("service.search")

MODES = ("hybrid", "dense", "lexical")
FUSIONS = ("weighted", "rrf")
DEFAULT_ALPHA = 0.5  # neither the request, --hybrid_alpha nor the bundle says: both sides weigh the same
FILTERED_LEXICAL_DEPTH = 1000  # BM25 matches a filtered query's lexical side reads before filtering
LEXICAL_THREADS = 2
_LEXICAL_POOL = ThreadPoolExecutor(max_workers=LEXICAL_THREADS, thread_name_prefix="lexical")
NO_TERMS = "no words left to look up after analysis (only punctuation or symbols)"


@dataclass(frozen=True)
class FusionDefaults:
    """A generation's hybrid defaults: its α and where it came from (``setting``, ``bundle`` or ``default``)."""

    alpha: float
    alpha_source: str
    chosen_on: str | None = None  # what the bundle's α was chosen on (its training's held-out split, eval data)
    bundle_analyzer: dict | None = None  # the analyzer the bundle's α was chosen with
    warning: str | None = None  # that analyzer is not the one searching here


def fusion_defaults(settings: Settings, spec: ModelSpec, lexical: LexicalSource | None) -> FusionDefaults:
    """Resolve α for a generation serving ``spec`` (see the module docstring); logs a warning when the bundle's α
    was chosen with another analyzer than the lexical source's."""
    fusion = spec.fusion or {}
    analyzer = fusion.get("analyzer") if isinstance(fusion.get("analyzer"), dict) else None
    source = (lexical.info() or {}).get("analyzer") if lexical is not None else None
    warning = None
    if analyzer and source and analyzer != source:
        warning = (f"the bundle's alpha was chosen with analyzer {analyzer}, but lexical search here analyses with "
                   f"{source}: the alpha may not suit it (set --hybrid_alpha, or serve with the same --analyzer)")
        log.warning("%s/%s: %s", spec.name, spec.version, warning)
    common = {"chosen_on": fusion.get("chosen_on"), "bundle_analyzer": analyzer, "warning": warning}
    if settings.hybrid_alpha is not None:
        return FusionDefaults(settings.hybrid_alpha, "setting", **common)
    try:
        return FusionDefaults(check_alpha(float(fusion["alpha"])), "bundle", **common)
    except KeyError:
        pass
    except (TypeError, ValueError) as exc:
        log.warning("%s/%s: ignoring the manifest's fusion alpha %r: %s", spec.name, spec.version,
                    fusion.get("alpha"), exc)
    return FusionDefaults(DEFAULT_ALPHA, "default", **common)


def search_info(settings: Settings, gen: Generation | None) -> dict:
    """``/info``'s ``search`` section."""
    defaults: FusionDefaults | None = gen.fusion if gen is not None else None  # type: ignore[assignment]
    lexical = gen.lexical.info() if gen is not None and gen.lexical is not None else None
    return {"modes": list(MODES), "default_mode": MODES[0], "fusion": FUSIONS[0], "fusions": list(FUSIONS),
            "alpha": defaults.alpha if defaults else settings.hybrid_alpha,
            "alpha_source": defaults.alpha_source if defaults else None,
            "alpha_chosen_on": defaults.chosen_on if defaults else None,
            "alpha_analyzer": defaults.bundle_analyzer if defaults else None,
            "warning": defaults.warning if defaults else None,
            "candidates": CANDIDATES, "rrf_k": RRF_K, "filtered_lexical_depth": FILTERED_LEXICAL_DEPTH,
            "lexical": lexical}


@dataclass(frozen=True)
class SearchOptions:
    """What a request asks of a search beyond its queries: ``mode``, ``alpha`` (None: the default), ``fusion``."""

    mode: str = "hybrid"
    alpha: float | None = None
    fusion: str = "weighted"


@dataclass(frozen=True)
class QueryRun:
    """What ran for one query: ``mode`` (hybrid, dense or lexical), its analysed ``terms`` (None when the lexical
    side did not run) and a ``note`` when it ran otherwise than asked."""

    mode: str
    terms: list[str] | None = None
    note: str | None = None

    def to_json(self) -> dict:
        return {"mode": self.mode, "terms": self.terms, "note": self.note}


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[list[Hit]]  # one list per query, best first
    runs: list[QueryRun]  # one per query
    fusion: dict | None  # hybrid: method, alpha, alpha_source, candidates (rrf: k)
    timings: dict


@dataclass(frozen=True)
class _Lexical:
    """One query's lexical side: ``(document, BM25 score)`` best first, its terms, or why it could not run."""

    hits: list[tuple[Document, float]]
    terms: tuple[str, ...] = ()
    unavailable: str | None = None


def _lexical_side(gen: Generation, queries: Sequence[str], k: int, where: Mapping | None) -> list[_Lexical]:
    """Blocking, in the lexical pool: each query's best ``k`` lexical hits the collection holds (and ``where``
    passes)."""
    depth = max(k, FILTERED_LEXICAL_DEPTH) if where else k
    get_many = getattr(gen.collection, "get_many", None)  # a remote collection may look ids up in one call
    out = []
    for query in queries:
        try:
            if gen.lexical is None:
                raise Unprocessable("lexical search is not available with this storage")
            result = gen.lexical.search(query, depth)
        except Unprocessable as exc:  # this storage has no lexical index (e.g. a bundle of the previous release)
            out.append(_Lexical([], unavailable=exc.message))
            continue
        ids = [doc_id for doc_id, _ in result.hits]
        docs = get_many(ids) if get_many is not None else {i: gen.collection.get(i) for i in ids}
        hits = []
        for doc_id, score in result.hits:
            doc = docs.get(doc_id)
            if doc is not None and (not where or matches(doc.metadata, where)):
                hits.append((doc, score))
                if len(hits) == k:
                    break
        out.append(_Lexical(hits, result.terms))
    return out


async def run_search(gen: Generation, queries: Sequence[str], top_k: int, where: Mapping | None,
                     options: SearchOptions, metrics: ServiceMetrics | None = None,
                     disconnected: Callable[[], Awaitable[object]] | None = None) -> SearchOutcome:
    """Search ``gen`` as ``options`` say (see the module docstring); the caller holds ``gen`` for the call."""
    mode = options.mode
    if mode not in MODES or options.fusion not in FUSIONS:
        raise Unprocessable(f"mode must be one of {', '.join(MODES)} and fusion one of {', '.join(FUSIONS)}")
    if options.alpha is not None:
        try:
            check_alpha(options.alpha)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from None
    depth = top_k if mode == "dense" else max(top_k, CANDIDATES)
    lexical = None
    if mode != "dense":
        lexical = asyncio.get_running_loop().run_in_executor(_LEXICAL_POOL, _lexical_side, gen, queries, depth, where)
        lexical_t0 = time.perf_counter()
    timings: dict = {}
    try:
        if mode == "lexical":
            sides = await lexical
            timings["lexical_s"] = time.perf_counter() - lexical_t0
            hits, runs = [], []
            for side in sides:
                if side.unavailable:
                    raise Unprocessable(side.unavailable)
                hits.append([Hit(doc, score, None, score) for doc, score in side.hits[:top_k]])
                runs.append(QueryRun("lexical", list(side.terms), None if side.terms else f"{NO_TERMS}: no hits"))
            return SearchOutcome(hits, runs, None, timings)
        result, tokenize_s = await gen.model.embed(queries, is_query=True, disconnected=disconnected)
        timings.update(tokenize_s=tokenize_s, queue_s=result.queue_s, inference_s=result.inference_s,
                       tokens=result.tokens)
        t0 = time.perf_counter()
        dense = await gen.search(result.vectors, depth, where)
        if mode == "dense":
            timings["search_s"] = time.perf_counter() - t0
            if metrics is not None:
                metrics.search_duration.observe(timings["search_s"])
            return SearchOutcome([[replace(h, dense_score=h.score) for h in row[:top_k]] for row in dense],
                                 [QueryRun("dense")] * len(queries), None, timings)
        sides = await lexical
        lexical = None
        timings["lexical_s"] = time.perf_counter() - lexical_t0
    finally:
        if lexical is not None:  # the embedding failed or the client left: retrieve its outcome, done or not
            lexical.add_done_callback(lambda f: f.cancelled() or f.exception())
    defaults = gen.fusion if isinstance(gen.fusion, FusionDefaults) else FusionDefaults(DEFAULT_ALPHA, "default")
    alpha = options.alpha if options.alpha is not None else defaults.alpha
    hits, runs = [], []
    for vector, row, side in zip(result.vectors, dense, sides, strict=True):
        if side.unavailable or not side.terms:
            hits.append([replace(h, dense_score=h.score) for h in row[:top_k]])
            runs.append(QueryRun("dense", None if side.unavailable else [],
                                 f"{side.unavailable or NO_TERMS}: dense search only"))
            continue
        found = {h.doc.id: h for h in row}
        docs = {doc.id: doc for doc, _ in side.hits}
        ranked_dense = [(h.doc.id, h.score) for h in row]
        ranked_lexical = [(doc.id, score) for doc, score in side.hits]
        fused = (weighted_fusion(ranked_dense, ranked_lexical, alpha, limit=top_k) if options.fusion == "weighted"
                 else rrf_fusion(ranked_dense, ranked_lexical, limit=top_k))
        # a long document only the lexical side listed still points at its best window (by the query's vector)
        lexical_only = [f.key for f in fused if f.key not in found] if gen.collection.chunked else []
        spans = await gen.run(gen.collection.best_windows, vector, lexical_only) if lexical_only else {}
        hits.append([Hit(found[f.key].doc if f.key in found else docs[f.key], f.score, f.dense_score,
                         f.lexical_score, found[f.key].span if f.key in found else spans.get(f.key)) for f in fused])
        runs.append(QueryRun("hybrid", list(side.terms)))
    timings["search_s"] = time.perf_counter() - t0
    if metrics is not None:
        metrics.search_duration.observe(timings["search_s"])
    weighted = options.fusion == "weighted"
    source = "request" if options.alpha is not None else defaults.alpha_source
    fusion = {"method": options.fusion, "alpha": alpha if weighted else None,
              "alpha_source": source if weighted else None, "k": None if weighted else RRF_K, "candidates": depth}
    return SearchOutcome(hits, runs, fusion, timings)
