"""Goal ratio, interleaved: served int8 (one sequence per pass) vs in-process torch, short queries, batch 32.

Why: issue 17's goal is a ratio of two throughputs ("int8 ≥ 2.0× in-process torch on short queries at batch
32"). Measured minutes apart, torch alone moved by 38 % within one run of ``bench_export`` (100.6 texts/s in
the main table, 73.1 in the int8 study), so the ratio was 1.69× or 2.35× depending on which torch number it
was divided by. A ratio must come from numerators and denominators measured under the same conditions.

Method: one process, the same short queries as the main table's batch-32 row (all of ``bench_export``'s
questions: torch's ``encode`` sorts them by length into batches of 32, as the issue's 1.71x baseline was
measured; one unsorted batch of 32 pads every query to the longest: torch 55-64 texts/s against about 100), batch 32,
``max_seq_length`` 128, the same thread count for both engines (torch: ``torch.set_num_threads``; int8: the
runtime's per-sequence session, as ``bench_export``'s ``int8 per-seq`` row runs it). After one warm-up encode
each, ``pairs`` pairs of short timed rounds alternate the engines; pair *i* times torch then int8, and int8 then
torch on odd *i* (A B, B A, ...), so a steady drift in machine speed favours neither. A round is ``passes``
encodes of the queries; its wall time gives texts/s, its process CPU time CPU ms per text. Each pair gives
one ratio int8/torch texts/s; a burst of other load hits one or two pairs, not the others, so the **median**
of the pair ratios is the goal's number and their min–max its spread. The CPU-time ratio (torch CPU ms per
text / int8's) is reported beside it: steadier under load, but not what the goal measures.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

BEGIN = "<!-- interleaved: begin (bench/bench_export.py --only interleaved rewrites this part) -->"
END = "<!-- interleaved: end -->"
STAGE = "export_interleaved"  # bench/results/<STAGE>.json: the last result, for --report_only
GOAL_RATIO, GOAL_COSINE, GOAL_MRR_DROP = 2.0, 0.99, 0.01  # MRR@10 drop: 1 point


def measure(torch_encode, int8_encode, texts: list[str], pairs: int = 7, passes: int = 1) -> dict:
    """``torch_encode(texts)`` and ``int8_encode(texts)`` -> vectors, both encoding ``texts`` at batch 32; the
    pairs' rates and ratios, their median and min–max, and the mean cosine of int8 to torch."""
    from export.gates import mean_cosine

    engines = {"torch": torch_encode, "int8": int8_encode}
    outputs = {name: encode(texts) for name, encode in engines.items()}  # warm-up, and the vectors compared

    def timed(name: str) -> tuple[float, float]:
        started, started_cpu = time.perf_counter(), time.process_time()
        for _ in range(passes):
            engines[name](texts)
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        return passes * len(texts) / wall, 1000 * cpu / (passes * len(texts))

    rows = []
    for pair in range(pairs):
        order = ("torch", "int8") if pair % 2 == 0 else ("int8", "torch")
        measured = {name: timed(name) for name in order}
        row = {"pair": pair + 1, "order": " then ".join(order),
               "torch_texts_per_s": measured["torch"][0], "int8_texts_per_s": measured["int8"][0],
               "torch_cpu_ms": measured["torch"][1], "int8_cpu_ms": measured["int8"][1]}
        row["ratio"] = row["int8_texts_per_s"] / row["torch_texts_per_s"]
        row["cpu_ratio"] = row["torch_cpu_ms"] / row["int8_cpu_ms"]
        rows.append(row)
        print(f"  pair {row['pair']} ({row['order']}): torch {row['torch_texts_per_s']:.1f}/s, int8 "
              f"{row['int8_texts_per_s']:.1f}/s, {row['ratio']:.2f}x (CPU {row['cpu_ratio']:.2f}x)", flush=True)
    ratios = [r["ratio"] for r in rows]
    return {"texts": len(texts), "batch": 32, "pairs": rows, "passes_per_round": passes,
            "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rows),
            "cosine": float(mean_cosine(outputs["int8"], outputs["torch"]))}


