"""The artifact bundle: a versioned, checksummed folder per exported model, and the registry holding them.

Layout::

    <registry>/<name>/v0001/manifest.json   name, version, model facts, variants, gates, sha256 of every file
    <registry>/<name>/v0001/model.onnx ...   ONNX variants and tokenizer files
    <registry>/<name>/LATEST                 one line: the current version
    <registry>/<name>/HISTORY                append-only, a line per move of LATEST: promote|rollback FROM TO TIME

Publishing is atomic: files are written into a staging folder inside ``<registry>/<name>/`` (same
filesystem), fsynced, renamed into place, and only then is ``LATEST`` replaced (temp file +
``os.replace``). A crash at any point leaves the old or the new version visible, never a half one;
rollback returns to the newest older version that was promoted (per ``HISTORY``), never to a candidate
published unpromoted. An abandoned staging folder (``.staging-*``, e.g. after a killed export) is never listed or
opened, and the next export removes it once it is a day old (no live export leaves its folder untouched that long).

This module needs only the standard library: the torch-free serving image imports it.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from export.bundle import new_staging_dir, publish, open_bundle
    >>> registry = Path(tempfile.mkdtemp())
    >>> staging = new_staging_dir(registry, "demo")
    >>> _ = (staging / "model.onnx").write_bytes(b"not really onnx")
    >>> _ = (staging / "tokenizer.json").write_text("{}")
    >>> facts = {"variants": {"onnx": {"file": "model.onnx"}}, "tokenizer": "tokenizer.json",
    ...          "dimension": 384, "max_seq_length": 256, "query_prompt": ""}
    >>> publish(staging, facts).name
    'v0001'
    >>> bundle = open_bundle(registry, "demo")
    >>> bundle.version, bundle.variant_path("onnx").name, bundle.dimension
    ('v0001', 'model.onnx', 384)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("export.bundle")

MANIFEST = "manifest.json"
LATEST = "LATEST"
HISTORY = "HISTORY"
REPORTS = "reports"  # <name>/reports/<version>.json: the retrain gate's decisions (export.retrain)
VARIANTS = ("onnx", "onnx-optimized", "int8", "fp16")
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^v(\d{4,})$")
_STAGING_PREFIX = ".staging-"
_NONE = "-"  # in HISTORY: no LATEST before this move
_JSON_TYPES = {dict: "an object", str: "a string", int: "an integer"}
STALE_STAGING_S = 24 * 3600


class BundleError(Exception):
    """A bundle or registry entry is missing, invalid or tampered with; the message says which file."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Paths point inside ``path``; the manifest is the parsed ``manifest.json``."""

    name: str
    version: str
    path: Path
    manifest: dict

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.manifest["variants"])

    def variant_path(self, variant: str) -> Path:
        """Path of the ONNX file of ``variant`` (one of :data:`VARIANTS` that this bundle carries)."""
        if variant not in self.manifest["variants"]:
            raise BundleError(
                f"{self.path}: no variant {variant!r}; this bundle has {', '.join(self.variants)}"
            )
        return self.path / self.manifest["variants"][variant]["file"]

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["tokenizer"]

    @property
    def query_prompt(self) -> str:
        return self.manifest.get("query_prompt") or ""

    @property
    def max_seq_length(self) -> int:
        return int(self.manifest["max_seq_length"])

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise :class:`BundleError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BundleError(
            f"invalid bundle name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (at most 128 characters)"
        )
    return name


def validate_version(version: str) -> str:
    """Return ``version`` if it looks like ``v0001``, else raise :class:`BundleError`."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise BundleError(f"invalid version {version!r}: expected 'v' and at least 4 digits, e.g. v0001")
    return version


def list_versions(registry: str | Path, name: str) -> list[str]:
    """Published versions of ``name``, oldest first (staging folders are ignored)."""
    folder = Path(registry) / validate_name(name)
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=_version_number)


def list_names(registry: str | Path) -> list[str]:
    """Names in the registry that have at least one published version."""
    root = Path(registry)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _NAME.match(p.name) and list_versions(root, p.name))


def latest_version(registry: str | Path, name: str) -> str:
    """The version ``LATEST`` points at; :class:`BundleError` when nothing was published."""
    pointer = Path(registry) / validate_name(name) / LATEST
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BundleError(f"{pointer}: no published version of {name!r} in {registry}") from None
    return validate_version(version)


def open_bundle(registry: str | Path, name: str, version: str | None = None) -> Bundle:
    """Open ``<registry>/<name>/<version>`` (``None``: the ``LATEST`` one) after verifying every checksum."""
    version = latest_version(registry, name) if version is None else validate_version(version)
    path = Path(registry) / validate_name(name) / version
    if not path.is_dir():
        raise BundleError(f"{path}: version {version} of {name!r} does not exist")
    bundle = verify_bundle(path)
    if (bundle.name, bundle.version) != (name, version):
        raise BundleError(
            f"{path / MANIFEST}: manifest says {bundle.name}/{bundle.version}, folder is {name}/{version}"
        )
    return bundle


def verify_bundle(path: str | Path) -> Bundle:
    """Check a bundle folder: manifest readable, every listed file present with its size and sha256, no
    unlisted file. Returns the :class:`Bundle`; raises :class:`BundleError` naming the first bad file."""
    path = Path(path)
    manifest = _read_manifest(path)
    files = manifest["files"]
    for relative, expected in files.items():
        file = _inside(path, relative)
        if not file.is_file():
            raise BundleError(f"{file}: missing (listed in {MANIFEST})")
        if file.stat().st_size != expected["bytes"]:
            raise BundleError(f"{file}: size {file.stat().st_size} != {expected['bytes']} in {MANIFEST}")
        if sha256_file(file) != expected["sha256"]:
            raise BundleError(f"{file}: sha256 mismatch, the file was modified or corrupted")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative != MANIFEST and relative not in files:
            raise BundleError(f"{file}: not listed in {MANIFEST}")
    referenced = [v["file"] for v in manifest["variants"].values()] + [manifest["tokenizer"]]
    for relative in referenced:
        if relative not in files:
            raise BundleError(f"{path / MANIFEST}: refers to {relative!r}, which has no checksum")
    return Bundle(name=manifest["name"], version=manifest["version"], path=path, manifest=manifest)


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
    _fsync_tree(staging)
    with _locked(staging.parent):
        existing = list_versions(staging.parent.parent, name)
        version = f"v{(_version_number(existing[-1]) + 1) if existing else 1:04d}"
        manifest = {
            "format": FORMAT_VERSION,
            "name": name,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **facts,
            "files": files,
        }
        _write_durably(staging / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
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
    last_legacy = 0 if started_from == _NONE else _version_number(started_from)  # versions up to it predate HISTORY
    promoted = {v for v in versions if _version_number(v) <= last_legacy and not _rejected(folder, v)}
    for event, before, after in events:
        if event == "promote":
            promoted.add(after)
        else:
            promoted.discard(before)  # rolled back from: a bad version, until promoted again
    older = [v for v in versions if v in promoted and _version_number(v) < _version_number(current)]
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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{file}: missing, {path} is not a published bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{file}: unreadable ({error})") from None
    required = ("name", "version", "files", "variants", "tokenizer", "dimension", "max_seq_length")
    missing = [key for key in required if key not in manifest] if isinstance(manifest, dict) else required
    if missing:
        raise BundleError(f"{file}: missing fields {', '.join(missing)}")
    # A manifest is data: a wrong type must be a BundleError here, not an AttributeError in a caller.
    types = {"files": dict, "variants": dict, "tokenizer": str, "dimension": int, "max_seq_length": int}
    for key, kind in types.items():
        if not isinstance(manifest[key], kind):
            found = type(manifest[key]).__name__
            raise BundleError(f"{file}: field {key!r} must be {_JSON_TYPES[kind]}, found {found}")
    for relative, entry in manifest["files"].items():
        if not _has(entry, sha256=str, bytes=int):
            raise BundleError(f"{file}: files[{relative!r}] must be an object with a 'sha256' string and 'bytes'")
    for variant, entry in manifest["variants"].items():
        if not _has(entry, file=str):
            raise BundleError(f"{file}: variants[{variant!r}] must be an object with a 'file' string")
    validate_name(manifest["name"])
    validate_version(manifest["version"])
    return manifest


def _has(entry: object, **types: type) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in types.items())


def _inside(root: Path, relative: str) -> Path:
    # A manifest is data: never let it point outside its own folder.
    file = (root / relative).resolve()
    if not file.is_relative_to(root.resolve()):
        raise BundleError(f"{root / MANIFEST}: file entry {relative!r} points outside the bundle")
    return root / relative


def _version_number(version: str) -> int:
    return int(_VERSION.match(version).group(1))


def _history(folder: Path) -> list[tuple[str, str, str]]:
    """``(event, before, after)`` per move of ``LATEST``, oldest first; ``before`` is :data:`_NONE` for the first."""
    try:
        lines = (folder / HISTORY).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        fields = line.split()
        if len(fields) != 4 or fields[0] not in ("promote", "rollback"):
            continue  # a line torn by a crash mid-append
        event, before, after, _ = fields
        if (before == _NONE or _VERSION.match(before)) and _VERSION.match(after):
            events.append((event, before, after))
    return events


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
    temporary = folder / f".{LATEST}.tmp-{os.getpid()}"
    _write_durably(temporary, version + "\n")
    os.replace(temporary, folder / LATEST)
    fsync_dir(folder)
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


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            fsync_dir(path)
        else:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside ``path`` durable (the directory entry itself is fsynced)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Serialises version allocation and LATEST updates between concurrent publishers of one name.
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
