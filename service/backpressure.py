"""Bulk work yields to live traffic: retry a call the inference queue refused as full.

Re-embedding every document for a new model and loading a corpus at start push many batches
through the same queue that serves requests. A full queue answers a request 429 (``Overloaded``)
at once; bulk work instead waits a moment and tries again, so it fills only the room that live
traffic leaves.

Example::

    >>> import asyncio
    >>> from service.errors import Overloaded
    >>> calls = []
    >>> async def embed(texts):
    ...     calls.append(texts)
    ...     if len(calls) < 3:
    ...         raise Overloaded("queue full")
    ...     return len(texts)
    >>> asyncio.run(until_accepted(embed, ["a", "b"])), len(calls)
    (2, 3)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import Overloaded

T = TypeVar("T")

RETRY_PAUSE_S = 0.05


async def until_accepted(call: Callable[..., Awaitable[T]], *args, **kwargs) -> T:
    """``await call(*args, **kwargs)``, again after a short pause each time it raises ``Overloaded``."""
    while True:
        try:
            return await call(*args, **kwargs)
        except Overloaded:
            await asyncio.sleep(RETRY_PAUSE_S)
