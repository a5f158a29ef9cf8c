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
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.analyzer import ANALYZER_NAMES

ENV_PREFIX = "QAEMBED_"
FAISS_INDEX_TYPES = ("auto", "flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "hnsw-sq8")
# --index: a FAISS index type ("faiss" = "auto") or "milvus" (documents live in a Milvus server/cluster)
INDEX_TYPES = (*FAISS_INDEX_TYPES, "faiss", "milvus")
MILVUS_INDEX_TYPES = ("AUTOINDEX", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")
MILVUS_CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
VARIANTS = ("auto", "int8", "onnx", "onnx-optimized", "fp16")
DEFAULT_RELOAD_INTERVAL = 30.0
# docs/operations.md holds Settings.table() between these two lines (scripts/settings_table.py writes it)
TABLE_BEGIN = "<!-- settings table: generated from service/settings.py by `make settings-table` -->"
TABLE_END = "<!-- end of settings table -->"


_SECRETS = ("api_key", "admin_api_key", "milvus_token")


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
    max_queue_wait_ms: float = 2000.0  # a request whose texts could not start within it → 429 (0: no bound)
    warmup: bool = True
    # request limits
    max_inputs: int = 256
    max_input_chars: int = 20000
    max_body_bytes: int = 4 * 1024 * 1024
    max_top_k: int = 100
    max_response_bytes: int = 8 * 1024 * 1024  # one /search answer, estimated before it is built (413 above)
    max_metadata_bytes: int = 64 * 1024  # one document's metadata as JSON (413 on upsert above)
    # long documents: tokens between the starts of a document's windows (None: half a window; 0: no chunking,
    # a document is embedded whole, i.e. truncated to max_seq_length)
    chunk_stride: int | None = None
    # connections: what a slow or idle client may hold (uvicorn's limits and the body read deadline)
    keep_alive_s: float = 5.0
    max_connections: int = 1000
    max_concurrent_requests: int = 512  # data and admin requests in flight; beyond → 429 before the body is read
    body_timeout_s: float = 30.0
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
    snapshot_every: int = 1000  # document writes between checks whether the FAISS index needs compacting
    analyzer: str = "tr"  # lexical analyzer of the documents in --data_dir (stored there: a restart can't change it)
    hybrid_alpha: float | None = None  # hybrid search's α (dense weight); unset: the bundle's, else 0.5
    # model updates: poll <registry>/<name>/LATEST every this many seconds (0 = off; None = 30 unless
    # --version pins one); a new version is loaded like POST /admin/reload
    reload_interval: float | None = None
    # operations
    log_level: str = "info"
    ready_timeout_s: float = 600.0
    strict_env: bool = False

    # ------------------------------------------------------------------ building
    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog="python -m service",
            description="qaembed embedding and semantic-search service. Every flag is also QAEMBED_<FLAG>.",
        )
        add = p.add_argument
        add("--registry", type=Path, help="artifact registry folder (written by python -m export)")
        add("--name", help="bundle name in the registry")
        add("--version", help="bundle version to serve (unset: the one LATEST names)")
        add("--data_dir", type=Path,
            help="state folder: the SQLite database of documents, vectors, lexical index and feedback (unset: "
                 "documents live in memory)")
        add("--corpus", type=Path, nargs="*",
            help="QA data file(s) whose answers/passages become documents at start (os.pathsep-separated in the "
                 "variable)")
        add("--host", help="listen address (0.0.0.0: every interface)")
        add("--port", type=int, help="listen port")
        add("--api_key", help="Bearer key(s) for data routes, comma-separated (prefer the env var)")
        add("--admin_api_key", help="Bearer key(s) for /admin routes, comma-separated (prefer the env var)")
        add("--backend", choices=("onnx", "torch"), help="inference: the bundle's ONNX files, or a PyTorch folder")
        add("--variant", choices=VARIANTS, help="bundle variant to serve (auto: int8 on CPU, onnx fp32 on CUDA)")
        add("--device", choices=("auto", "cpu", "cuda"), help="where inference runs")
        add("--torch_model", type=Path, help="sentence-transformers folder for --backend torch")
        add("--intra_op_threads", type=int, help="ONNX Runtime threads per forward pass (0: every CPU core)")
        add("--inference_workers", type=int,
            help="forward passes run at once (0: the backend's choice, 2 for ONNX on CPU, else 1)")
        add("--max_batch_tokens", type=int, help="padded tokens (batch × longest text) per forward pass")
        add("--max_batch_size", type=int, help="texts per forward pass")
        add("--max_wait_ms", type=float, help="how long a forward pass waits for more texts to batch")
        add("--max_queue_size", type=int, help="texts waiting for inference; requests beyond it get 429")
        add("--max_queue_wait_ms", type=float,
            help="a request whose texts could not start inference within this many ms gets 429 (0: no bound)")
        add("--warmup", type=_bool, help="run forward passes at start, before /ready")
        add("--max_inputs", type=int, help="texts per request")
        add("--max_input_chars", type=int, help="characters per text")
        add("--max_body_bytes", type=int, help="request body size limit (413 above)")
        add("--max_top_k", type=int, help="largest top_k a search may ask for")
        add("--max_response_bytes", type=int,
            help="size limit of one /search answer, estimated from the stored texts and metadata before it is built "
                 "(413 above: lower top_k, send fewer queries or ask without text/metadata)")
        add("--max_metadata_bytes", type=int, help="size limit of one document's metadata as JSON (413 on upsert)")
        add("--chunk_stride", type=int,
            help="a document longer than max_seq_length is split into windows of max_seq_length less the special "
                 "tokens, one starting every this many tokens, each embedded; a document scores as its best window "
                 "(default: half a window; 0: no chunking, long documents truncated). Changing it re-embeds the "
                 "stored documents at the next start")
        add("--keep_alive_s", type=float, help="seconds an idle keep-alive connection stays open")
        add("--max_connections", type=int,
            help="connections and requests at once; beyond it uvicorn answers 503 (plain text) and closes")
        add("--max_concurrent_requests", type=int,
            help="data and admin requests in flight (probes and /metrics are not counted); beyond it 429 at once, "
                 "before the body is read; keep it well below --max_connections")
        add("--body_timeout_s", type=float,
            help="seconds a request body may take to arrive in full (408 and the connection closed after)")
        add("--index", choices=INDEX_TYPES, help="FAISS index type (auto = faiss) or milvus")
        add("--flat_max", type=int, help="--index auto: exact search up to this many documents, IVF-SQ8 above")
        add("--nlist", type=int, help="IVF lists (0: 2·√documents)")
        add("--nprobe", type=int, help="IVF lists searched per query")
        add("--hnsw_m", type=int, help="HNSW links per node")
        add("--ef_construction", type=int, help="HNSW search width while building")
        add("--ef_search", type=int, help="HNSW search width per query")
        add("--pq_m", type=int, help="IVF-PQ sub-quantizers per vector")
        add("--index_threads", type=int, help="FAISS threads per search (inference has the other cores)")
        add("--milvus_uri", help="Milvus URI for --index milvus (http://host:19530 or a Milvus Lite file.db)")
        add("--milvus_token", help="Milvus token (prefer QAEMBED_MILVUS_TOKEN or --milvus_token_file)")
        add("--milvus_token_file", type=Path, help="file holding the Milvus token (a mounted Secret)")
        add("--milvus_prefix", help="prefix of the Milvus collection and alias names")
        add("--milvus_index_type", choices=MILVUS_INDEX_TYPES, help="index type of new Milvus collections")
        add("--milvus_consistency", choices=MILVUS_CONSISTENCY,
            help="Milvus read consistency (Strong: read-your-writes across replicas; Bounded: faster, seconds stale)")
        add("--snapshot_every", type=int,
            help="document writes between checks whether the FAISS index needs compacting (the store is SQLite: "
                 "no snapshots are written)")
        add("--analyzer", choices=ANALYZER_NAMES,
            help="lexical analyzer of the documents (tr: Turkish lowercasing and stems); stored with the data: "
                 "a restart with another one is refused")
        add("--hybrid_alpha", type=float,
            help="hybrid /search: weight of the dense side in [0, 1] (unset: the α the model bundle records, chosen on "
                 "data by training or export, else 0.5); a request's alpha overrides it")
        add("--reload_interval", type=float,
            help=f"seconds between checks of LATEST for a new version (0 = off; default {DEFAULT_RELOAD_INTERVAL:g}, "
                 "off when --version is pinned)")
        add("--log_level", choices=("debug", "info", "warning", "error"), help="log level")
        add("--strict_env", type=_bool, nargs="?", const=True,
            help=f"refuse to start when a {ENV_PREFIX}* variable is not a setting (a misspelling) instead of warning")
        add("--ready_timeout_s", type=float, help="how long start-up may wait for Milvus before it fails")
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
        misspelt = unknown_variables(env)
        if misspelt and values.get("strict_env"):
            raise SettingsError("; ".join(misspelt) + " (--strict_env refuses to start with unknown variables)")
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
                     "max_body_bytes", "max_top_k", "max_response_bytes", "max_metadata_bytes", "max_connections",
                     "max_concurrent_requests",
                     "keep_alive_s", "body_timeout_s", "flat_max", "nprobe", "hnsw_m", "ef_construction",
                     "ef_search", "pq_m", "index_threads", "snapshot_every"):
            positive(name)
        for name in ("max_wait_ms", "max_queue_wait_ms", "intra_op_threads", "inference_workers", "nlist"):
            positive(name, allow_zero=True)
        if self.chunk_stride is not None and self.chunk_stride < 0:
            raise SettingsError(f"--chunk_stride must be >= 0 (0: no chunking), got {self.chunk_stride}")
        if self.hybrid_alpha is not None and not 0.0 <= self.hybrid_alpha <= 1.0:  # nan fails too
            raise SettingsError(f"--hybrid_alpha must be in [0, 1], got {self.hybrid_alpha}")
        if self.reload_interval is not None and not 0 <= self.reload_interval < float("inf"):
            raise SettingsError(f"--reload_interval must be >= 0 seconds, got {self.reload_interval}")
        if self.max_inputs > self.max_queue_size:
            raise SettingsError("--max_inputs must not exceed --max_queue_size (such a request could never run)")
        if self.backend not in ("onnx", "torch"):
            raise SettingsError(f"--backend must be onnx or torch, got {self.backend!r}")
        if self.analyzer not in ANALYZER_NAMES:
            raise SettingsError(f"--analyzer must be one of {', '.join(ANALYZER_NAMES)}, got {self.analyzer!r}")
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
        for name in ("api_key", "admin_api_key"):
            for number, key in enumerate(getattr(self, name), 1):
                if not re.fullmatch(r"[!-~]+", key):  # the key itself is never shown: it is a secret
                    raise SettingsError(
                        f"--{name} ({ENV_PREFIX}{name.upper()}): key {number} has a character other than printable "
                        "ASCII (or a space): such a key could never match, HTTP clients send those characters as "
                        "latin-1, as UTF-8 or not at all. Use letters, digits and punctuation, e.g. from "
                        "`openssl rand -hex 32`")

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

    @classmethod
    def table(cls) -> str:
        """Every setting as a Markdown table (flag, variable, default, meaning): the one in docs/operations.md,
        rewritten by ``make settings-table``."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
        for action in cls.parser()._actions:
            if action.dest == "help":
                continue
            default = defaults[action.dest]
            shown = str(default).lower() if isinstance(default, bool) else "" if default in (None, ()) else default
            meaning = (action.help or "").replace("|", "\\|")
            if action.choices:
                meaning += f" ({', '.join(map(str, action.choices))})"
            rows.append(f"| `--{action.dest}` | `{ENV_PREFIX}{action.dest.upper()}` | "
                        f"{f'`{shown}`' if shown != '' else '—'} | {meaning} |")
        return "\n".join(rows) + "\n"

    def summary(self) -> str:
        """The settings that differ from their defaults, ``name=value`` (keys shown as ``set``): the start-up log
        line, short enough to read."""
        defaults = Settings().public()
        changed = {k: v for k, v in self.public().items() if v != defaults[k]}
        return " ".join(f"{k}={'set' if v is True and k in _SECRETS else v}" for k, v in changed.items()) or "defaults"

    def public(self) -> dict[str, object]:
        """Settings safe to show (keys reduced to whether they are set)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRETS:
                value = bool(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[f.name] = value
        return out


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One message per ``QAEMBED_*`` variable in ``env`` that is no setting, naming the closest real one: a
    misspelt ``QAEMBED_API_KEYS`` would otherwise be ignored in silence and leave every route open."""
    names = [f.name.upper() for f in dataclasses.fields(Settings)]
    messages = []
    for variable in sorted(v for v in env if v.startswith(ENV_PREFIX)):
        name = variable[len(ENV_PREFIX):]
        if name in names:
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        messages.append(f"{variable} is not a setting{hint}")
    return messages
