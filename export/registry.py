"""The registry's write side: publish a staging folder as the next version, and move ``LATEST``.

The layout and the read API (open, verify, list) are in :mod:`export.bundle`; this module adds::

    <registry>/<name>/.staging-*            a version being built (never listed or opened)
    <registry>/<name>/HISTORY               append-only, a line per move of LATEST: promote|rollback FROM TO TIME
    <registry>/<name>/reports/<version>.json  the retrain gate's decisions (written by retrain)
    <registry>/<name>/.lock                 serialises version allocation and moves of LATEST

Publishing is atomic: files are written into a staging folder inside ``<registry>/<name>/`` (same
filesystem), fsynced, renamed into place, and only then is ``LATEST`` replaced (temp file + rename). A crash
at any point leaves the old or the new version visible, never a half one; rollback returns to the newest older
version that was promoted (per ``HISTORY``), never to a candidate published unpromoted. An abandoned staging
folder (e.g. after a killed export) is removed by the next export once it is a day old (no live export leaves
its folder untouched that long).

Standard library only: the torch-free serving image publishes index bundles through it.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from export.bundle import open_bundle
    >>> from export.registry import new_staging_dir, publish
    >>> registry = Path(tempfile.mkdtemp())
    >>> staging = new_staging_dir(registry, "demo")
    >>> _ = (staging / "model.onnx").write_bytes(b"not really onnx")
    >>> _ = (staging / "tokenizer.json").write_text("{}")
    >>> facts = {"variants": {"onnx": {"file": "model.onnx"}}, "tokenizer": "tokenizer.json",
    ...          "dimension": 384, "max_seq_length": 256, "query_prompt": ""}
    >>> publish(staging, facts).name
    'v0001'
    >>> open_bundle(registry, "demo").version
    'v0001'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from export.bundle import (
    FORMAT_VERSION,
    LATEST,
    MANIFEST,
    VARIANTS,
    Bundle,
    BundleError,
    latest_version,
    list_versions,
    open_bundle,
    sha256_file,
    validate_name,
    version_number,
)
from export.fsutil import fsync_dir, fsync_tree, write_durably

log = logging.getLogger("export.registry")

HISTORY = "HISTORY"
REPORTS = "reports"
STALE_STAGING_S = 24 * 3600
_STAGING_PREFIX = ".staging-"
_NONE = "-"  # in HISTORY: no LATEST before this move
_EVENTS = ("promote", "rollback")


def new_staging_dir(registry: str | Path, name: str) -> Path:
    """A fresh, empty staging folder for ``name`` on the registry's filesystem (so the final rename is atomic)."""
    folder = Path(registry) / validate_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the serving user must be able to read the version
    return staging


