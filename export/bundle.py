"""The artifact bundle, read side: a versioned, checksummed folder per exported model, and the registry holding them.

Layout::

    <registry>/<name>/v0001/manifest.json   name, version, model facts, variants, gates, sha256 of every file
    <registry>/<name>/v0001/model.onnx ...   ONNX variants and tokenizer files
    <registry>/<name>/LATEST                 one line: the current version

Contract: what this module opens is a published version whose every file matches its manifest's size and
sha256 (:class:`BundleError`, naming the file, otherwise); names and versions are validated before they
become paths, so no manifest or ``LATEST`` can point outside the registry. It never writes: publishing,
promotion, rollback and ``HISTORY`` are :mod:`export.registry`.

This module needs only the standard library: the torch-free serving image imports it.

Example (``registry`` holds a version published by :func:`export.registry.publish`)::

    >>> from export.bundle import open_bundle                  # doctest: +SKIP
    >>> bundle = open_bundle("registry", "demo")                # doctest: +SKIP
    >>> bundle.version, bundle.variant_path("onnx").name, bundle.dimension  # doctest: +SKIP
    ('v0001', 'model.onnx', 384)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
LATEST = "LATEST"
VARIANTS = ("onnx", "onnx-optimized", "int8", "fp16")
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^v(\d{4,})$")
_JSON_TYPES = {dict: "an object", str: "a string", int: "an integer"}


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


def version_number(version: str) -> int:
    """The number in ``v0042`` (42): versions order by it, not by their text."""
    return int(_VERSION.match(validate_version(version)).group(1))


def list_versions(registry: str | Path, name: str) -> list[str]:
    """Published versions of ``name``, oldest first (staging folders are ignored)."""
    folder = Path(registry) / validate_name(name)
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=version_number)


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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (ONNX files reach gigabytes)."""
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
    if "fusion" in manifest:
        _check_fusion(manifest["fusion"], file)
    return manifest


def _check_fusion(fusion: object, file: Path) -> None:
    """``fusion`` (optional): the hybrid search's weight, ``{"alpha": 0..1, "method": "weighted", "chosen_on": str,
    "analyzer": {...}, "mrr@10_by_alpha": {"0.0": float, ...}}`` (export.fusion writes it, the service reads it)."""
    if not _has(fusion, method=str, chosen_on=str, analyzer=dict, **{"mrr@10_by_alpha": dict}):
        raise BundleError(f"{file}: field 'fusion' must be an object with 'method' and 'chosen_on' strings, "
                          "'analyzer' and 'mrr@10_by_alpha' objects and an 'alpha'")
    alpha = fusion.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise BundleError(f"{file}: fusion alpha must be a number in [0, 1], found {alpha!r}")
    if fusion["method"] != "weighted":
        raise BundleError(f"{file}: fusion method must be 'weighted', found {fusion['method']!r}")


def _has(entry: object, **types: type) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in types.items())


def _inside(root: Path, relative: str) -> Path:
    # A manifest is data: never let it point outside its own folder.
    file = (root / relative).resolve()
    if not file.is_relative_to(root.resolve()):
        raise BundleError(f"{root / MANIFEST}: file entry {relative!r} points outside the bundle")
    return root / relative
