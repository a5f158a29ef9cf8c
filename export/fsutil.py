"""Durable file-system steps, shared by the registry (export) and the service's stores.

Contract: once a function here returns, what it wrote survives a power loss. :func:`write_durably` is
atomic as well: a reader sees the old content or the new, never a mix, and a crash leaves at most a
hidden ``.<name>.tmp-*`` file next to the target (no reader lists those).

Standard library only: the torch-free serving image imports it.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from export.fsutil import write_durably
    >>> target = Path(tempfile.mkdtemp()) / "LATEST"
    >>> write_durably(target, "v0001\\n")
    >>> target.read_text()
    'v0001\\n'
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file inside ``path`` durable (the directory entry itself is fsynced)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically and durably.

    Temp file in the same folder (so the rename is atomic) → fsync → rename over ``path`` → fsync of the
    folder. The file gets the umask's permissions, like a plain ``open(path, "w")``: serving users read it.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (``root`` included), e.g. before renaming it into place."""
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            fsync_dir(path)
        else:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
