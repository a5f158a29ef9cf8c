"""What ``GET /info`` shows (less ``settings``, which the HTTP layer adds): one dict, the same keys in every
state and storage mode (``null`` where a part does not exist yet, e.g. the model while starting).

``model`` and ``index`` describe the generation serving; ``limits`` are the request limits in force
(``max_batch_size`` as the backend allows it, which may be below ``--max_batch_size``); ``durability``
comes from the storage mode (:meth:`service.storage.base.Storage.durability`); ``search`` holds the search
modes and hybrid defaults: α and where it came from, the lexical source (:func:`service.search.search_info`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .search import search_info

if TYPE_CHECKING:
    from .generation import Generation
    from .settings import Settings


def service_info(s: Settings, gen: Generation | None, *, status: str, error: str | None, durability: dict,
                 reload: dict, latest_watch: dict) -> dict:
    """Blocking (a Milvus collection counts its documents remotely): call it in a thread."""
    model = gen.model if gen else None
    return {
        "status": status,
        "error": error,
        "model": model.info() if model else None,
        "index": gen.collection.info() if gen else None,
        "limits": {"max_inputs": s.max_inputs, "max_input_chars": s.max_input_chars,
                   "max_body_bytes": s.max_body_bytes, "max_top_k": s.max_top_k,
                   "max_batch_tokens": s.max_batch_tokens,
                   # what the backend allows of --max_batch_size (the ONNX backend caps CPU batches at 16)
                   "max_batch_size": model.queue.max_batch_size if model else s.max_batch_size,
                   "max_wait_ms": s.max_wait_ms, "max_queue_size": s.max_queue_size,
                   "inference_workers": model.queue.workers if model else None,
                   "max_seq_length": model.spec.max_seq_length if model else None},
        "queue": {"size": model.queue.size if model else 0, "capacity": s.max_queue_size},
        "durability": durability,
        "search": search_info(s, gen),
        "reload": reload,
        "latest_watch": latest_watch,
        "auth": {"api_key": bool(s.api_key), "admin_api_key": bool(s.admin_api_key)},
    }
