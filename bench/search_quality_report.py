"""What ``bench_search_quality``'s results say: its goals (issue 15) and its report,
``docs/benchmarks/search_quality.md`` (one table per evaluation set, rankers × models, with the in-process BM25
cross-check and the ingest durations)."""

from __future__ import annotations

import numpy as np
from run_all import goals_and_notes

ROW_ORDER = ("dense, truncated", "dense, chunked", "lexical", "hybrid", "RRF", "hybrid, truncated dense")


def rows_of(per_model: dict) -> dict:
    """One model's rows on one set, its truncated and chunked servers' together."""
    return {row: v for setting in per_model.values() for row, v in setting.get("rows", {}).items()}


def goals(result: dict) -> dict:
    """Per model and set: hybrid MRR@10 ≥ max(dense, lexical); on tquad1.dev also chunked dense ≥ truncated + 5
    points."""
    out: dict = {}
    for set_name, entry in result["sets"].items():
        for label, per_model in entry["models"].items():
            rows = rows_of(per_model)
            hybrid, dense, lexical = (rows[k]["mrr@10"] for k in ("hybrid", "dense, chunked", "lexical"))
            best = "lexical" if lexical >= dense else "dense, chunked"
            out[f"{label}, {set_name}: hybrid ≥ max(dense, lexical)"] = {
                "hybrid": hybrid, "best_single": max(dense, lexical), "met": hybrid >= max(dense, lexical),
                **paired_difference(rows["hybrid"], rows[best])}
            if set_name.startswith("tquad1.dev"):
                gain = rows["dense, chunked"]["mrr@10"] - rows["dense, truncated"]["mrr@10"]
                out[f"{label}, {set_name}: chunked dense ≥ truncated + 5 points"] = {
                    "gain_points": round(gain * 100, 1), "met": gain >= 0.05}
    return out


def paired_difference(row: dict, baseline: dict) -> dict:
    """``row`` − ``baseline`` in MRR@10 points and the standard error of that difference over the same questions
    (paired), where both rows kept their per-question reciprocal ranks: a difference within one standard error is
    one the questions cannot tell from noise."""
    a, b = row.get("reciprocal_ranks"), baseline.get("reciprocal_ranks")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return {}
    diff = np.asarray(a) - np.asarray(b)
    return {"difference_points": round(float(diff.mean()) * 100, 2),
            "standard_error_points": round(float(diff.std(ddof=1) / np.sqrt(len(diff))) * 100, 2)}


def alpha_cell(per_model: dict) -> str:
    chunked = per_model.get("chunked", {})
    alpha = next(iter(chunked.get("alpha", {}).values()), None)
    source = next(iter(chunked.get("alpha_source", {}).values()), None)
    return f"α = {alpha}" + {"bundle": " from the bundle", "default": ", the service's default",
                             "setting": " from --hybrid_alpha"}.get(source, f" ({source})" if source else "")


def report(result: dict, command: str) -> list[str]:
    models = dict(sorted(result["models"].items(), key=lambda kv: kv[0] != "base"))
    commands = sorted({m["run"]["command"] for m in models.values() if m.get("run")}) or [command]
    lines = [
        "# Search quality through /search",
        "",
        f"{' and '.join(f'`{c}`' for c in commands)} ({result['machine']}; each model's date and machine load "
        "below: a quality measurement, load changes durations, not the numbers).",
        "",
        "Each cell: `python -m service` on loopback with a fresh `--data_dir`, the set's unique passages "
        "ingested through `POST /documents`, every question sent through `POST /search` (top_k 10), the hits "
        "scored by `training.metrics.evaluate_rankings` (the metric training, the export gate and the promotion "
        "gate share). Truncated: `--chunk_stride 0` (a passage past max_seq_length is cut to its beginning); "
        "chunked: overlapping windows, a passage scored by its best window. Hybrid: weighted fusion of per-query "
        "min-max normalised dense and BM25 scores with the bundle's α (shown); RRF: `\"fusion\": \"rrf\"`.",
        "",
        "Models:",
        "",
    ]
    for label, m in models.items():
        fusion = m.get("fusion") or {}
        run = m.get("run", {})
        lines.append(f"* **{label}**: `{m['model_dir']}` exported as {m['bundle']} (max_seq_length "
                     f"{m['max_seq_length']}; variants {', '.join(m.get('variants', [])) or '?'}: the service "
                     f"serves int8, else onnx-optimized); bundle α {fusion.get('alpha', 'none')} chosen on "
                     f"{fusion.get('chosen_on', 'nothing (service default)')}. Measured {run.get('date', '?')} "
                     f"(load average {run.get('load_before', '?')} before, {run.get('load_after', '?')} after).")
        trained = m.get("training")
        if trained:
            config, data = trained.get("config", {}), trained.get("data", {})
            lines[-1] += (f" Trained by `python -m training` on {', '.join(data.get('sources', []))}: "
                          f"{data.get('train_pairs')} training pairs, {config.get('epochs')} epoch(s), batch "
                          f"{config.get('batch_size')}, max_seq_length {config.get('max_seq_length')}, "
                          + ("hard negatives mined by " + str(config.get("negatives_from"))
                             if config.get("hard_negatives") else "in-batch negatives only") + ".")
    for set_name, entry in result["sets"].items():
        labels = [label for label in models if label in entry["models"]]
        lines += ["", f"## {set_name} ({entry['queries']} questions, {entry['passages']} passages)", "",
                  "| ranker | " + " | ".join(f"{label} MRR@10 | {label} R@10" for label in labels) + " |",
                  "|---|" + "---|---|" * len(labels)]
        all_rows = {label: rows_of(entry["models"][label]) for label in labels}
        swept = sorted({row for label in labels for row in all_rows[label] if row.endswith("(request)")},
                       key=lambda r: float(r.split("= ")[1].split(" ")[0]))
        for row in (*ROW_ORDER, *swept):
            cells = []
            for label in labels:
                r = all_rows[label].get(row)
                cells += [f"{r['mrr@10']:.3f}", f"{r['recall@10']:.3f}"] if r else ["-", "-"]
            alphas = "; ".join(f"{lb}: {alpha_cell(entry['models'][lb])}" for lb in labels)
            name = f"hybrid ({alphas})" if row == "hybrid" else row
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        bm = entry["bm25_in_process"]
        check = ", ".join(f"{label} servers {all_rows[label]['lexical']['mrr@10']:.3f} / "
                          f"{all_rows[label].get('lexical (truncated server)', {}).get('mrr@10', float('nan')):.3f}"
                          for label in labels)
        lines += ["", f"Cross-check: BM25 in process (`training.retrieval.lexical_rankings`, as "
                  f"`bench/bench_lexical.py`) MRR@10 {bm['mrr@10']:.3f}, R@10 {bm['recall@10']:.3f}; the "
                  f"service's lexical mode (chunked / truncated server): {check}."]
        timing = []
        for label in labels:
            for setting, s in entry["models"][label].items():
                rows = s.get("index") or {}
                cut = next(iter(s.get("chunking", {}).values()), None)
                timing.append(f"{label} {setting} ({cut or 'chunking not shown'}): ingest {s['ingest_s']} s "
                              f"({s['docs_per_s']} passages/s, {rows.get('rows', '?')} vectors for "
                              f"{rows.get('documents', '?')} documents)")
        lines += ["", "Ingest: " + "; ".join(timing) + "."]
    base_first = sorted(result["goals"].items(), key=lambda kv: not kv[0].startswith("base"))
    return lines + goals_and_notes(base_first, result.get("notes", []))
