"""One frozen settings object, built once from command-line flags and ``QAEMBED_*`` variables.

Every flag ``--some_flag`` is also the environment variable ``QAEMBED_SOME_FLAG``; a flag given on
the command line wins over the environment, which wins over the default. Secrets (API keys) are
best passed through the environment so they do not show up in ``ps``.

Example::

    >>> from service.settings import Settings
    >>> s = Settings.from_sources(["--registry", "reg", "--name", "m", "--port", "9000"], env={})
    >>> s.port, s.host, s.backend
    (9000, '127.0.0.1', 'onnx')
    >>> Settings.from_sources(["--registry", "reg", "--name", "m"], env={"QAEMBED_PORT": "81"}).port
    81
    >>> s.latest_poll_s, s.replace(version="v0002").latest_poll_s   # a pinned version is never replaced
    (30.0, 0.0)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "QAEMBED_"
FAISS_INDEX_TYPES = ("auto", "flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "hnsw-sq8")
# --index: a FAISS index type ("faiss" = "auto") or "milvus" (documents live in a Milvus server/cluster)
INDEX_TYPES = (*FAISS_INDEX_TYPES, "faiss", "milvus")
MILVUS_INDEX_TYPES = ("AUTOINDEX", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")
MILVUS_CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
VARIANTS = ("auto", "int8", "onnx", "onnx-optimized", "fp16")
DEFAULT_RELOAD_INTERVAL = 30.0


class SettingsError(ValueError):
    """A flag or environment variable has an invalid value; the message names it."""


def _bool(value: str) -> bool:
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one service process. Immutable once built."""

    registry: Path | None = None
    name: str | None = None
    version: str | None = None
    data_dir: Path | None = None
    corpus: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: tuple[str, ...] = field(default=(), repr=False)
    admin_api_key: tuple[str, ...] = field(default=(), repr=False)
    # inference
    backend: str = "onnx"  # onnx | torch
    variant: str = "auto"  # auto → int8 on CPU, onnx (fp32) on CUDA
    device: str = "auto"  # auto | cpu | cuda
    torch_model: Path | None = None  # sentence-transformers folder for --backend torch
    intra_op_threads: int = 0  # 0 → number of CPU cores
    inference_workers: int = 0  # forward passes at once; 0 → the backend's choice (2 for ONNX on CPU, else 1)
    max_batch_tokens: int = 16384  # padded tokens (batch × longest) per forward pass
    max_batch_size: int = 128
    max_wait_ms: float = 2.0
    max_queue_size: int = 2048  # texts waiting for inference; beyond → 429
    warmup: bool = True
    # request limits
    max_inputs: int = 256
    max_input_chars: int = 20000
    max_body_bytes: int = 4 * 1024 * 1024
    max_top_k: int = 100
    # index
    index: str = "auto"
    flat_max: int = 50_000  # auto: exact search up to this many documents, IVF-SQ8 above
    nlist: int = 0  # 0 → 2·√n (IndexConfig.lists)
    nprobe: int = 64
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    pq_m: int = 48
    index_threads: int = 1  # FAISS OpenMP threads per search (inference has the other cores)
    # --index milvus: documents, metadata, vectors and feedback live in Milvus; replicas are stateless
    milvus_uri: str | None = None  # http(s)://host:19530, or a local Milvus Lite file "path.db"
    milvus_token: str | None = field(default=None, repr=False)  # "user:password" or an API key
    milvus_token_file: Path | None = None  # the token from a mounted Secret (read at start)
    milvus_prefix: str = "qaembed"  # collections are <prefix>_<name>_<model version>, alias <prefix>_<name>
    milvus_index_type: str = "AUTOINDEX"
    milvus_consistency: str = "Strong"  # read-your-writes across replicas; Bounded is faster, seconds stale
    # durability
    snapshot_every: int = 1000  # WAL records between snapshots
    # model updates: poll <registry>/<name>/LATEST every this many seconds (0 = off; None = 30 unless
    # --version pins one); a new version is loaded like POST /admin/reload
    reload_interval: float | None = None
    # operations
    log_level: str = "info"
    ready_timeout_s: float = 600.0

    # ------------------------------------------------------------------ building
    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog="python -m service",
            description="qaembed embedding and semantic-search service. Every flag is also QAEMBED_<FLAG>.",
        )
        add = p.add_argument
        add("--registry", type=Path, help="artifact registry folder (export/)")
        add("--name", help="model name in the registry")
        add("--version", help="bundle version (default: LATEST)")
        add("--data_dir", type=Path, help="state folder: documents, snapshots, write-ahead log")
        add("--corpus", type=Path, nargs="*", help="QA data file(s); answers/passages become documents")
        add("--host")
        add("--port", type=int)
        add("--api_key", help="Bearer key(s) for data routes, comma-separated (prefer the env var)")
        add("--admin_api_key", help="Bearer key(s) for /admin routes, comma-separated (prefer the env var)")
        add("--backend", choices=("onnx", "torch"))
        add("--variant", choices=VARIANTS)
        add("--device", choices=("auto", "cpu", "cuda"))
        add("--torch_model", type=Path, help="sentence-transformers folder for --backend torch")
        add("--intra_op_threads", type=int)
        add("--inference_workers", type=int, help="forward passes run at once (default: the backend's choice)")
        add("--max_batch_tokens", type=int)
        add("--max_batch_size", type=int)
        add("--max_wait_ms", type=float)
        add("--max_queue_size", type=int)
        add("--warmup", type=_bool)
        add("--max_inputs", type=int)
        add("--max_input_chars", type=int)
        add("--max_body_bytes", type=int)
        add("--max_top_k", type=int)
        add("--index", choices=INDEX_TYPES, help="FAISS index type (auto = faiss) or milvus")
        add("--flat_max", type=int)
        add("--nlist", type=int)
        add("--nprobe", type=int)
        add("--hnsw_m", type=int)
        add("--ef_construction", type=int)
        add("--ef_search", type=int)
        add("--pq_m", type=int)
        add("--index_threads", type=int)
        add("--milvus_uri", help="Milvus URI for --index milvus (http://host:19530 or a Milvus Lite file.db)")
        add("--milvus_token", help="Milvus token (prefer QAEMBED_MILVUS_TOKEN or --milvus_token_file)")
        add("--milvus_token_file", type=Path, help="file holding the Milvus token (a mounted Secret)")
        add("--milvus_prefix", help="prefix of the Milvus collection and alias names")
        add("--milvus_index_type", choices=MILVUS_INDEX_TYPES)
        add("--milvus_consistency", choices=MILVUS_CONSISTENCY)
        add("--snapshot_every", type=int)
        add("--reload_interval", type=float,
            help=f"seconds between checks of LATEST for a new version (0 = off; default {DEFAULT_RELOAD_INTERVAL:g}, "
                 "off when --version is pinned)")
        add("--log_level", choices=("debug", "info", "warning", "error"))
        add("--ready_timeout_s", type=float)
        p.set_defaults(**{a.dest: None for a in p._actions if a.dest != "help"})
        return p

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Flags (``argv``) over environment (``env``, default ``os.environ``) over defaults."""
        env = os.environ if env is None else env
        parser = cls.parser()
        args = vars(parser.parse_args(list(argv) if argv is not None else None))
        actions = {a.dest: a for a in parser._actions if a.dest != "help"}
        values: dict[str, object] = {}
        for dest, action in actions.items():
            value = args.get(dest)
            if value is None and (ENV_PREFIX + dest.upper()) in env:
                raw = env[ENV_PREFIX + dest.upper()]
                if raw == "":
                    continue
                try:
                    value = cls._convert(action, raw)
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    raise SettingsError(f"{ENV_PREFIX}{dest.upper()}: {exc}") from None
            if value is not None:
                values[dest] = value
        return cls.build(**values)

    @staticmethod
    def _convert(action: argparse.Action, raw: str) -> object:
        if action.nargs == "*":
            return [action.type(part) if action.type else part for part in raw.split(os.pathsep) if part]
        value = action.type(raw) if action.type else raw
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"invalid choice {raw!r} (choose from {', '.join(map(str, action.choices))})")
        return value

    @classmethod
    def build(cls, **values: object) -> Settings:
        """Build and validate from keyword values (tests use this directly)."""
        for key in ("api_key", "admin_api_key"):
            raw = values.get(key)
            if isinstance(raw, str):
                values[key] = tuple(k.strip() for k in raw.split(",") if k.strip())
        if "corpus" in values and values["corpus"] is not None:
            corpus = values["corpus"]
            values["corpus"] = tuple(Path(p) for p in ([corpus] if isinstance(corpus, (str, Path)) else corpus))
        if values.get("index") == "faiss":  # the embedded default, spelled by its engine's name
            values["index"] = "auto"
        for key in ("registry", "data_dir", "torch_model", "milvus_token_file"):
            if values.get(key) is not None:
                values[key] = Path(values[key])  # type: ignore[arg-type]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def replace(self, **changes: object) -> Settings:
        return Settings.build(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes})

    def validate(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if value < 0 or (value == 0 and not allow_zero):
                raise SettingsError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

        if not 0 < self.port < 65536 and self.port != 0:
            raise SettingsError(f"--port must be in 1..65535, got {self.port}")
        for name in ("max_batch_tokens", "max_batch_size", "max_queue_size", "max_inputs", "max_input_chars",
                     "max_body_bytes", "max_top_k", "flat_max", "nprobe", "hnsw_m", "ef_construction",
                     "ef_search", "pq_m", "index_threads", "snapshot_every"):
            positive(name)
        for name in ("max_wait_ms", "intra_op_threads", "inference_workers", "nlist"):
            positive(name, allow_zero=True)
        if self.reload_interval is not None and not 0 <= self.reload_interval < float("inf"):
            raise SettingsError(f"--reload_interval must be >= 0 seconds, got {self.reload_interval}")
        if self.max_inputs > self.max_queue_size:
            raise SettingsError("--max_inputs must not exceed --max_queue_size (such a request could never run)")
        if self.backend not in ("onnx", "torch"):
            raise SettingsError(f"--backend must be onnx or torch, got {self.backend!r}")
        if self.index not in INDEX_TYPES:
            raise SettingsError(f"--index must be one of {', '.join(INDEX_TYPES)}, got {self.index!r}")
        if self.variant not in VARIANTS:
            raise SettingsError(f"--variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.index == "milvus" and not self.milvus_uri:
            raise SettingsError("--index milvus needs --milvus_uri (or QAEMBED_MILVUS_URI)")
        if self.milvus_index_type not in MILVUS_INDEX_TYPES or self.milvus_consistency not in MILVUS_CONSISTENCY:
            raise SettingsError(f"--milvus_index_type must be one of {', '.join(MILVUS_INDEX_TYPES)} and "
                                f"--milvus_consistency one of {', '.join(MILVUS_CONSISTENCY)}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.milvus_prefix):
            raise SettingsError(f"--milvus_prefix must be letters, digits and '_' (Milvus names), got "
                                f"{self.milvus_prefix!r}")
        if set(self.api_key) & set(self.admin_api_key):
            raise SettingsError("--api_key and --admin_api_key must differ")

    @property
    def latest_poll_s(self) -> float:
        """Seconds between checks of LATEST; 0 when off (a pinned --version always turns it off)."""
        if self.version is not None:
            return 0.0
        return DEFAULT_RELOAD_INTERVAL if self.reload_interval is None else self.reload_interval

    def require_model(self) -> None:
        """The command line must name a bundle (tests may inject a model loader instead)."""
        missing = [f"--{n} (or {ENV_PREFIX}{n.upper()})" for n in ("registry", "name") if getattr(self, n) is None]
        if missing:
            raise SettingsError("missing " + " and ".join(missing))

    def public(self) -> dict[str, object]:
        """Settings safe to show (keys reduced to whether they are set)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("api_key", "admin_api_key", "milvus_token"):
                value = bool(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[f.name] = value
        return out
