"""The hybrid search's fusion weight α for the bundle manifest (``manifest["fusion"]``, read by the service).

Where α comes from, in order:

1. the model folder's ``metrics.json`` ``fusion``: ``python -m training`` chose it on its held-out split;
2. otherwise, with ``--eval_data``: chosen here on the eval data by the function training uses
   (:func:`training.retrieval.compare_retrievers`, the α grid of :mod:`training.fusion`), the dense side being
   the exported model itself through the ONNX runtime encoder the gates use;
3. otherwise none: the manifest has no ``fusion`` and the service falls back to its own default (logged).

The manifest entry::

    {"alpha": 0.6, "method": "weighted", "chosen_on": "training held-out split (1532 questions)",
     "analyzer": {"name": "tr", ...}, "mrr@10_by_alpha": {"0.0": 0.78, ...}, "candidates": 100}

Example::

    >>> from export.fusion import describe
    >>> describe({"alpha": 0.6, "method": "weighted", "chosen_on": "eval data: dev.jsonl (40 questions)"})
    'fusion: weighted, α 0.6, chosen on eval data: dev.jsonl (40 questions)'
    >>> describe(None)
    'fusion: none recorded (no metrics.json fusion, no --eval_data): the service uses its default α'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.errors import ExportError

METHOD = "weighted"


def from_training(model_dir: str | Path) -> dict | None:
    """The ``fusion`` the training run wrote to ``<model_dir>/metrics.json``, as a manifest entry; ``None`` when
    the folder has no metrics.json or it records no α (a base model, an older training release)."""
    file = Path(model_dir) / "metrics.json"
    if not file.is_file():
        return None
    try:
        recorded = json.loads(file.read_text(encoding="utf-8")).get("fusion")
    except (OSError, ValueError, AttributeError) as error:
        raise ExportError(f"{file}: unreadable ({error})") from None
    if not isinstance(recorded, dict) or recorded.get("alpha") is None:
        return None
    questions = recorded.get("alpha_chosen_on_queries")
    chosen_on = ("training held-out split" + (f" ({questions} questions)" if questions else "")
                 if "mrr@10_by_alpha" in recorded else "set when the model was tested (python -m training)")
    return _entry(recorded, chosen_on)


def choose_on_eval_data(records, sources: Sequence[str | Path], encode: Callable[..., np.ndarray],
                        analyzer_name: str | None = None) -> dict:
    """α chosen on the eval ``records`` (from the files ``sources``) with training's grid search; ``encode`` is
    the exported model's runtime encoder (``OnnxEncoder.encode``): questions with ``is_query=True``, passages
    chunked into windows and scored by their best one, exactly as the quality gate and ``/search`` do
    (:func:`export.gates.passage_encoder`)."""
    from export.gates import passage_encoder
    from training.analyzer import DEFAULT_ANALYZER, Analyzer
    from training.metrics import RetrievalTask
    from training.retrieval import compare_retrievers

    task = RetrievalTask.from_records(records)
    analyzer = Analyzer.named(analyzer_name or DEFAULT_ANALYZER)
    result = compare_retrievers(task, lambda texts: encode(texts, is_query=True), passage_encoder(encode), analyzer)
    names = ", ".join(Path(s).name for s in sources)
    entry = _entry(result["fusion"], f"eval data: {names} ({len(task.queries)} questions)")
    entry["measured"] = {side: result[side]["mrr@10"] for side in ("dense", "bm25", "hybrid")}
    return entry


def describe(fusion: dict | None) -> str:
    """One line for the export's summary and the model card."""
    if not fusion:
        return "fusion: none recorded (no metrics.json fusion, no --eval_data): the service uses its default α"
    line = f"fusion: {fusion['method']}, α {fusion['alpha']}, chosen on {fusion['chosen_on']}"
    measured = fusion.get("measured")
    if measured:
        line += (f"; MRR@10 dense {measured['dense']:.4f}, BM25 {measured['bm25']:.4f}, "
                 f"hybrid {measured['hybrid']:.4f}")
    return line


def _entry(recorded: dict, chosen_on: str) -> dict:
    from training.analyzer import DEFAULT_ANALYZER, Analyzer

    entry = {
        "alpha": float(recorded["alpha"]),
        "method": recorded.get("method", METHOD),
        "chosen_on": chosen_on,
        # training records its analyzer; a metrics.json without one was measured with the default analyzer
        "analyzer": recorded.get("analyzer") or Analyzer.named(DEFAULT_ANALYZER).describe(),
        "mrr@10_by_alpha": dict(recorded.get("mrr@10_by_alpha") or {}),
    }
    if "candidates" in recorded:
        entry["candidates"] = recorded["candidates"]
    return entry
