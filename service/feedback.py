"""Relevance feedback: the record ``POST /feedback`` stores, and its conversion to training data.

A feedback record keeps the *texts* the user saw, not only their ids, so the training data it
becomes is what the user actually judged even if a document is edited or deleted later::

    {"query": str, "label": "positive" | "negative", "document": {"id", "text"},
     "shown": [{"id", "text"}, ...], "at": unix seconds}

:func:`to_training` turns records into the training formats of ``training.data``:

* positive feedback → ``{"question", "positive", "negatives": [shown but not chosen]}``, or a plain
  ``{"question", "answer"}`` when nothing else was shown. Repeated feedback for the same
  (query, answer) becomes one record with the union of its negatives.
* negative feedback ("this is not an answer to the query") → that document becomes an explicit
  negative of *every* positive record of the same query; a query with no positive is skipped
  (a record needs a positive) and counted in ``skipped_negative``.
* a text that is a positive for a query is never used as a negative for it (positives win): a
  shown result the user did not pick this time may still be the answer another user chose.

Queries are compared exactly after trimming surrounding whitespace.

``python -m service export-feedback --data_dir DIR --out feedback.jsonl`` writes the same file as
``GET /feedback/export`` from a data directory, with or without a server running on it (it only reads
there, so it takes no lock: :mod:`service.storage.lock`); with
``QAEMBED_INDEX=milvus`` (and ``QAEMBED_MILVUS_URI``, ``QAEMBED_NAME``) from the Milvus feedback
collection that every replica writes to.

Example::

    >>> from service.feedback import make_record, to_training
    >>> chosen, other = ("d1", "Ankara is the capital."), ("d2", "Istanbul is the largest.")
    >>> rows, stats = to_training([make_record("Capital?", chosen, [other, chosen], "positive")])
    >>> rows
    [{'question': 'Capital?', 'positive': 'Ankara is the capital.', 'negatives': ['Istanbul is the largest.']}]
    >>> to_training([make_record("Capital?", chosen, [], "positive")])[0]
    [{'question': 'Capital?', 'answer': 'Ankara is the capital.'}]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from .documents import Document
from .errors import IndexUnavailable, NotFound, Unprocessable

LABELS = ("positive", "negative")


def make_record(query: str, document: tuple[str, str], shown: Sequence[tuple[str, str]], label: str) -> dict:
    """A feedback record from ``(id, text)`` pairs; ``shown`` may include the chosen document."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    seen = dict.fromkeys(i for i, _ in shown)
    texts = dict(shown)
    return {"query": query, "label": label, "document": {"id": document[0], "text": document[1]},
            "shown": [{"id": i, "text": texts[i]} for i in seen], "at": round(time.time(), 3)}



async def checked_record(lookup: Callable[[str], Awaitable[Document | None]], query: str, doc_id: str,
                         shown_ids: Sequence[str], label: str) -> tuple[dict, int]:
    """The record of ``POST /feedback``, its ids checked against the documents served (``lookup``): 404 for an
    unknown ``doc_id``, 422 for unknown ``shown_ids``. Returns the record and the number of shown documents."""
    doc = await lookup(doc_id)
    if doc is None:
        raise NotFound(f"no document with id {doc_id!r}")
    shown = {i: await lookup(i) for i in dict.fromkeys(shown_ids)}
    unknown = [i for i, d in shown.items() if d is None]
    if unknown:
        raise Unprocessable(f"shown_ids: no document with id {', '.join(map(repr, unknown[:5]))}"
                            + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    return make_record(query, (doc.id, doc.text), [(d.id, d.text) for d in shown.values()], label), len(shown)

def to_training(records: Iterable[dict]) -> tuple[list[dict], dict]:
    """Training rows (first-seen order) and counts: ``records``, ``positive``, ``negative``,
    ``rows``, ``skipped_negative``."""
    positives: dict[tuple[str, str], list[str]] = {}  # (query, answer) → negatives, in order
    rejected: dict[str, list[str]] = {}  # query → texts labelled negative
    stats = {"records": 0, "positive": 0, "negative": 0, "rows": 0, "skipped_negative": 0}
    for record in records:
        stats["records"] += 1
        query, text = record["query"].strip(), record["document"]["text"]
        if record["label"] == "negative":
            stats["negative"] += 1
            rejected.setdefault(query, []).append(text)
            continue
        stats["positive"] += 1
        negatives = positives.setdefault((query, text), [])
        negatives.extend(s["text"] for s in record.get("shown", ()) if s["id"] != record["document"]["id"])
    answers: dict[str, set[str]] = {}
    for query, text in positives:
        answers.setdefault(query, set()).add(text)
    for query, texts in rejected.items():
        if query not in answers:
            stats["skipped_negative"] += len(texts)
    rows = []
    for (query, text), shown in positives.items():
        negatives = [n for n in dict.fromkeys(shown + rejected.get(query, [])) if n not in answers[query]]
        rows.append({"question": query, "positive": text, "negatives": negatives} if negatives
                    else {"question": query, "answer": text})
    stats["rows"] = len(rows)
    return rows, stats


def to_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> None:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(to_jsonl(rows), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service export-feedback``: exit 0 written, 2 bad arguments, data directory or Milvus."""
    from .settings import Settings, SettingsError
    from .store import DATABASE, DocumentStore, StoreError
    from .wal import LegacyCorrupt, has_legacy, read_legacy

    parser = argparse.ArgumentParser(
        prog="python -m service export-feedback",
        description="Write the feedback collected in a data directory (or, with QAEMBED_INDEX=milvus, in the "
                    "Milvus feedback collection) as training data (JSONL), safe while servers run.")
    parser.add_argument("--data_dir", type=Path, default=os.environ.get("QAEMBED_DATA_DIR") or None,
                        help="the service's --data_dir (default: QAEMBED_DATA_DIR)")
    parser.add_argument("--out", type=Path, required=True, help="output file, .jsonl")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".jsonl":
        parser.error(f"--out must end in .jsonl (training.data reads by extension), got {args.out}")
    try:  # the serving pods' settings (QAEMBED_INDEX, QAEMBED_MILVUS_*, QAEMBED_NAME) name the store
        settings = Settings.from_sources([])
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.index == "milvus":
        from .milvus import MilvusStore

        try:
            store = MilvusStore(settings)
            try:
                records = store.read_feedback()
            finally:
                store.close()
        except IndexUnavailable as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
    else:
        if args.data_dir is None:
            parser.error("--data_dir (or QAEMBED_DATA_DIR) is required")
        try:  # a directory the previous release wrote and no server migrated yet is read as it is
            if not (args.data_dir / DATABASE).exists() and has_legacy(args.data_dir):
                records = read_legacy(args.data_dir).feedback
            else:
                store = DocumentStore.reader(args.data_dir)
                try:
                    records = store.read_feedback()
                finally:
                    store.close()
        except (StoreError, LegacyCorrupt, OSError, ValueError, sqlite3.Error) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    rows, stats = to_training(records)
    write_jsonl(rows, args.out)
    print(json.dumps({"out": str(args.out), **stats}), file=sys.stderr)
    if not rows:
        print("note: no feedback yet; the file is empty (leave --feedback out of the retrain)", file=sys.stderr)
    return 0
