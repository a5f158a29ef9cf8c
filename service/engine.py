"""The serving engine: the one facade the HTTP routes call (embed, search, documents, feedback, health,
readiness, info, reload).

It serves one :class:`~service.generation.Generation` (a model and the collection its documents were
embedded by) and swaps it whole on reload: the next one is built while the old one serves, caught up on
the writes made meanwhile, then swapped in; the old one closes when its last request finishes. Where
documents and feedback persist is the storage mode's business (:mod:`service.storage`), chosen once at
start. Writes are serialised by one lock: embed → store durably (``Storage.log``) → apply → acknowledge.

With ``--reload_interval`` the engine polls ``<registry>/<name>/LATEST`` and reloads when it moves to
another version than the one serving (promotion, rollback), once per move: a version that fails to load
is logged and counted (``qaembed_reloads_total{result="failed"}``), retried only when LATEST moves again
or by ``POST /admin/reload``; a version loaded by hand (``{"version": ...}``) serves until LATEST moves.
Search (dense, lexical, hybrid) is :mod:`service.search`'s, on the generation a request took.

Example: ``engine = Engine(settings, metrics); await engine.start(); await engine.upsert([Document(...)])``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import faiss
import numpy as np

from .backpressure import until_accepted
from .corpus import corpus_documents
from .documents import Document
from .errors import IndexUnavailable, NotFound, NotReady, ServiceError, StorageUnavailable, Unprocessable
from .feedback import checked_record
from .generation import Generation
from .info import service_info
from .metrics import ServiceMetrics
from .model import EmbeddingModel, open_serving_model
from .search import SearchOptions, SearchOutcome, fusion_defaults, run_search
from .settings import Settings
from .storage.base import Storage, Write, durability_facts
from .storage.factory import DataDirLocked, open_storage
from .store import WriteFailed

log = logging.getLogger("service.engine")

ModelLoader = Callable[[Settings, ServiceMetrics, "str | None"], EmbeddingModel]
Disconnected = Callable[[], Awaitable[object]] | None


class ReloadBusy(ServiceError):
    status, type = 409, "reload_in_progress"


class StartFailed(ServiceError):  # /health: the start failed, only a restart helps
    status, type = 503, "failed"


class StorageFailed(ServiceError):  # /health: the storage refuses writes until a restart recovers it from disk
    status, type = 503, "storage_failed"


@dataclass(frozen=True)
class Embedded:
    """What :meth:`Engine.embed` returns: unit vectors (float32 ``[n, dim]``) and how they were made."""

    vectors: np.ndarray
    tokens: int
    timings: dict  # tokenize_s, queue_s, inference_s
    model_name: str


class Engine:
    def __init__(self, settings: Settings, metrics: ServiceMetrics,
                 model_loader: ModelLoader | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = model_loader or (lambda s, m, v: open_serving_model(s, m, version=v))
        self.gen: Generation | None = None
        self.storage: Storage  # chosen by start()
        self.state = "starting"
        self.error: str | None = None
        self.waiting_for: str | None = None  # what a start is waiting for (shown by /ready)
        self._opened = contextlib.AsyncExitStack()  # what start() opened, closed by stop() in reverse
        self._write_lock = asyncio.Lock()
        self._pending: list[Write] | None = None  # writes made while a reload builds the next generation
        self._reload_task: asyncio.Task | None = None
        self._upkeep_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self.reload_status: dict = {"state": "idle"}
        self.watch_status: dict = {"interval_s": settings.latest_poll_s}
        faiss.omp_set_num_threads(settings.index_threads)
        # exact search of a few coalesced queries: one BLAS matrix product reads the vectors once
        faiss.cvar.distance_compute_blas_threshold = 2

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.gen is not None

    async def start(self) -> None:
        """Load the model, open the storage (recover, re-embed, attach), load the corpus; then ready."""
        try:
            await self._start()
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("start failed: %s", exc, exc_info=not isinstance(exc, DataDirLocked))  # names the holder
            raise

    async def _start(self) -> None:
        s = self.settings
        model = await asyncio.to_thread(self.loader, s, self.metrics, s.version)
        try:
            self.storage = open_storage(s, model.spec, lambda what: setattr(self, "waiting_for", what))
            self._opened.callback(self.storage.close)
            collection = await self.storage.open(model)
        except BaseException:
            await asyncio.to_thread(model.close)
            raise
        self.gen = self._new_generation(model, collection)
        self._opened.push_async_callback(asyncio.to_thread, lambda: self.gen.close())  # the one serving then
        self._opened.push_async_callback(self._final_upkeep)
        if self.storage.upkeep_due():  # start-up re-embedded vectors the store should keep
            await self._upkeep()
        self._publish_model()
        if s.corpus and not collection.read_only:
            await self._load_corpus()
        self.metrics.documents.set(await self.gen.run(len, self.gen.collection))
        self.state = "ready"
        self.metrics.ready.set(1)
        log.info("ready: %s", {k: v for k, v in self.gen.collection.info().items() if k != "model_version"})
        if s.latest_poll_s > 0 and s.registry is not None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_latest(s.latest_poll_s))
        elif s.version is not None and s.reload_interval:
            log.warning("--version %s is pinned: --reload_interval is ignored", s.version)

    async def _load_corpus(self) -> None:
        docs = await asyncio.to_thread(corpus_documents, list(self.settings.corpus))
        gen = self.gen
        new = [d for d in docs if (await gen.run(gen.collection.get, d.id)) is None]
        step = gen.model.bulk_chunk
        for start in range(0, len(new), step):
            await until_accepted(self.upsert, new[start:start + step], internal=True)
        log.info("corpus: %d passages, %d new", len(docs), len(new))

    def _new_generation(self, model: EmbeddingModel, collection) -> Generation:
        """``model`` with its collection, the storage's lexical source (the same for every model) and its α."""
        lexical = self.storage.lexical_for(collection)
        return Generation(model, collection, self.settings.index_threads, lexical,
                          fusion_defaults(self.settings, model.spec, lexical))

    def _publish_model(self) -> None:
        info = self.gen.model.info()
        self.metrics.set_model(info["name"], info["version"], info["variant"], info["backend"], info["device"])

    async def stop(self) -> None:
        """Graceful: stop reloads, the storage's last upkeep where due, close the storage, finish queued inference."""
        self.state = "stopping"
        self.metrics.ready.set(0)
        for task in (self._watch_task, self._reload_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._upkeep_task is not None:
            with contextlib.suppress(BaseException):
                await self._upkeep_task
        await self._opened.aclose()  # the last upkeep, the generation, the storage

    async def _final_upkeep(self) -> None:
        if self.storage.upkeep_due(stopping=True):
            with contextlib.suppress(Exception):
                await self._upkeep()

    @contextlib.asynccontextmanager
    async def _generation(self, internal: bool = False):
        """The current generation, kept open until the block ends (even if a reload swaps it)."""
        gen = self.gen
        if gen is None or (self.state not in ("ready", "stopping") and not internal):
            raise NotReady("the service is not ready yet" if self.state == "starting" else
                           f"the service is {self.state}")
        gen.users += 1
        try:
            yield gen
        finally:
            gen.release()

    # ------------------------------------------------------------------ reads
    async def embed(self, texts: Sequence[str], *, is_query: bool = False, truncate: bool = True,
                    truncation_direction: str = "right", dimensions: int | None = None,
                    disconnected: Disconnected = None) -> Embedded:
        """Embed with the current model; ``dimensions`` other than the model's is a 422 (it cannot shorten)."""
        async with self._generation() as gen:
            if dimensions is not None and dimensions != gen.model.dimension:
                raise Unprocessable(f"dimensions must be {gen.model.dimension} (this model cannot shorten)")
            result, tokenize_s = await gen.model.embed(texts, is_query=is_query, truncate=truncate,
                                                       truncation_direction=truncation_direction,
                                                       disconnected=disconnected)
            timings = {"tokenize_s": tokenize_s, "queue_s": result.queue_s, "inference_s": result.inference_s}
            return Embedded(result.vectors, result.tokens, timings, gen.model.spec.name)

    async def search(self, queries: Sequence[str], top_k: int, where: Mapping | None,
                     disconnected: Disconnected = None, options: SearchOptions | None = None) -> SearchOutcome:
        """Dense, lexical or hybrid search (:mod:`service.search`) of the current generation."""
        async with self._generation() as gen:
            return await run_search(gen, queries, top_k, where, options or SearchOptions(), self.metrics, disconnected)

    async def get(self, doc_id: str) -> Document:
        async with self._generation() as gen:
            doc = await gen.run(gen.collection.get, doc_id)
        if doc is None:
            raise NotFound(f"no document with id {doc_id!r}")
        return doc

    # ------------------------------------------------------------------ writes
    async def upsert(self, docs: Sequence[Document], disconnected: Disconnected = None, *,
                     internal: bool = False) -> list[str]:
        """Embed, store durably, index; returns the ids once the write is stored (``internal``: the corpus
        loaded at start, before the replica is ready)."""
        texts = [d.text for d in docs]
        while True:
            async with self._generation(internal) as gen:
                self.storage.refuse_writes(gen.model)
                rows = await gen.model.embed_documents(texts, disconnected=disconnected)  # every window
                async with self._write_lock:
                    if gen is not self.gen:  # a reload swapped models meanwhile: embed again
                        continue
                    await self._commit(gen, Write.of_rows(docs, rows, gen.model.layout))
                return [d.id for d in docs]

    async def delete(self, doc_id: str) -> None:
        async with self._generation(), self._write_lock:
            gen = self.gen
            self.storage.refuse_writes(gen.model)
            if await gen.run(gen.collection.get, doc_id) is None:
                raise NotFound(f"no document with id {doc_id!r}")
            await self._commit(gen, Write(deleted=[doc_id]))

    async def _commit(self, gen: Generation, write: Write) -> None:
        """Store ``write`` durably, then apply it (the write lock is held)."""
        await self._write_store(self.storage.log, write, gen.version)
        await gen.run(write.apply, gen.collection)
        if self._pending is not None:
            self._pending.append(write)
        self.metrics.documents.set(await gen.run(len, gen.collection))
        self._maybe_upkeep()

    @staticmethod
    async def _write_store(write: Callable, *args) -> None:
        """Write to the store, off the event loop; a store that cannot take it is the client's 503."""
        try:
            await asyncio.to_thread(write, *args)
        except WriteFailed as exc:
            raise StorageUnavailable(f"the write was not stored: {exc}") from None

    # ------------------------------------------------------------------ feedback
    async def add_feedback(self, query: str, doc_id: str, shown_ids: Sequence[str], label: str) -> int:
        """Validate against the current documents and store durably; returns the number of shown
        documents recorded. 404 for an unknown ``doc_id``, 422 for unknown ``shown_ids``."""
        async with self._generation(), self._write_lock:
            gen = self.gen
            record, shown = await checked_record(partial(gen.run, gen.collection.get), query, doc_id, shown_ids,
                                                 label)
            await self._write_store(self.storage.add_feedback, record)
            self._maybe_upkeep()
            self.metrics.feedback.labels(label).inc()
            return shown

    async def feedback(self) -> list[dict]:
        """Every feedback record stored, oldest first."""
        async with self._generation():
            return await asyncio.to_thread(self.storage.read_feedback)

    def _maybe_upkeep(self) -> None:
        if self.storage.upkeep_due() and (self._upkeep_task is None or self._upkeep_task.done()):
            self._upkeep_task = asyncio.get_running_loop().create_task(self._upkeep())

    async def _upkeep(self) -> None:
        """The storage's upkeep: store the serving generation's vectors, compact its index (no-op where none)."""
        await self.storage.upkeep(self._write_lock, lambda: self.gen)

    # ------------------------------------------------------------------ reload
    def start_reload(self, version: str | None) -> dict:
        if self._reload_task is not None and not self._reload_task.done():
            raise ReloadBusy(f"a reload is already running ({self.reload_status})")
        if not self.ready:
            raise NotReady("the service is not ready yet")
        self.reload_status = {"state": "loading", "from": self.gen.version, "to": version or "latest",
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
                return
            async with self._write_lock:
                self._pending = []
            new = self._new_generation(model, await self.storage.next_collection(model, old, status))
            status["state"] = "swapping"
            async with self._write_lock:
                pending, self._pending = self._pending, None
                await self.storage.catch_up(new, pending)  # writes made while it was built, in order
                old = self.gen
                self.gen = new  # the atomic swap: model and index together
                self._publish_model()
                self.metrics.documents.set(await new.run(len, new.collection))
                old.retire()
            model = None
            status.update(state="done", finished_at=time.time())
            self.metrics.reloads.labels("done").inc()
            log.info("reloaded %s → %s (%s)", status["from"], status["to"], new.collection.info())
            await self._upkeep()
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

    async def _watch_latest(self, interval: float) -> None:
        """Reload when LATEST moves to a version other than the one serving (promotion or rollback)."""
        from export.bundle import BundleError, latest_version  # torch-free

        s, status = self.settings, self.watch_status
        # the LATEST acted on (a failed version is not retried, a hand-picked one not undone, until it moves)
        acted_on: str | None = self.gen.version  # started ready, on the version LATEST named then
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
        if self.ready and self.storage.broken:  # a restart recovers from what is on disk
            raise StorageFailed(self.storage.broken)
        return {"status": "ok", "state": self.state}

    async def readiness(self) -> dict:
        """Readiness: model loaded and warmed up, index loaded and reachable; else a 503 ``not_ready``."""
        if not self.ready:
            message = self.error if self.state == "failed" else f"the service is {self.state}"
            if self.waiting_for and self.state == "starting":
                message += f", waiting for {self.waiting_for}"
            raise NotReady(message)
        try:
            async with self._generation() as gen:  # a Milvus that went away makes the replica unready
                await gen.run(self.storage.check, gen.collection)
                documents = await gen.run(len, gen.collection)
        except IndexUnavailable as exc:
            log.warning("not ready: %s", exc.message)
            raise NotReady(exc.message) from None
        return {"status": "ready", "model": gen.model.spec.name, "version": gen.version, "documents": documents}

    async def info(self) -> dict:
        """What ``/info`` shows (the HTTP layer adds the settings); off the event loop, since a Milvus
        collection counts its documents remotely."""
        durability = self.storage.durability() if self.gen else durability_facts(self.settings)
        return await asyncio.to_thread(service_info, self.settings, self.gen, status=self.state, error=self.error,
                                       durability=durability, reload=self.reload_status,
                                       latest_watch=self.watch_status)
