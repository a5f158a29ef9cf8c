"""The serving engine: the current (model, collection) generation, writes, snapshots and reloads.

A :class:`Generation` pairs one model with the collection its documents were embedded by. Every
request takes the current generation once and uses it for both embedding and searching, so no
query embedded by one model is ever searched in an index built by another. A reload builds a
complete new generation (re-embedding every document with the new model) while the old one keeps
serving, catches up on writes made meanwhile, then swaps the reference; the old generation is
closed when its last request finishes.

Writes (upsert/delete/feedback) are serialised by one lock: embed → append to the WAL + fsync →
apply to the collection → acknowledge.

Where documents live is the collection's business (:mod:`service.collection`): the embedded FAISS
collection made durable by the service's WAL (default), Milvus (``--index milvus``: no WAL, no
data dir; a model change re-embeds into the new version's collection and switches the alias, see
:mod:`service.milvus`), or a read-only index bundle (:mod:`service.index_bundle`: writes are
refused, a reload loads the new bundle's collection instead of re-embedding).

With ``--reload_interval`` the engine polls ``<registry>/<name>/LATEST`` and reloads when LATEST moves
to another version than the one serving (a promotion or a rollback). It acts once per move: a version
that fails to load is logged, counted in ``qaembed_reloads_total{result="failed"}`` and not retried until
LATEST moves again (``POST /admin/reload`` retries it at once), and a version loaded by hand
(``POST /admin/reload {"version": ...}``) keeps serving until LATEST moves.

Example::

    >>> engine = Engine(settings, metrics)                         # doctest: +SKIP
    >>> await engine.start()                                        # doctest: +SKIP
    >>> await engine.upsert([DocIn(None, "Ankara is the capital.", {})])   # doctest: +SKIP
    ['3f2a...']
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np

from . import feedback as feedback_records
from .collection import Document, DocumentCollection, Hit
from .errors import (
    IndexUnavailable,
    NotFound,
    NotReady,
    Overloaded,
    ReadOnlyIndex,
    ServiceError,
    StorageUnavailable,
    Unprocessable,
)
from .index import Collection, IndexConfig
from .index_bundle import load_collection
from .metrics import ServiceMetrics
from .model import EmbeddingModel, load_model
from .settings import Settings
from .store import DurableStore, WriteFailed

log = logging.getLogger("service.engine")

ModelLoader = Callable[[Settings, ServiceMetrics, "str | None"], EmbeddingModel]


@dataclass(frozen=True)
class DocIn:
    id: str | None
    text: str
    metadata: Mapping[str, object] = field(default_factory=dict)


class ReloadBusy(ServiceError):
    status, type = 409, "reload_in_progress"


class StartFailed(ServiceError):
    """The start failed (``/health``): the replica cannot serve until it is restarted."""

    status, type = 503, "failed"


class StorageFailed(ServiceError):
    """The storage refuses writes until a restart recovers it from the disk (``/health``)."""

    status, type = 503, "storage_failed"


@dataclass(frozen=True)
class Embedded:
    """What :meth:`Engine.embed` returns: unit vectors (float32 ``[n, dim]``) and how they were made."""

    vectors: np.ndarray
    tokens: int
    timings: dict  # tokenize_s, queue_s, inference_s
    model_name: str


class Generation:
    """A model and the collection embedded with it, plus the single thread that touches the index."""

    def __init__(self, model: EmbeddingModel, collection: DocumentCollection, search_threads: int = 1) -> None:
        self.model = model
        self.collection = collection
        # OpenMP's thread count is per calling thread: set it in the index thread itself (left at the
        # default, FAISS spins up a team per search that fights inference for the cores).
        self._executor = ThreadPoolExecutor(max_workers=collection.workers,
                                            thread_name_prefix=f"index-{model.spec.version}",
                                            initializer=faiss.omp_set_num_threads, initargs=(search_threads,))
        self.users = 0
        self.retired = False
        self.closed = False
        self._searches: list[tuple[np.ndarray, int, asyncio.Future]] = []
        self._searching = False

    async def search(self, vectors: np.ndarray, k: int, where: Mapping | None) -> list[list[Hit]]:
        """Search on the index thread; unfiltered searches that arrive while one runs are coalesced
        into a single multi-query FAISS call (one matrix product instead of many)."""
        if where:
            return await self.run(self.collection.search, vectors, k, where)
        future = asyncio.get_running_loop().create_future()
        self._searches.append((vectors, k, future))
        if not self._searching:
            self._searching = True
            asyncio.get_running_loop().create_task(self._drain_searches())
        return await future

    async def _drain_searches(self) -> None:
        try:
            while self._searches:
                batch, self._searches = self._searches, []
                queries = np.concatenate([v for v, _, _ in batch])
                try:
                    hits = await self.run(self.collection.search, queries, max(k for _, k, _ in batch), None)
                except Exception as exc:  # hand the failure to every waiting request
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                row = 0
                for vectors, k, future in batch:
                    if not future.done():
                        future.set_result([h[:k] for h in hits[row:row + len(vectors)]])
                    row += len(vectors)
        finally:
            self._searching = False

    @property
    def version(self) -> str:
        return self.model.spec.version

    async def run(self, fn: Callable, *args):
        """Run ``fn`` on this generation's index thread(s) (FAISS GPU indexes need one thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.model.close()
        self._executor.shutdown(wait=True)
        self.collection.close()