def publish(staging: str | Path, facts: dict, promote: bool = True) -> Path:
    """Publish the files in ``staging`` (from :func:`new_staging_dir`) as the next version; returns its folder.

    ``promote=False`` publishes the version without moving ``LATEST`` (a candidate awaiting a gate).

    ``facts`` becomes the manifest, completed with name, version, created_at and the checksums. It must
    name the ``variants`` (``{variant: {"file": ...}}``) and the ``tokenizer`` file.
    """
    staging = Path(staging)
    name = validate_name(staging.parent.name)
    unknown = set(facts["variants"]) - set(VARIANTS)
    if unknown:
        raise BundleError(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    files = {
        p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    fsync_tree(staging)
    with _locked(staging.parent):
        existing = list_versions(staging.parent.parent, name)
        version = f"v{(version_number(existing[-1]) + 1) if existing else 1:04d}"
        manifest = {
            "format": FORMAT_VERSION,
            "name": name,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **facts,
            "files": files,
        }
        write_durably(staging / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        final = staging.parent / version
        os.rename(staging, final)
        fsync_dir(staging.parent)
        if promote:
            _point_latest(staging.parent, version, "promote")
    return final


def set_latest(registry: str | Path, name: str, version: str) -> Bundle:
    """Point ``LATEST`` at an existing version after verifying it (promote); returns that bundle."""
    bundle = open_bundle(registry, name, version)
    folder = Path(registry) / name
    with _locked(folder):
        _point_latest(folder, version, "promote")
    return bundle


def rollback(registry: str | Path, name: str) -> Bundle:
    """Point ``LATEST`` back at :func:`previous_version` after verifying it; returns that bundle."""
    latest_version(registry, name)  # nothing published: a clear BundleError before any lock file is made
    folder = Path(registry) / name
    with _locked(folder):  # the target is chosen and LATEST moved with no promotion in between
        bundle = open_bundle(registry, name, previous_version(registry, name))
        _point_latest(folder, bundle.version, "rollback")
    return bundle


def previous_version(registry: str | Path, name: str) -> str:
    """The rollback target: the newest version older than ``LATEST`` that was promoted and not rolled back from.

    Promotions and rollbacks come from ``HISTORY``, so a candidate published unpromoted (one the retrain gate
    rejected) is never a target, and repeated rollbacks walk back through earlier promotions. Versions from
    before the history began (registries of older releases) count as promoted unless the retrain gate's
    report rejected them.
    """
    folder = Path(registry) / validate_name(name)
    current = latest_version(registry, name)
    versions = list_versions(registry, name)
    events = _history(folder)
    started_from = events[0][1] if events else current
    last_legacy = 0 if started_from == _NONE else version_number(started_from)  # versions up to it predate HISTORY
    promoted = {v for v in versions if version_number(v) <= last_legacy and not _rejected(folder, v)}
    for event, before, after in events:
        if event == "promote":
            promoted.add(after)
        else:
            promoted.discard(before)  # rolled back from: a bad version, until promoted again
    older = [v for v in versions if v in promoted and version_number(v) < version_number(current)]
    if not older:
        raise BundleError(f"{name!r}: no promoted version older than {current} to roll back to")
    return older[-1]


def discard_staging(staging: str | Path) -> None:
    """Remove an unpublished staging folder (after a failed export)."""
    staging = Path(staging)
    if staging.name.startswith(_STAGING_PREFIX):
        shutil.rmtree(staging, ignore_errors=True)


def sweep_stale_staging(folder: str | Path, older_than_s: float = STALE_STAGING_S) -> list[Path]:
    """Remove staging folders in ``folder`` untouched for ``older_than_s`` (left by killed exports)."""
    cutoff = datetime.now(timezone.utc).timestamp() - older_than_s
    stale = [p for p in Path(folder).glob(_STAGING_PREFIX + "*") if p.is_dir() and _last_write(p) < cutoff]
    for staging in stale:
        shutil.rmtree(staging, ignore_errors=True)
    return stale


def _last_write(folder: Path) -> float:
    # The newest mtime inside: a live export that is still writing a large file keeps its folder fresh.
    return max((p.stat().st_mtime for p in [folder, *folder.rglob("*")]), default=0.0)


def _history(folder: Path) -> list[tuple[str, str, str]]:
    """``(event, before, after)`` per move of ``LATEST``, oldest first; ``before`` is :data:`_NONE` for the first."""
    try:
        lines = (folder / HISTORY).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        fields = line.split()
        if len(fields) != 4 or fields[0] not in _EVENTS:
            continue  # a line torn by a crash mid-append
        event, before, after, _ = fields
        if (before == _NONE or _is_version(before)) and _is_version(after):
            events.append((event, before, after))
    return events


def _is_version(text: str) -> bool:
    try:
        version_number(text)
    except BundleError:
        return False
    return True


def _rejected(folder: Path, version: str) -> bool:
    try:
        report = json.loads((folder / REPORTS / f"{version}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("promoted") is False


def _point_latest(folder: Path, version: str, event: str) -> None:
    try:
        before = latest_version(folder.parent, folder.name)
    except BundleError:
        before = _NONE
    write_durably(folder / LATEST, version + "\n")
    # Recorded after the move: a crash in between, or an append that fails, loses the record, so a later
    # rollback at worst skips this version and never lands on one that was not LATEST. LATEST has moved either
    # way, so a failure here is a warning, not an error.
    line = f"{event} {before} {version} {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
    try:
        with open(folder / HISTORY, "a+b") as handle:
            if handle.seek(0, os.SEEK_END):
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a line torn by a crash: end it, or it swallows this one
                    line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        log.warning("%s: LATEST is %s, but recording it in %s failed (%s): a rollback may skip it",
                    folder, version, HISTORY, exc)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Serialises version allocation and LATEST updates between concurrent publishers of one name.
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
