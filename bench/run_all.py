"""`make bench`: run every benchmark, then assemble docs/benchmarks.md from their sections.

Each ``bench/bench_<stage>.py`` writes ``docs/benchmarks/<stage>.md`` (+ plots beside it); this script
runs them one after another (never in parallel: they measure the same 2 cores) and joins the
sections into ``docs/benchmarks.md``.

    python bench/run_all.py                 # run all, then assemble
    python bench/run_all.py --assemble-only # only rebuild docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ROOT / "docs" / "benchmarks"
# bench_<stage>.py where one exists
ORDER = ("training", "training-gpu", "lexical", "search_quality", "export", "export_large", "service", "search_latency",
         "index", "ingest", "soak")


def assemble() -> Path:
    parts = [
        "# Benchmarks",
        "",
        "Measured on the project's reference machine (2 CPU cores, 24 GiB, no GPU) unless a section says "
        "otherwise. Every speed or memory number is a ratio against a baseline measured in the same run. "
        "Regenerate with `make bench`; each section names its own command.",
        "",
    ]
    found = sorted(SECTIONS.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    for section in found:
        text = section.read_text(encoding="utf-8")
        # Demote headings one level and point images at the section folder.
        text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
        parts += [text.replace("](", "](benchmarks/").replace("](benchmarks/http", "](http"), ""]
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def save_result(stage: str, result: dict, results_dir: Path) -> None:
    """Keep a benchmark's raw result as ``<results_dir>/<stage>.json`` (what ``--report_only`` reads)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{stage}.json").write_text(json.dumps(result, indent=1))


def saved_result(stage: str, notes: list[str], results_dir: Path) -> dict:
    """``--report_only``: the last saved result of ``stage`` with ``notes`` added (each once)."""
    result = json.loads((results_dir / f"{stage}.json").read_text())
    result["notes"] = list(dict.fromkeys(result.get("notes", []) + notes))
    return result


def publish(stage: str, result: dict, lines: list[str], results_dir: Path) -> None:
    """Write a benchmark's raw result (``<results_dir>/<stage>.json``) and its section
    (``docs/benchmarks/<stage>.md``), then assemble docs/benchmarks.md."""
    save_result(stage, result, results_dir)
    section = SECTIONS / f"{stage}.md"
    section.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {section} and {assemble()}")


def report_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark's report takes: ``--note`` (repeatable), ``--report_only``, ``--no_docs``."""
    parser.add_argument("--note", action="append", default=[], help="a note printed under the report (repeatable)")
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from the last results JSON")
    parser.add_argument("--no_docs", action="store_true", help="print the result only (a smoke run)")


def rewrite_report(stage: str, notes: list[str], report, results_dir: Path, no_docs: bool = False) -> None:
    """``--report_only``: the last raw result of ``stage`` with ``notes`` added, published again through
    ``report(result, command) -> lines`` (printed only with ``no_docs``)."""
    result = saved_result(stage, notes, results_dir)
    finish(stage, result, report(result, result["command"]), no_docs, results_dir)


def goals_and_notes(goals, notes: list[str]) -> list[str]:
    """A report's closing sections: each goal ``(name, {..., "met": bool})`` met or not with its numbers, then the
    notes (when there are any)."""
    lines = ["", "## Goals", ""]
    for goal, g in goals:
        detail = ", ".join(f"{k} {v}" for k, v in g.items() if k != "met")
        lines.append(f"* {goal}: **{'met' if g['met'] else 'NOT met'}** ({detail})")
    return lines + (["", "## Notes", "", *[f"* {n}" for n in notes]] if notes else []) + [""]


def _shorten(value):
    """``value`` with each long list (per-question values) replaced by its length, for printing: the results file
    keeps it whole."""
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return f"[{len(value)} values]" if len(value) > 50 else [_shorten(v) for v in value]
    return value


def finish(stage: str, result: dict, lines: list[str], no_docs: bool, results_dir: Path) -> None:
    """Print a benchmark's result and report; publish them unless ``no_docs`` (a smoke run)."""
    print(json.dumps(_shorten(result), indent=1, ensure_ascii=False))
    if no_docs:
        print("\n".join(lines) + "\n(--no_docs: nothing written)")
        return
    publish(stage, result, lines, results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assemble-only", action="store_true")
    args = parser.parse_args()
    if not args.assemble_only:
        for stage in ORDER:
            script = ROOT / "bench" / f"bench_{stage}.py"
            if script.exists():
                print(f"== {script.name}", flush=True)
                subprocess.run([sys.executable, str(script)], check=True, cwd=ROOT)
    print(f"wrote {assemble()}")


if __name__ == "__main__":
    main()