def corpus_id(text: str) -> str:
    """Stable id for a corpus passage, so loading the same corpus again changes nothing."""
    return "c-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class Engine:
    def __init__(self, settings: Settings, metrics: ServiceMetrics,
                 model_loader: ModelLoader | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = model_loader or (lambda s, m, v: load_model(s, m, version=v))
        self.index_config = IndexConfig.from_settings(settings)
        self.gen: Generation | None = None
        self.state = "starting"
        self.error: str | None = None
        self.store: DurableStore | None = None
        self.milvus = None  # service.milvus.MilvusStore with --index milvus
        self.waiting_for: str | None = None  # what a start is waiting for (shown by /ready)
        self._write_lock = asyncio.Lock()
        self._pending: list[tuple] | None = None  # writes made while a reload re-embeds
        self._reload_task: asyncio.Task | None = None
        self._snapshot_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._feedback: list[dict] = []  # without --data_dir only: in memory, like the documents
        self.reload_status: dict = {"state": "idle"}
        self.watch_status: dict = {"interval_s": settings.latest_poll_s}
        self.started_at = time.time()
        faiss.omp_set_num_threads(settings.index_threads)
        # exact search of a few coalesced queries: one BLAS matrix product reads the vectors once
        faiss.cvar.distance_compute_blas_threshold = 2

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.gen is not None

    async def start(self) -> None:
        """Load the model, recover stored documents, load the corpus; then ready."""
        try:
            await self._start()
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("start failed")
            raise

    async def _start(self) -> None:
        s = self.settings
        model = await asyncio.to_thread(self.loader, s, self.metrics, s.version)
        bundled = bool(model.spec.extra.get("index"))
        if s.index == "milvus" and bundled:
            raise ValueError(f"{model.spec.name} is a read-only FAISS index bundle: serve it without --index milvus")
        if s.index == "milvus":
            await self._connect_milvus()
            collection = await self._milvus_collection(model, switch=True)
            self.gen = Generation(model, collection, self.settings.index_threads)
            if s.data_dir is not None:
                log.warning("--data_dir is not used with --index milvus: documents and feedback live in Milvus")
        else:
            await self._start_embedded(model, bundled)
        self._publish_model()
        if s.corpus and not bundled:
            await self._load_corpus()
        self.metrics.documents.set(await self.gen.run(len, self.gen.collection))
        self.state = "ready"
        self.metrics.ready.set(1)
        log.info("ready: %s", {k: v for k, v in self.gen.collection.info().items() if k != "model_version"})
        if s.latest_poll_s > 0 and s.registry is not None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_latest(s.latest_poll_s))
        elif s.version is not None and s.reload_interval:
            log.warning("--version %s is pinned: --reload_interval is ignored", s.version)

    async def _connect_milvus(self) -> None:
        """Connect, retrying until ``--ready_timeout_s``: Milvus may start after the replicas."""
        from .milvus import MilvusStore  # pymilvus only with --index milvus

        deadline = time.monotonic() + self.settings.ready_timeout_s
        while True:
            try:
                self.milvus = await asyncio.to_thread(MilvusStore, self.settings)
                await asyncio.to_thread(self.milvus.ping)
                self.waiting_for = None
                return
            except IndexUnavailable as exc:
                if self.waiting_for != exc.message:
                    log.warning("waiting for Milvus: %s", exc.message)
                self.waiting_for = exc.message
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)

    async def _milvus_source(self, target):
        """The collection the alias names when it is not ``target`` (another model's vectors), else None."""
        serving = await asyncio.to_thread(self.milvus.serving)
        return await asyncio.to_thread(self.milvus.attach, serving) if serving not in (None, target.name) else None

    async def _milvus_collection(self, model: EmbeddingModel, switch: bool,
                                 progress: Callable[[int], None] | None = None):
        """The Milvus collection of ``model``'s version, brought up to date with the one serving now
        (re-embedding what it lacks); with ``switch`` the alias moves to it at once."""
        from .milvus import fill

        target = await asyncio.to_thread(self.milvus.open, model.spec.version, model.dimension)
        source = await self._milvus_source(target)
        embedded = await fill(source, target, model.embed_bulk, model.bulk_chunk, progress)
        if source is not None:
            log.info("collection %s: %d documents re-embedded from %s", target.name, embedded, source.name)
        if switch:
            await self._milvus_switch(model, target)
        return target

    async def _milvus_switch(self, model: EmbeddingModel, target) -> None:
        """Move the alias to ``target``, then re-embed what was written to the old collection since the
        last pass (this replica's writes during a reload, other replicas' until they saw the switch)."""
        from .milvus import fill

        source = await self._milvus_source(target)
        await asyncio.to_thread(self.milvus.switch, target)
        caught_up = await fill(source, target, model.embed_bulk, model.bulk_chunk)
        if caught_up:
            log.info("collection %s: %d recent writes caught up", target.name, caught_up)

    async def _start_embedded(self, model: EmbeddingModel, bundled: bool) -> None:
        """FAISS in process: from a read-only index bundle, or recovered from --data_dir (re-embedding
        what another model version embedded)."""
        s = self.settings
        docs: list[Document] = []
        vectors = np.empty((0, model.dimension), np.float32)
        stale: list[Document] = []
        replayed = 0
        if s.data_dir is not None:
            self.store = DurableStore(s.data_dir)
            state = await asyncio.to_thread(self.store.recover)
            replayed = state.replayed
            if bundled:  # the data dir holds feedback only; documents come from the bundle
                state.docs.clear()
            fresh_vectors = []
            for doc_id, d in state.docs.items():
                doc = Document(doc_id, d.text, d.metadata)
                if (d.vector is not None and d.model_version == model.spec.version
                        and len(d.vector) == model.dimension):
                    docs.append(doc)
                    fresh_vectors.append(d.vector)
                else:
                    stale.append(doc)
            if fresh_vectors:
                vectors = np.stack(fresh_vectors).astype(np.float32)
            log.info("recovered %d documents (snapshot seq %d, %d WAL records replayed, %d to re-embed)",
                     len(state.docs), state.snapshot_seq, state.replayed, len(stale))
        elif not bundled:
            log.warning("no --data_dir: documents live in memory only and are lost on restart")
        if stale:
            t0 = time.perf_counter()
            new = await model.embed_bulk([d.text for d in stale])
            docs += stale
            vectors = np.concatenate([vectors, new]) if len(vectors) else new
            log.info("re-embedded %d documents with %s in %.1fs", len(stale), model.spec.version,
                     time.perf_counter() - t0)
        if bundled:
            collection = await asyncio.to_thread(load_collection, model.spec, self.index_config)
        else:
            collection = await asyncio.to_thread(Collection.from_arrays, model.dimension, self.index_config,
                                                 model.spec.version, docs, vectors)
        self.gen = Generation(model, collection, self.settings.index_threads)
        if self.store is not None:
            self.store.open_log()
            if stale or replayed:
                await self.snapshot()

    async def _load_corpus(self) -> None:
        from training.data import load_qa_data  # torch-free

        data = await asyncio.to_thread(load_qa_data, list(self.settings.corpus))
        sources = ",".join(p.name for p in self.settings.corpus)
        gen = self.gen
        new = [DocIn(corpus_id(text), text, {"source": sources}) for text in data.passages
               if (await gen.run(gen.collection.get, corpus_id(text))) is None]
        step = gen.model.bulk_chunk
        for start in range(0, len(new), step):
            while True:
                try:
                    await self.upsert(new[start:start + step], internal=True)
                    break
                except Overloaded:
                    await asyncio.sleep(0.05)
        log.info("corpus: %d passages, %d new", len(data.passages), len(new))

    def _publish_model(self) -> None:
        info = self.gen.model.info()
        self.metrics.set_model(info["name"], info["version"], info["variant"], info["backend"], info["device"])

    async def stop(self) -> None:
        """Graceful: stop reloads, snapshot if the log grew, close the log, finish queued inference."""
        self.state = "stopping"
        self.metrics.ready.set(0)
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(BaseException):
                await self._watch_task
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reload_task
        if self._snapshot_task is not None:
            with contextlib.suppress(BaseException):
                await self._snapshot_task
        if self.store is not None and self.gen is not None and self.store.records_since_snapshot:
            with contextlib.suppress(Exception):
                await self.snapshot()
        if self.store is not None:
            self.store.close()
        if self.gen is not None:
            await asyncio.to_thread(self.gen.close)
        if self.milvus is not None:
            self.milvus.close()

    # ------------------------------------------------------------------ generations
    @contextlib.asynccontextmanager
    async def use(self, internal: bool = False):
        """The current generation, kept open until the block ends (even if a reload swaps it)."""
        gen = self.gen
        if gen is None or (self.state not in ("ready", "stopping") and not internal):
            raise NotReady("the service is not ready yet" if self.state == "starting" else
                           f"the service is {self.state}")
        gen.users += 1
        try:
            yield gen
        finally:
            gen.users -= 1
            if gen.retired and gen.users == 0:
                asyncio.get_running_loop().run_in_executor(None, gen.close)

    # ------------------------------------------------------------------ reads
    async def embed(self, texts: Sequence[str], *, is_query: bool = False, truncate: bool = True,
                    truncation_direction: str = "right", dimensions: int | None = None,
                    disconnected: Callable[[], Awaitable[object]] | None = None) -> Embedded:
        """Embed with the current model; ``dimensions`` other than the model's is a 422 (it cannot shorten)."""
        async with self.use() as gen:
            if dimensions is not None and dimensions != gen.model.dimension:
                raise Unprocessable(f"dimensions must be {gen.model.dimension} (this model cannot shorten)")
            result, tokenize_s = await gen.model.embed(texts, is_query=is_query, truncate=truncate,
                                                       truncation_direction=truncation_direction,
                                                       disconnected=disconnected)
            return Embedded(result.vectors, result.tokens, {"tokenize_s": tokenize_s, "queue_s": result.queue_s,
                                                            "inference_s": result.inference_s},
                            gen.model.spec.name)

    async def search(self, queries: Sequence[str], top_k: int, where: Mapping | None,
                     disconnected: Callable[[], Awaitable[object]] | None = None) -> tuple[list[list[Hit]], dict]:
        async with self.use() as gen:
            result, tokenize_s = await gen.model.embed(queries, is_query=True, disconnected=disconnected)
            t0 = time.perf_counter()
            hits = await gen.search(result.vectors, top_k, where)
            search_s = time.perf_counter() - t0
            self.metrics.search_duration.observe(search_s)
            return hits, {"tokenize_s": tokenize_s, "queue_s": result.queue_s,
                          "inference_s": result.inference_s, "search_s": search_s, "tokens": result.tokens}

    async def get(self, doc_id: str) -> Document:
        async with self.use() as gen:
            doc = await gen.run(gen.collection.get, doc_id)
        if doc is None:
            raise NotFound(f"no document with id {doc_id!r}")
        return doc

    # ------------------------------------------------------------------ writes
    async def upsert(self, docs: Sequence[DocIn], disconnected: Callable[[], Awaitable[object]] | None = None,
                     internal: bool = False) -> list[str]:
        """Embed, log durably, index; returns the ids once the write is on disk."""
        items = [(d.id or uuid.uuid4().hex, d.text, dict(d.metadata or {})) for d in docs]
        texts = [t for _, t, _ in items]
        while True:
            async with self.use(internal) as gen:
                self._check_writable(gen)
                result, _ = await gen.model.embed(texts, disconnected=disconnected)
                async with self._write_lock:
                    if gen is not self.gen:  # a reload swapped models meanwhile: embed again
                        continue
                    if self.store is not None:
                        await self._log(self.store.append_upsert, items, result.vectors, gen.version)
                    await gen.run(gen.collection.upsert, items, result.vectors)
                    if self._pending is not None:
                        self._pending.append(("upsert", items))
                    self.metrics.documents.set(await gen.run(len, gen.collection))
                    self._maybe_snapshot()
                return [i for i, _, _ in items]

    @staticmethod
    async def _log(append: Callable, *args) -> None:
        """Durably log a write, off the event loop; a log that cannot take it is the client's 503."""
        try:
            await asyncio.to_thread(append, *args)
        except WriteFailed as exc:
            raise StorageUnavailable(f"the write was not stored: {exc}") from None

    @staticmethod
    def _check_writable(gen: Generation) -> None:
        if gen.collection.read_only:
            raise ReadOnlyIndex(f"this replica serves the read-only index bundle {gen.model.spec.name}/"
                                f"{gen.version}: publish a new version (python -m service build-index) instead")

    async def delete(self, doc_id: str) -> None:
        async with self.use() as gen, self._write_lock:
            gen = self.gen
            self._check_writable(gen)
            if await gen.run(gen.collection.get, doc_id) is None:
                raise NotFound(f"no document with id {doc_id!r}")
            if self.store is not None:
                await self._log(self.store.append_delete, [doc_id])
            await gen.run(gen.collection.delete, [doc_id])
            if self._pending is not None:
                self._pending.append(("delete", [doc_id]))
            self.metrics.documents.set(await gen.run(len, gen.collection))
            self._maybe_snapshot()

    # ------------------------------------------------------------------ feedback
    async def add_feedback(self, query: str, doc_id: str, shown_ids: Sequence[str], label: str) -> int:
        """Validate against the current documents and store durably; returns the number of shown
        documents recorded. 404 for an unknown ``doc_id``, 422 for unknown ``shown_ids``."""
        async with self.use() as gen, self._write_lock:
            gen = self.gen
            doc = await gen.run(gen.collection.get, doc_id)
            if doc is None:
                raise NotFound(f"no document with id {doc_id!r}")
            shown = {i: await gen.run(gen.collection.get, i) for i in dict.fromkeys(shown_ids)}
            unknown = [i for i, d in shown.items() if d is None]
            if unknown:
                raise Unprocessable(f"shown_ids: no document with id {', '.join(map(repr, unknown[:5]))}"
                                    + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
            record = feedback_records.make_record(query, (doc.id, doc.text),
                                                  [(d.id, d.text) for d in shown.values()], label)
            if self.milvus is not None:  # where every replica and the retraining Job read it
                await asyncio.to_thread(self.milvus.add_feedback, record)
            elif self.store is not None:
                await self._log(self.store.append_feedback, record)
                self._maybe_snapshot()
            else:
                self._feedback.append(record)
            self.metrics.feedback.labels(label).inc()
            return len(shown)

    async def feedback(self) -> list[dict]:
        """Every feedback record stored, oldest first."""
        async with self.use():
            if self.milvus is not None:
                return await asyncio.to_thread(self.milvus.read_feedback)
            if self.store is None:
                return list(self._feedback)
            return await asyncio.to_thread(self.store.read_feedback)

    # ------------------------------------------------------------------ snapshots
    def _maybe_snapshot(self) -> None:
        if (self.store is not None and self.store.records_since_snapshot >= self.settings.snapshot_every
                and (self._snapshot_task is None or self._snapshot_task.done())):
            self._snapshot_task = asyncio.get_running_loop().create_task(self.snapshot())

    async def snapshot(self) -> None:
        """Atomic snapshot of the current generation; compacts the index when worthwhile."""
        if self.store is None:
            return
        if self.store.broken:  # the disk failed: leave it as it is for the restart to recover from
            log.warning("no snapshot: %s", self.store.broken)
            return
        async with self._write_lock:
            gen = self.gen
            seq = self.store.rotate()
            if gen.collection.read_only:  # documents live in the bundle; the data dir keeps feedback only
                docs, vectors = [], np.empty((0, gen.model.dimension), np.float32)
            else:
                docs, vectors = await gen.run(gen.collection.live)
                if gen.collection.needs_rebuild():
                    await gen.run(gen.collection.rebuild)
        await asyncio.to_thread(self.store.write_snapshot, seq, docs, vectors, gen.model.spec.name, gen.version)

    # ------------------------------------------------------------------ reload
    def start_reload(self, version: str | None) -> dict:
        if self._reload_task is not None and not self._reload_task.done():
            raise ReloadBusy(f"a reload is already running ({self.reload_status})")
        if not self.ready:
            raise NotReady("the service is not ready yet")
        current = self.gen.version
        self.reload_status = {"state": "loading", "from": current, "to": version or "latest",
                              "started_at": time.time()}
        self._reload_task = asyncio.get_running_loop().create_task(self._reload(version))
        return dict(self.reload_status)

    async def _reload(self, version: str | None) -> None:
        status = self.reload_status
        model = None
        try:
            model = await asyncio.to_thread(self.loader, self.settings, self.metrics, version)
            old = self.gen
            status["to"] = model.spec.version
            if model.spec.version == old.version and model.spec.name == old.model.spec.name:
                status.update(state="unchanged", finished_at=time.time())
                self.metrics.reloads.labels("unchanged").inc()
                await asyncio.to_thread(model.close)
                return
            async with self._write_lock:
                self._pending = []
            collection = await self._next_collection(model, old, status)
            new = Generation(model, collection, self.settings.index_threads)
            status["state"] = "swapping"
            async with self._write_lock:
                pending, self._pending = self._pending, None
                if self.milvus is not None:  # writes made meanwhile sit in the old collection: catch up
                    await self._milvus_switch(model, collection)
                else:
                    for op, payload in pending:  # writes made while we re-embedded, in order
                        if op == "upsert":
                            result, _ = await model.embed([t for _, t, _ in payload])
                            await new.run(collection.upsert, payload, result.vectors)
                        else:
                            await new.run(collection.delete, payload)
                old = self.gen
                self.gen = new  # the atomic swap: model and index together
                self._publish_model()
                self.metrics.documents.set(await new.run(len, collection))
                old.retired = True
                if old.users == 0:
                    asyncio.get_running_loop().run_in_executor(None, old.close)
            model = None
            status.update(state="done", finished_at=time.time())
            self.metrics.reloads.labels("done").inc()
            log.info("reloaded %s → %s (%s)", status["from"], status["to"], collection.info())
            if self.store is not None:
                await self.snapshot()
        except asyncio.CancelledError:
            status.update(state="cancelled")
            raise
        except Exception as exc:
            log.exception("reload failed; still serving %s", self.gen.version if self.gen else None)
            status.update(state="failed", error=f"{type(exc).__name__}: {exc}", finished_at=time.time())
            self.metrics.reloads.labels("failed").inc()
        finally:
            self._pending = None
            if model is not None:
                await asyncio.to_thread(model.close)

    async def _next_collection(self, model: EmbeddingModel, old: Generation, status: dict) -> DocumentCollection:
        """The collection for ``model``: the new bundle's (read-only), Milvus' (re-embedded there), or the
        old generation's documents re-embedded into a new FAISS collection."""
        progress = lambda n: status.__setitem__("done", n)  # noqa: E731
        if model.spec.extra.get("index"):
            status.update(state="loading index")
            return await asyncio.to_thread(load_collection, model.spec, self.index_config)
        if self.milvus is not None:
            status.update(state="re-embedding", done=0)
            return await self._milvus_collection(model, switch=False, progress=progress)
        docs, _ = await old.run(old.collection.live)
        status.update(state="re-embedding", documents=len(docs), done=0)
        vectors = await model.embed_bulk([d.text for d in docs], progress=progress)
        return await asyncio.to_thread(Collection.from_arrays, model.dimension, self.index_config,
                                       model.spec.version, docs, vectors)

    async def _watch_latest(self, interval: float) -> None:
        """Reload when LATEST moves to a version other than the one serving (promotion or rollback)."""
        from export.bundle import BundleError, latest_version  # torch-free

        s, status = self.settings, self.watch_status
        # the LATEST acted on: a failed version is not retried, a hand-picked one not undone, until it moves.
        # Started ready, on the version LATEST named at start.
        acted_on: str | None = self.gen.version
        while True:
            await asyncio.sleep(interval)
            try:
                latest = await asyncio.to_thread(latest_version, s.registry, s.name)
            except (BundleError, OSError, ValueError) as exc:  # missing, unreadable or garbled LATEST
                if status.get("error") != str(exc):
                    log.warning("cannot read LATEST: %s; still serving %s", exc, self.gen.version)
                status.update(error=str(exc), checked_at=time.time())
                continue
            status.update(latest=latest, checked_at=time.time(), error=None)
            busy = self._reload_task is not None and not self._reload_task.done()
            if latest == acted_on or busy or not self.ready:
                continue
            acted_on = latest
            if latest == self.gen.version:
                continue
            log.info("LATEST is %s (serving %s): reloading", latest, self.gen.version)
            try:
                self.start_reload(latest)
            except ServiceError as exc:  # raced with a manual reload or shutdown: next tick decides
                log.info("not reloading now: %s", exc.message)
                acted_on = None

    # ------------------------------------------------------------------ operations
    def health(self) -> dict:
        """Liveness: raises a 503 when only a restart helps (a failed start, a store that refuses writes)."""
        if self.state == "failed":
            raise StartFailed(self.error or "start failed")
        if self.store is not None and self.store.broken:  # a restart recovers from what is on disk
            raise StorageFailed(self.store.broken)
        return {"status": "ok", "state": self.state}

    async def readiness(self) -> dict:
        """Readiness: model loaded and warmed up, index loaded and reachable; else a 503 ``not_ready``."""
        if not self.ready:
            message = self.error if self.state == "failed" else f"the service is {self.state}"
            if self.waiting_for and self.state == "starting":
                message += f", waiting for {self.waiting_for}"
            raise NotReady(message)
        try:
            async with self.use() as gen:  # a Milvus that went away makes the replica unready
                await gen.run(gen.collection.check)
                documents = await gen.run(len, gen.collection)
        except IndexUnavailable as exc:
            log.warning("not ready: %s", exc.message)
            raise NotReady(exc.message) from None
        return {"status": "ready", "model": gen.model.spec.name, "version": gen.version, "documents": documents}

    async def info(self) -> dict:
        """What ``/info`` shows (the HTTP layer adds the settings); off the event loop, since a Milvus
        collection counts its documents remotely."""
        return await asyncio.to_thread(self._info)

    def _info(self) -> dict:
        s = self.settings
        gen = self.gen
        return {
            "status": self.state,
            "error": self.error,
            "model": gen.model.info() if gen else None,
            "index": gen.collection.info() if gen else None,
            "limits": {"max_inputs": s.max_inputs, "max_input_chars": s.max_input_chars,
                       "max_body_bytes": s.max_body_bytes, "max_top_k": s.max_top_k,
                       "max_batch_tokens": s.max_batch_tokens,
                       # what the backend allows of --max_batch_size (the ONNX backend caps CPU batches at 16)
                       "max_batch_size": gen.model.queue.max_batch_size if gen else s.max_batch_size,
                       "max_wait_ms": s.max_wait_ms, "max_queue_size": s.max_queue_size,
                       "inference_workers": gen.model.queue.workers if gen else None,
                       "max_seq_length": gen.model.spec.max_seq_length if gen else None},
            "queue": {"size": gen.model.queue.size if gen else 0, "capacity": s.max_queue_size},
            "durability": {"data_dir": str(s.data_dir) if s.data_dir else None,
                           "wal_seq": self.store.seq if self.store else None,
                           "milvus_uri": s.milvus_uri if self.milvus else None},
            "reload": self.reload_status,
            "latest_watch": self.watch_status,
            "auth": {"api_key": bool(s.api_key), "admin_api_key": bool(s.admin_api_key)},
        }
