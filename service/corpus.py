"""A corpus: the passages of QA files, as documents with stable ids (``--corpus`` and ``build-index``).

The same passage always gets the same id (:func:`corpus_id`, a hash of its text), so loading a
corpus again changes nothing and feedback can name a corpus passage before it is served. Every
corpus document records the files it came from in its ``source`` metadata.

Example::

    >>> corpus_id("Ankara is the capital.")
    'c-77d3c270767733e6'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from .documents import Document


def corpus_id(text: str) -> str:
    """Stable id for a corpus passage, so loading the same corpus again changes nothing."""
    return "c-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def corpus_documents(files: Sequence[Path]) -> list[Document]:
    """The passages of ``files`` (any format :func:`training.data.load_qa_data` reads), in order."""
    from training.data import load_qa_data  # torch-free; only when a corpus is given

    sources = ",".join(p.name for p in files)
    return [Document(corpus_id(text), text, {"source": sources}) for text in load_qa_data(list(files)).passages]
