"""One writer per data directory: an OS lock on ``<data_dir>/LOCK``, held for as long as the writer runs.

Two servers writing into one directory lose acknowledged writes (each replays only its own log), so
whatever writes into a data directory takes its lock first, before it reads or repairs anything, and a
second one is refused with :class:`DataDirLocked`, whose message names the lock file and the process
holding it.

* The lock is ``fcntl.flock`` on the open file: the kernel releases it when the holder's file is closed
  or the process ends, however it ends (``kill -9`` included). A ``LOCK`` file left by a dead process
  therefore never blocks anyone; its content (pid, host, command, start time of the last holder, one
  JSON line) only names the holder for the message. Never delete ``LOCK`` while a process may hold it:
  the next process would lock a new file and both would write.
* Programs the holder starts do not inherit the descriptor (PEP 446), so none keeps the lock of a dead
  holder; two locks in one process on the same directory conflict like two processes.
* Secrets given as flags (``--api_key``, ``--milvus_token`` ...) are blanked in the recorded command.

Example::

    >>> import os, tempfile
    >>> from service.storage.lock import DataDirLock, DataDirLocked
    >>> d = tempfile.mkdtemp()
    >>> with DataDirLock(d):
    ...     try:
    ...         DataDirLock(d).acquire()
    ...     except DataDirLocked as exc:
    ...         print("refused:", exc.holder["pid"] == os.getpid())
    refused: True
    >>> DataDirLock(d).acquire().release()   # free again once the holder let go
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "LOCK"

# a flag whose value is a secret: --api_key, --admin_api_key, --milvus_token (not --milvus_token_file)
_SECRET_FLAG = re.compile(r"^--?[\w-]*(key|token|password|secret)$", re.IGNORECASE)


class DataDirLocked(RuntimeError):
    """Another process (or another lock in this one) holds the data directory's lock."""

    def __init__(self, path: Path, holder: dict | None) -> None:
        self.path, self.holder = path, holder
        if holder:
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
                   f"command: {holder.get('command')}")
        else:
            who = "it has not recorded who it is yet"
        super().__init__(
            f"the data directory {path.parent} is in use by another process ({who}): it holds the lock "
            f"{path}. One process writes into a data directory at a time: stop that one (its lock goes "
            f"with it, even after kill -9) or give this one another data directory.")


def redacted(argv: list[str]) -> list[str]:
    """``argv`` with the values of secret flags replaced by ``***`` (``--flag value`` and ``--flag=value``)."""
    out, hide_next = [], False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        if hide_next:
            out.append("***")
            hide_next = False
        elif _SECRET_FLAG.match(flag):
            out.append(f"{flag}=***" if eq else arg)
            hide_next = not eq
        else:
            out.append(arg)
    return out


def holder_of(path: str | Path) -> dict | None:
    """What the lock file at ``path`` says about its (last) holder; ``None`` when empty or unreadable."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class DataDirLock:
    """The lock of one data directory (created when missing). :meth:`acquire` or raise
    :class:`DataDirLocked`; :meth:`release` (idempotent) or the end of the process frees it."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Take the lock without waiting and record who holds it; returns ``self``."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLocked(self.path, holder_of(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(redacted(list(getattr(sys, "orig_argv", sys.argv)))),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        """Let go (the file stays: see the module docstring)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
