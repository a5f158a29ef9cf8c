"""Benchmark of the serving stack: HTTP load, /search at 100k documents, FAISS index types at scale.

    python bench/bench_service.py [--registry DIR --name NAME] [--quick] [--infinity PATH/TO/infinity_emb]

* **HTTP /embed load** from this process (a second process; loopback only) against ``python -m
  service`` at 1, 4, 16 and 64 concurrent clients, single short queries and batches of 32; each level
  is bounded in requests and seconds. Baseline in the same run on the same texts: in-process
  ``SentenceTransformer.encode(batch_size=32)`` (torch), and, with ``--infinity``, Infinity's server
  (``infinity_emb v2``, torch engine) serving the same model folder under the same single-query load.
  Infinity lives in its own virtualenv (its pins clash with ours):
  ``python -m venv /tmp/inf && /tmp/inf/bin/pip install torch==2.13.0 'infinity-emb[server,torch]==0.0.78'``.
* **/search at 100k documents**: a data directory is pre-built from real passage embeddings plus
  noise (written into the service's SQLite store with their vectors, so the start-up does not embed
  100k texts), p50/p95/p99 at 8 clients, the service's peak RSS; baseline: in-process encode + exact
  search of one query.
* **FAISS index types** at 100k and 1M 384-d vectors shaped like real embeddings: build time, index
  size, QPS and recall@10 against exact search.

Texts: questions/passages of ``tquad1`` (and ``enelpi2020``) from ``/work/shared/data/turkish-qa``.
Writes ``docs/benchmarks/service.md`` and ``bench/results/service.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_over_http import http_embed, http_infinity, strongest, torch_baseline  # noqa: E402  (bench/)
from faiss_index_types import index_scale  # noqa: E402
from inputs import RESULTS, default_registry, load_texts  # noqa: E402
from search_at_100k import search_at_100k  # noqa: E402
from service_report import DOC, write_report  # noqa: E402
from synthetic_corpus import encode_passages  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, help="bundle registry (default: export the bundled MiniLM)")
    p.add_argument("--name", default="minilm")
    p.add_argument("--quick", action="store_true", help="shorter levels, no 1M index sweep")
    p.add_argument("--passages", type=int, default=3000, help="real passages embedded as noise centres")
    p.add_argument("--hnsw_max", type=int, default=100_000, help="largest n for which HNSW is built")
    p.add_argument("--load_note", default="not recorded",
                   help="how busy the machine was (other jobs, load average): printed with the parts this run ran")
    p.add_argument("--infinity", help="path of an infinity_emb executable (own venv) to compare /embed against")
    p.add_argument("--only", choices=("embed", "search", "index"), action="append",
                   help="run only these parts (repeatable); the report lists what ran")
    args = p.parse_args()
    command = "python bench/bench_service.py " + shlex.join(sys.argv[1:])
    workdir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    default_registry(args)
    from export.bundle import open_bundle

    bundle = open_bundle(args.registry, args.name)
    questions, passages = load_texts()
    results: dict = {"machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU" ,
                     "texts": f"{len(questions)} questions of tquad1.dev.jsonl; {len(passages)} unique passages",
                     "bundle": f"{bundle.name}/{bundle.version} (max_seq_length {bundle.max_seq_length})"}
    parts = set(args.only or ("embed", "search", "index"))
    previous = RESULTS / "service.json"
    if args.only and previous.exists():  # keep the parts not re-run from the last full run
        old = json.loads(previous.read_text())
        results.update({k: v for k, v in old.items() if k in ("torch_baseline", "embed", "infinity", "search",
                                                                "index", "load", "command_of")})
    results.setdefault("load", {}).update({part: args.load_note for part in parts})
    results.setdefault("command_of", {}).update({part: command for part in parts})
    if "embed" in parts:
        before = torch_baseline(questions, bundle.max_seq_length)
        print("torch", before, flush=True)
        results["embed"] = http_embed(args.registry, args.name, questions, workdir, args.quick)
        results["torch_baseline"] = strongest(before, torch_baseline(questions, bundle.max_seq_length))
        print("torch", results["torch_baseline"], flush=True)
        if args.infinity:
            results["infinity"] = http_infinity(args.infinity, questions, workdir, args.quick)
    base, model = encode_passages(args.registry, args.name, passages, args.passages)
    qvec, _ = asyncio.run(model.embed(questions[:200], is_query=True))
    queries = np.ascontiguousarray(qvec.vectors)
    if "search" in parts:
        results["search"] = search_at_100k(args.registry, args.name, passages, base, model, questions, workdir,
                                           args.quick)
    else:
        model.close()
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    if "index" in parts:
        results["index"] = index_scale(base, queries, sizes, args.hnsw_max)
    results["notes"] = [
        f"HNSW is built only up to {args.hnsw_max:,} vectors (graph construction at 1M on 2 shared cores "
        "takes longer than the benchmark budget).",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "service.json").write_text(json.dumps(results, indent=1))
    write_report(results, command)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
