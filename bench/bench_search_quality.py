"""Search quality through the real ``/search``: dense truncated vs chunked, lexical, hybrid, RRF, per model.

    python bench/bench_search_quality.py [--finetuned MODEL_DIR | --base_only] [--registry DIR] [--no_docs]
                                         [--sets tquad1.dev.jsonl enelpi2020.test.jsonl] [--limit_passages N]

For each model (the bundled all-MiniLM-L6-v2 base, and a MiniLM fine-tuned on the shared train file) a bundle
is exported with ``python -m export``; then, for each evaluation set (``/work/shared/data/turkish-qa`` or
``QAEMBED_QA_DATA``, read in place) and each chunking setting, ``python -m service`` runs on loopback with a
fresh ``--data_dir``:

* the set's unique passages are ingested through ``POST /documents`` (corpus = the set's passages, as in
  training's evaluation), once with ``--chunk_stride 0`` (a passage longer than max_seq_length is cut to its
  beginning) and once chunked (overlapping windows, ``--chunk_stride`` as given, else the service's default);
* every question of the set is sent through ``POST /search`` (``top_k`` 10, batches of ``--queries_per_request``
  questions, no text or metadata back) in each mode: ``dense``, ``lexical``, ``hybrid`` (weighted fusion, the
  α of the bundle as ``/info`` shows it) and ``hybrid`` with ``fusion: rrf``;
* the hits' ids are scored by :func:`training.metrics.evaluate_rankings` (MRR@10, Recall@10), the metric every
  stage of the project shares.

Cross-check: BM25 in process (:func:`training.retrieval.lexical_rankings`, as ``bench/bench_lexical.py``
computes it) on the same corpus must give the service's lexical numbers.

Goals (issue 15): hybrid MRR@10 ≥ max(dense, lexical) on both sets; chunked dense ≥ truncated dense + 5 points
on tquad1.dev. Quality numbers do not depend on machine load (durations do; they are shown for planning).

Fine-tuned model: ``--finetuned DIR`` (a ``python -m training`` model folder; its metrics.json ``fusion`` gives
the bundle's α), else one trained here once (MiniLM, tquad1.train.jsonl, BM25-mined negatives, 1 epoch, under
``nice``; kept beside the registry and reused), or none with ``--base_only``. The base model has no training
run: it is exported at ``--base_max_seq_length`` (128, the length it was trained on) and its α is chosen by
``python -m export --eval_data`` on ``--base_eval_data`` (default both train files).
Training and α see only pairs apart from the evaluation sets (TQuAD's train and dev files share 19 passages).

Writes ``docs/benchmarks/search_quality.md`` (then ``docs/benchmarks.md``, see ``bench/run_all.py``) and
``bench/results/search_quality.json``; ``--no_docs`` (a smoke run) prints it only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import ingest  # noqa: E402  (bench/)
from http_load import Service  # noqa: E402
from inputs import DATA, EVAL_SETS, RESULTS, ROOT, apart_from_eval_sets  # noqa: E402
from run_all import finish, report_options, rewrite_report  # noqa: E402
from search_quality_report import goals, report  # noqa: E402

from training.analyzer import DEFAULT_ANALYZER, Analyzer  # noqa: E402
from training.data import load_qa_data, write_pairs_jsonl  # noqa: E402
from training.metrics import RetrievalTask, evaluate_rankings, reciprocal_ranks  # noqa: E402
from training.retrieval import lexical_rankings, ranking_keys  # noqa: E402

SETS = EVAL_SETS
BASE = "sentence-transformers/all-MiniLM-L6-v2"
# (row, chunking setting, request fields); "lexical" runs on both settings: they must agree (same FTS5 index)
MODES = (
    ("dense, truncated", "truncated", {"mode": "dense"}),
    ("hybrid, truncated dense", "truncated", {"mode": "hybrid"}),
    ("lexical (truncated server)", "truncated", {"mode": "lexical"}),
    ("dense, chunked", "chunked", {"mode": "dense"}),
    ("lexical", "chunked", {"mode": "lexical"}),
    ("hybrid", "chunked", {"mode": "hybrid"}),
    ("RRF", "chunked", {"mode": "hybrid", "fusion": "rrf"}),
)


# ------------------------------------------------------------------------------------------- data
def task_of(path: Path, limit_passages: int | None = None) -> RetrievalTask:
    """The set's questions and unique passages; with ``limit_passages`` only the first passages and the
    questions whose gold passage is among them (a smoke run)."""
    task = RetrievalTask.from_records(load_qa_data([path]).records)
    if not limit_passages or limit_passages >= len(task.corpus):
        return task
    keep = [(q, frozenset(r for r in rel if r < limit_passages)) for q, rel in zip(task.queries, task.relevant)]
    keep = [(q, rel) for q, rel in keep if rel]
    return RetrievalTask(tuple(q for q, _ in keep), task.corpus[:limit_passages], tuple(rel for _, rel in keep))


# ------------------------------------------------------------------------------------------- models
def export_bundle(model_dir: str, registry: Path, name: str, eval_data: list[Path], reexport: bool,
                  variants: str | None = None, max_seq_length: int | None = None) -> dict:
    """``python -m export`` of ``model_dir`` as ``registry/name`` (skipped when it exists, unless ``reexport``;
    ``variants``, ``max_seq_length``: export's options); returns the manifest's facts this report shows."""
    from export.bundle import open_bundle

    if reexport or not (registry / name / "LATEST").exists():
        command = [sys.executable, "-m", "export", "--model_dir", model_dir, "--registry", str(registry), "--name",
                   name, *(["--eval_data", *map(str, eval_data)] if eval_data else []),
                   *(["--variants", variants] if variants else []),
                   *(["--max_seq_length", str(max_seq_length)] if max_seq_length else [])]
        print("$", shlex.join(command), flush=True)
        t0 = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        print(f"exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    bundle = open_bundle(registry, name)
    manifest = json.loads((bundle.path / "manifest.json").read_text()) if (bundle.path / "manifest.json").exists() \
        else {}
    return {"bundle": f"{name}/{bundle.version}", "max_seq_length": bundle.max_seq_length,
            "variants": list(bundle.variants),
            "fusion": manifest.get("fusion"), "model_dir": model_dir}


def apart_copy(path: Path, folder: Path) -> Path:
    """A temporary JSONL of ``path``'s pairs apart from the evaluation sets (the shared data is never copied into
    the project): what a model trains on, or an export chooses α on."""
    return write_pairs_jsonl(apart_from_eval_sets(load_qa_data([path]).records), folder / path.name)


# the fine-tuned model of the report: BM25-mined negatives, one per question (docs/training.md measured it best)
TRAIN_FLAGS = ("--train_split", "0.9", "--epochs", "1", "--seed", "42", "--max_seq_length", "128", "--batch_size",
               "16", "--negatives_from", "bm25", "--num_negatives", "1")


def train_model(out: Path, pairs: int | None) -> Path:
    """Fine-tune MiniLM on tquad1.train.jsonl's pairs apart from the evaluation sets (a seeded sample of ``pairs``
    of them, else all) with :data:`TRAIN_FLAGS`, at low priority."""
    if (out / "metrics.json").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        command = ["nice", "-n", "10", sys.executable, "-m", "training", "--model_name", BASE, "--data_path",
                   str(apart_copy(DATA / "tquad1.train.jsonl", Path(tmp))), *TRAIN_FLAGS,
                   *(["--max_train_samples", str(pairs)] if pairs else []), "--output_dir", str(out)]
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    return out


# ------------------------------------------------------------------------------------------- service
def find(info: dict, key: str, path: str = "") -> list[tuple[str, object]]:
    """Every ``key`` anywhere in ``info`` (nested), with its dotted path: /info's layout is the service's."""
    out = []
    for k, v in info.items() if isinstance(info, dict) else ():
        here = f"{path}.{k}" if path else k
        if k == key:
            out.append((here, v))
        if isinstance(v, dict):
            out += find(v, key, here)
    return out


async def search_all(url: str, queries: tuple[str, ...], fields: dict, per_request: int,
                     clients: int) -> tuple[list[list[int]], list[dict]]:
    """Every query through POST /search; the hits' corpus indices per query, and the raw first hit of each
    (component scores, span) for the report."""
    import aiohttp

    ranked: list[list[int] | None] = [None] * len(queries)
    first: list[dict] = []
    batches = iter(range(0, len(queries), per_request))

    async def client(session: aiohttp.ClientSession) -> None:
        for start in batches:
            body = {"queries": list(queries[start:start + per_request]), "top_k": 10, "return_text": False,
                    "return_metadata": False, **fields}
            async with session.post(url + "/search", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"POST /search {fields} answered {r.status}: {(await r.text())[:500]}")
                answer = await r.json()
            for i, hits in enumerate(answer["results"]):
                ranked[start + i] = [int(h["id"][1:]) for h in hits]
                if hits:
                    first.append(hits[0])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return ranked, first


def run_server(bundle: dict, registry: Path, name: str, task: RetrievalTask, setting: str, args,
               workdir: Path) -> dict:
    """One server (one model, one set, one chunking setting): ingest the corpus, run its modes."""
    import httpx

    stride = ["--chunk_stride", "0"] if setting == "truncated" else (
        ["--chunk_stride", str(args.chunk_stride)] if args.chunk_stride else [])
    data = workdir / "data"
    svc = Service.qaembed(registry, name, data, *stride, *shlex.split(args.server_args))
    out: dict = {"server_args": stride + shlex.split(args.server_args)}
    try:
        svc.wait_ready()
        docs = [{"id": f"p{i}", "text": text} for i, text in enumerate(task.corpus)]
        seconds, _ = asyncio.run(ingest(svc.url, docs, args.batch, args.clients))
        info = httpx.get(svc.url + "/info", timeout=30).json()
        out.update(ingest_s=round(seconds, 1), docs_per_s=round(len(docs) / seconds, 2),
                   index=info.get("index"), alpha=dict(find(info, "alpha")),
                   alpha_source=dict(find(info, "alpha_source")), chunking=dict(find(info, "chunking")))
        print(f"  {setting}: ingested {len(docs)} passages in {seconds:.1f} s; index {info.get('index')}; "
              f"α {out['alpha']} ({out['alpha_source']})", flush=True)
        out["rows"] = {}
        sweep = [(f"hybrid, α = {a} (request)", "chunked", {"mode": "hybrid", "alpha": a}) for a in args.alphas]
        for row, row_setting, fields in (*MODES, *sweep):
            if row_setting != setting:
                continue
            t0 = time.perf_counter()
            ranked, first = asyncio.run(search_all(svc.url, task.queries, fields, args.queries_per_request,
                                                   args.clients))
            metrics = evaluate_rankings(task, ranked)
            out["rows"][row] = {"mrr@10": round(metrics["mrr@10"], 4), "recall@10": round(metrics["recall@10"], 4),
                                "seconds": round(time.perf_counter() - t0, 1),
                                "top_hits_with_span": sum(h.get("span") is not None for h in first),
                                "top_hits": len(first), "fields": fields}
            print(f"    {row}: {out['rows'][row]}", flush=True)
            # per question, for the goals' paired standard error (not printed)
            out["rows"][row]["reciprocal_ranks"] = [round(float(x), 4) for x in reciprocal_ranks(ranked, task.relevant)]
    except Exception:
        print(Path(svc.log.name).read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        svc.stop()
    return out


def run(args, workdir: Path) -> dict:
    args.registry.mkdir(parents=True, exist_ok=True)
    models = {}
    if args.only in (None, "base"):
        eval_data = [apart_copy(DATA / name, workdir) for name in args.base_eval_data]
        models["base"] = export_bundle(BASE, args.registry, "base", eval_data, args.reexport, args.base_variants,
                                       args.base_max_seq_length)
    finetuned = None if args.base_only or args.only == "base" else (
        args.finetuned or train_model(args.registry.parent / "quality-finetuned", args.train_pairs))
    if finetuned:
        models["fine-tuned"] = export_bundle(str(finetuned), args.registry, "finetuned", [], args.reexport)
        metrics = Path(finetuned) / "metrics.json"
        if metrics.exists():
            models["fine-tuned"]["training"] = {k: v for k, v in json.loads(metrics.read_text()).items()
                                                if k in ("config", "train_pairs", "data", "fusion")}
    result: dict = {"models": models, "sets": {}}
    analyzer = Analyzer.named(DEFAULT_ANALYZER)
    for set_name in args.sets:
        task = task_of(DATA / set_name, args.limit_passages)
        bm25 = evaluate_rankings(task, ranking_keys(lexical_rankings(task, analyzer)))
        entry = {"queries": len(task.queries), "passages": len(task.corpus),
                 "bm25_in_process": {"mrr@10": round(bm25["mrr@10"], 4), "recall@10": round(bm25["recall@10"], 4),
                                     "analyzer": analyzer.describe()},
                 "models": {}}
        print(f"{set_name}: {len(task.queries)} questions, {len(task.corpus)} passages; in-process BM25 "
              f"{entry['bm25_in_process']}", flush=True)
        for label, model in models.items():
            name = model["bundle"].split("/")[0]
            entry["models"][label] = {}
            for setting in ("truncated", "chunked"):
                print(f"  {label} / {setting}", flush=True)
                where = workdir / f"{name}-{setting}-{set_name}"
                where.mkdir()
                entry["models"][label][setting] = run_server(model, args.registry, name, task, setting, args, where)
                shutil.rmtree(where / "data", ignore_errors=True)
        result["sets"][set_name] = entry
    result["goals"] = goals(result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, default=RESULTS / "quality-registry",
                   help="where the bundles base and finetuned are exported (kept: reused by the next run)")
    p.add_argument("--finetuned", help="fine-tuned model folder (python -m training output)")
    p.add_argument("--base_only", action="store_true", help="no fine-tuned model (else --finetuned or trained here)")
    p.add_argument("--train_pairs", type=int, help="train on a seeded sample of this many pairs (default: all)")
    p.add_argument("--reexport", action="store_true", help="export the bundles again even if they exist")
    p.add_argument("--base_eval_data", nargs="*", default=["tquad1.train.jsonl", "enelpi2020.train.jsonl"],
                   help="files (in the data folder) on whose pairs apart from the evaluation sets export chooses "
                        "the base model's α")
    p.add_argument("--base_max_seq_length", type=int, default=128,
                   help="the base export's --max_seq_length: all-MiniLM-L6-v2 was trained on 128 tokens, and its "
                        "126-token windows rank passages better than 254-token ones (0: the model's own, 256)")
    p.add_argument("--base_variants", help="the base export's --variants (e.g. onnx,onnx-optimized where its int8 "
                   "fails the quality gate on --base_eval_data)")
    p.add_argument("--only", choices=("base", "fine-tuned"),
                   help="run this model only; the other's rows are kept from the last run's results JSON")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--limit_passages", type=int, help="smoke run: the first N passages of each set")
    p.add_argument("--alphas", type=float, nargs="*", default=[],
                   help="also hybrid at these α (request override), chunked: how α moves it, chosen on the set "
                        "itself (an upper bound, not a choice)")
    p.add_argument("--chunk_stride", type=int, help="the chunked servers' --chunk_stride (default: the service's)")
    p.add_argument("--batch", type=int, default=16, help="passages per POST /documents")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients for ingest and search")
    p.add_argument("--queries_per_request", type=int, default=8)
    p.add_argument("--server_args", default="", help="extra flags of python -m service, one string")
    report_options(p)
    args = p.parse_args()
    if args.report_only:
        rewrite_report("search_quality", args.note, report, RESULTS, args.no_docs)
        return
    command = "python bench/bench_search_quality.py " + shlex.join(sys.argv[1:])
    load_before = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(machine=f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU", command=command,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_before=load_before,
                  load_after=", ".join(f"{v:.1f}" for v in os.getloadavg()), seconds=time.perf_counter() - started)
    for model in result["models"].values():
        model["run"] = {k: result[k] for k in ("command", "date", "load_before", "load_after")}
    result["notes"] = list(args.note)
    previous = RESULTS / "search_quality.json"
    if args.only and previous.exists():  # keep the other model's rows from the last run (each says its run)
        old = json.loads(previous.read_text())
        for label, model in old["models"].items():
            if label not in result["models"]:
                result["models"][label] = model
                for set_name, entry in result["sets"].items():
                    if label in old["sets"].get(set_name, {}).get("models", {}):
                        entry["models"][label] = old["sets"][set_name]["models"][label]
        result["notes"] = list(dict.fromkeys(old.get("notes", []) + result["notes"]))
        result["goals"] = goals(result)
    finish("search_quality", result, report(result, command), args.no_docs, RESULTS)


if __name__ == "__main__":
    main()