def measure_bundle(model, bundle, questions: list[str], args) -> dict:
    """The goal's ratio for bench_export: torch (``model``, sentence-transformers) and the bundle's int8 as
    served (one sequence per pass), timed in alternation on the short queries of the main table's batch-32 row
    (all of them: torch sorts them by length into batches of 32), with the command, date, load and the int8
    file's export facts."""
    from export.runtime import OnnxEncoder

    model.max_seq_length = 128
    encoder = OnnxEncoder.from_files(bundle.variant_path("int8"), bundle.tokenizer_path, 128, args.threads,
                                     per_sequence=True)
    print(f"goal ratio, interleaved: {args.pairs} pairs of {args.passes} encodes of {len(questions)} short queries",
          flush=True)
    load_before = load_average()
    result = measure(lambda texts: model.encode(texts, batch_size=32), lambda texts: encoder.encode(texts, 32),
                     questions, args.pairs, args.passes)
    command = ".venv/bin/python bench/bench_export.py " + shlex.join(sys.argv[1:])
    return {**stamp(result, command, args.threads, args.note, load_before),
            "export": export_facts(bundle.manifest, args.eval_data)}


def goal(result: dict) -> tuple[str, dict]:
    """The goal line, read from the interleaved median and, when the export ran its quality gate, the gate's
    MRR@10 drop (``run_all.goals_and_notes`` format)."""
    drop = quality_drop(result.get("export"))
    facts = {"met": result["median_ratio"] >= GOAL_RATIO and result["cosine"] >= GOAL_COSINE
             and (drop is None or drop <= GOAL_MRR_DROP + 1e-9),
             "median ratio": f"{result['median_ratio']:.2f}x",
             "range": f"{result['min_ratio']:.2f}-{result['max_ratio']:.2f}x over {len(result['pairs'])} "
                      "interleaved pairs",
             "cosine": f"{result['cosine']:.4f}"}
    if drop is not None:
        facts["MRR@10 drop"] = f"{drop * 100:.2f} points on {result['export']['eval_data']}"
    return (f"int8 as served (one sequence per pass) ≥ {GOAL_RATIO:.1f}x in-process torch on short queries at "
            f"batch 32, cosine to torch ≥ {GOAL_COSINE}, MRR@10 drop ≤ {GOAL_MRR_DROP * 100:.0f} point", facts)


def quality_drop(export: dict | None) -> float | None:
    """fp32 minus int8 MRR@10 in the export's quality gate; None when it ran without eval data."""
    quality = (export or {}).get("quality")
    if not quality:
        return None
    metric = quality["metric"]
    return quality["onnx"][metric] - quality["int8"][metric]


def export_facts(manifest: dict, eval_data: list[str]) -> dict:
    """What the goal needs from the bundle the ratio was measured on: its int8 fp32 layers (and the tries of
    ``--int8_fp32_layers auto``) and its export quality gate."""
    quantization = manifest["variants"]["int8"]["quantization"]
    return {"fp32_layers": quantization["fp32_layers"], "fp32_layers_tried": quantization.get("fp32_layers_tried"),
            "quality": manifest.get("quality"), "eval_data": ", ".join(Path(p).name for p in eval_data) or None}


def export_sentence(export: dict | None) -> list[str]:
    """The report's sentence on the measured int8 file, empty for results saved before it was recorded."""
    if not export:
        return []
    tried = export.get("fp32_layers_tried") or []
    how = ("; `--int8_fp32_layers auto` tried " + ", ".join(
        f"{t['fp32_layers']} ({'passed' if not t['failures'] else 'failed: ' + '; '.join(t['failures'])})"
        for t in tried)) if tried else ""
    line = f"The int8 file measured keeps {export['fp32_layers']} transformer layer(s) fp32{how}."
    drop = quality_drop(export)
    if drop is not None:
        quality, metric = export["quality"], export["quality"]["metric"]
        line += (f" Its export quality gate on {export['eval_data']} ({quality['questions']} questions, passages "
                 f"chunked): {metric} int8 {quality['int8'][metric]:.4f} vs fp32 {quality['onnx'][metric]:.4f}, "
                 f"{drop * 100:.2f} points lower (allowed {quality['max_drop'] * 100:.1f}).")
    return ["", line]


