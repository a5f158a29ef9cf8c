"""Load and validate question→answer data in the formats of the user's guide.

Three file formats (`.json` list of objects, `.jsonl`, `.csv`) and two record shapes:

* plain pairs: ``{"question": ..., "answer": ...}``
* with explicit hard negatives: ``{"question": ..., "positive": ..., "negatives": [...]}``
  (in CSV: columns ``question,positive,negative1,...,negativeN``)

Every problem is reported as a :class:`DataError` naming the file, the line (or the JSON
index) and the field, so a user can fix their data without reading a traceback.

This module has no heavy dependencies (no torch): the service loads its initial corpus with it.

Example::

    >>> from training.data import load_qa_data
    >>> data = load_qa_data(["examples/example_qa_data.json"])
    >>> data.records[0].question
    'Python nasıl bir programlama dilidir?'
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".csv")
_NEGATIVE_COLUMN = re.compile(r"^negative_?(\d+)$")


class DataError(ValueError):
    """A data file is unreadable or a record is invalid; the message says where and why."""


@dataclass(frozen=True)
class QARecord:
    """One training example: a question, the passage that answers it, optional hard negatives."""

    question: str
    positive: str
    negatives: tuple[str, ...] = ()
    origin: str = field(default="", compare=False)  # "file:line" for messages


@dataclass(frozen=True)
class QAData:
    """Records loaded from one or more files, with exact duplicates removed."""

    records: tuple[QARecord, ...]
    duplicates_dropped: int
    sources: tuple[str, ...]

    @property
    def passages(self) -> list[str]:
        """Unique passages (positives) in first-seen order."""
        return list(dict.fromkeys(r.positive for r in self.records))

    @property
    def explicit_negatives(self) -> int:
        return sum(len(r.negatives) for r in self.records)


def load_qa_data(paths: Sequence[str | Path]) -> QAData:
    """Load several files, validate every record and drop exact duplicate pairs across all of them.

    A folder stands for the data files directly inside it (see :func:`data_files`).
    """
    files = data_files(paths)
    if not files:
        raise DataError(f"no data file ({', '.join(SUPPORTED_EXTENSIONS)}) in {', '.join(map(str, paths)) or '(none)'}")
    records: list[QARecord] = []
    for path in files:
        records.extend(load_qa_file(path))
    unique, dropped = deduplicate(records)
    return QAData(records=tuple(unique), duplicates_dropped=dropped, sources=tuple(str(p) for p in files))


def data_files(paths: Sequence[str | Path]) -> list[Path]:
    """``paths`` with each folder replaced by its data files (sorted, not recursive).

    A mounted data volume (``/data/train``) is then one argument however many files it holds.
    Other entries are kept as given, so a missing or misnamed file still gets its own clear error.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_EXTENSIONS)
        else:
            files.append(path)
    return files


def load_qa_file(path: str | Path) -> list[QARecord]:
    """Read one file; raise :class:`DataError` for any unreadable file or invalid record."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{path}: unsupported file extension {suffix or '(none)'!r}; use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    text = _read_text(path)
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}[suffix]
    records = list(reader(text, path))
    if not records:
        raise DataError(f"{path}: no records found")
    return records


def write_pairs_jsonl(records: Iterable[QARecord], path: str | Path) -> Path:
    """Write ``records`` as plain pairs, one ``{"question", "answer"}`` object per line (the guide's JSONL; hard
    negatives are not written), UTF-8 without ASCII escapes; :func:`load_qa_file` reads it back."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps({"question": record.question, "answer": record.positive}, ensure_ascii=False) + "\n")
    return path


def deduplicate(records: Iterable[QARecord]) -> tuple[list[QARecord], int]:
    """Drop exact duplicate (question, positive) pairs; negatives of duplicates are merged in order."""
    merged: dict[tuple[str, str], QARecord] = {}
    dropped = 0
    for record in records:
        key = (record.question, record.positive)
        kept = merged.get(key)
        if kept is None:
            merged[key] = record
            continue
        dropped += 1
        negatives = tuple(dict.fromkeys(kept.negatives + record.negatives))
        if negatives != kept.negatives:
            merged[key] = QARecord(kept.question, kept.positive, negatives, kept.origin)
    return list(merged.values()), dropped


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
    try:
        return raw.decode("utf-8-sig")  # accepts files with or without a BOM
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8") from None


def _read_json(text: str, path: Path) -> Iterator[QARecord]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: a .json file must hold a list of objects, found {type(items).__name__}")
    for index, item in enumerate(items):
        yield _record_from_mapping(item, f"{path}[{index}]")


def _read_jsonl(text: str, path: Path) -> Iterator[QARecord]:
    # JSONL lines end at "\n" only: str.splitlines() also breaks on U+2028, U+0085 and other separators,
    # which json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON line: {exc.msg} (column {exc.colno})") from None
        yield _record_from_mapping(item, where)


def _read_csv(text: str, path: Path) -> Iterator[QARecord]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"{path}:1: malformed CSV header: {exc}") from None
    columns = [name.strip() for name in header]
    negative_columns = sorted(
        (int(m.group(1)), i) for i, name in enumerate(columns) if (m := _NEGATIVE_COLUMN.match(name))
    )
    answer_column = "positive" if "positive" in columns else "answer"
    missing = [c for c in ("question", answer_column) if c not in columns]
    if missing:
        raise DataError(
            f"{path}:1: CSV header lacks column {missing[0]!r}; expected 'question,answer' or "
            f"'question,positive,negative1,...' (found {','.join(columns)})"
        )
    question_at, answer_at = columns.index("question"), columns.index(answer_column)
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}:{start}: malformed CSV: {exc}") from None
        where = f"{path}:{start}"
        start = reader.line_num + 1  # a quoted field may span several lines
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise DataError(f"{where}: expected {len(columns)} columns, found {len(row)}")
        item = {"question": row[question_at], answer_column: row[answer_at]}
        negatives = [row[i] for _, i in negative_columns if row[i].strip()]
        if negatives:
            item["negatives"] = negatives
        yield _record_from_mapping(item, where)


def _record_from_mapping(item: object, where: str) -> QARecord:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with 'question' and 'answer', found {type(item).__name__}")
    answer_field = "positive" if "positive" in item else "answer"
    question = _required_text(item, "question", where)
    positive = _required_text(item, answer_field, where, hint="(or 'positive')" if answer_field == "answer" else "")
    negatives = item.get("negatives", [])
    if not isinstance(negatives, list):
        raise DataError(f"{where}: field 'negatives' must be a list of strings, found {type(negatives).__name__}")
    for i, negative in enumerate(negatives):
        if not isinstance(negative, str) or not negative.strip():
            raise DataError(f"{where}: field 'negatives[{i}]' must be a non-empty string")
        if negative == positive:
            raise DataError(f"{where}: field 'negatives[{i}]' is the same text as the positive answer")
    return QARecord(question, positive, tuple(dict.fromkeys(negatives)), where)


def _required_text(item: dict, name: str, where: str, hint: str = "") -> str:
    if name not in item:
        raise DataError(f"{where}: missing field {name!r}{' ' + hint if hint else ''}")
    value = item[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, found {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value