def report(result: dict) -> list[str]:
    """The section's lines, markers included (``splice`` replaces what lies between them)."""
    from run_all import goals_and_notes

    lines = [BEGIN, "## Goal ratio, interleaved (int8 per-seq vs torch, short queries, batch 32)", "",
             "The goal's ratio comes from this section, not from the tables above (their torch and int8 rows were "
             "measured minutes apart). Both engines are timed in alternation on the same "
             f"{result['texts']} short queries at batch {result['batch']}, {result['threads']} threads each, in one "
             f"process: {len(result['pairs'])} pairs of rounds of {result['passes_per_round']} encodes each, the "
             "order swapped every other pair; each pair gives one ratio, the median is the goal's number "
             "(method: `bench/interleaved.py`).", "",
             f"Command: `{result['command']}`; {result['date']}; load average {result['load_before']} before, "
             f"{result['load_after']} after.", "",
             "| pair | order | torch texts/s | int8 per-seq texts/s | int8 / torch | torch CPU ms/text "
             "| int8 CPU ms/text | CPU ratio |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['pair']} | {r['order']} | {r['torch_texts_per_s']:.1f} | {r['int8_texts_per_s']:.1f} "
              f"| {r['ratio']:.2f}x | {r['torch_cpu_ms']:.2f} | {r['int8_cpu_ms']:.2f} | {r['cpu_ratio']:.2f}x |"
              for r in result["pairs"]]
    lines += ["", f"**Median int8 / torch: {result['median_ratio']:.2f}x** (min {result['min_ratio']:.2f}x, max "
              f"{result['max_ratio']:.2f}x); CPU-time ratio median {result['median_cpu_ratio']:.2f}x; mean cosine "
              f"of int8 to torch {result['cosine']:.4f}."]
    lines += export_sentence(result.get("export"))
    return lines + goals_and_notes([goal(result)], result.get("notes", [])) + [END]


def splice(document: str, section: list[str], before: str) -> str:
    """``document`` with its interleaved section replaced by ``section``; without one (a report written before
    this section existed), the section goes in before the line ``before`` (the hand-written notes' marker),
    or at the end."""
    text = "\n".join(section)
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: text, document, count=1)
    head, marker, tail = document.partition(before)
    return (head.rstrip("\n") + "\n\n" + text + "\n\n" + marker + tail) if marker else \
        document.rstrip("\n") + "\n\n" + text + "\n"


def publish(result: dict, out: Path, results_dir: Path, no_docs: bool, before: str) -> None:
    """Print the result and its section; unless ``no_docs``, save the result (``--report_only`` reads it) and
    rewrite only this section of ``out``, then assemble docs/benchmarks.md."""
    from run_all import assemble, finish, save_result

    lines = report(result)
    if no_docs:
        finish(STAGE, result, lines, True, results_dir)
        return
    print(json.dumps(result, indent=1, ensure_ascii=False))
    save_result(STAGE, result, results_dir)
    out.write_text(splice(out.read_text() if out.exists() else "", lines, before))
    print(f"wrote the interleaved section of {out} and {assemble()}")


def rewrite(notes: list[str], out: Path, results_dir: Path, no_docs: bool, before: str) -> None:
    """``--report_only``: the last saved result with ``notes`` added, published again."""
    from run_all import saved_result

    publish(saved_result(STAGE, notes, results_dir), out, results_dir, no_docs, before)


def stamp(result: dict, command: str, threads: int, notes: list[str], load_before: str) -> dict:
    """The run's facts a report states: command, date, threads, load average before and after, notes."""
    return {**result, "command": command, "threads": threads, "notes": notes, "load_before": load_before,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_after": load_average()}


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
