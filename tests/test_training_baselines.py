"""Training reports BM25, base, fine-tuned and hybrid side by side, chooses α, and mines negatives with BM25.

One tiny real training run (the bundled MiniLM, 48 example pairs, one negative per question mined by BM25),
run as tests/test_training_e2e.py runs it; the rest reads its outputs.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLES
from tests.test_training_e2e import FAST, run_training
from training.analyzer import Analyzer
from training.data import QARecord, load_qa_data
from training.fusion import ALPHA_GRID
from training.lexical import LexicalIndex
from training.metrics import METRIC_NAMES, RetrievalTask, evaluate_rankings
from training.retrieval import lexical_rankings, ranking_keys

RANKERS = ("bm25", "base", "finetuned", "hybrid")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("baselines")
    records = json.loads((EXAMPLES / "example_qa_data.json").read_text(encoding="utf-8"))
    data = work / "pairs.json"
    data.write_text(json.dumps(records[:48], ensure_ascii=False), encoding="utf-8")
    out = work / "model"
    proc = run_training("--data_path", str(data), "--output_dir", str(out), "--epochs", "1", "--batch_size", "16",
                        "--num_negatives", "1", "--negatives_from", "bm25", *FAST)
    return out, proc


def test_metrics_json_holds_four_rankers_and_the_chosen_alpha(trained):
    out, proc = trained
    metrics = json.loads((out / "metrics.json").read_text())
    for ranker in RANKERS:
        assert set(metrics[ranker]) == set(METRIC_NAMES)
        assert 0.0 < metrics[ranker]["mrr@10"] <= 1.0
    fusion = metrics["fusion"]
    assert fusion["method"] == "weighted" and fusion["candidates"] == 100
    assert fusion["alpha"] in ALPHA_GRID
    assert list(fusion["mrr@10_by_alpha"]) == [f"{alpha:.1f}" for alpha in ALPHA_GRID]
    assert metrics["hybrid"]["mrr@10"] == fusion["mrr@10_by_alpha"][f"{fusion['alpha']:.1f}"]
    assert metrics["hybrid"]["mrr@10"] >= max(metrics["bm25"]["mrr@10"], metrics["finetuned"]["mrr@10"])
    assert fusion["mrr@10_by_alpha"]["0.0"] == metrics["bm25"]["mrr@10"]
    assert fusion["mrr@10_by_alpha"]["1.0"] == metrics["finetuned"]["mrr@10"]
    assert Analyzer.from_description(fusion["analyzer"]) == Analyzer.named("tr")
    assert set(metrics["chunking"]) == {"window", "stride"}  # dense scored passages as the service does

    # BM25's numbers are those of the held-out split the run saved, recomputed here independently
    held_out = RetrievalTask.from_records(load_qa_data([out / "eval_data.jsonl"]).records)
    assert fusion["alpha_chosen_on_queries"] == len(held_out.queries) > 0
    bm25 = lexical_rankings(held_out, Analyzer.named("tr"))
    assert metrics["bm25"] == evaluate_rankings(held_out, ranking_keys(bm25))


def test_the_card_and_the_log_say_whether_the_model_beats_bm25(trained):
    out, proc = trained
    metrics = json.loads((out / "metrics.json").read_text())
    beats = metrics["finetuned"]["mrr@10"] > metrics["bm25"]["mrr@10"]
    sentence = "The fine-tuned model beats BM25" if beats else "The fine-tuned model does NOT beat BM25"
    card = (out / "README.md").read_text()
    assert f"**{sentence}: MRR@10 {metrics['finetuned']['mrr@10']:.4f} vs {metrics['bm25']['mrr@10']:.4f}" in card
    assert f"(α = {metrics['fusion']['alpha']}:" in card
    header = next(line for line in card.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "bm25", "base", "fine-tuned", "hybrid", "gain"]
    assert sentence in proc.stdout
    assert (out / "compare.png").stat().st_size > 10_000


def test_bm25_mined_negatives_are_used_and_recorded(trained):
    out, proc = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["negatives_from"] == "bm25"
    assert metrics["data"]["negatives_per_question"] == 1
    assert "mined with BM25" in proc.stdout


def test_compare_uses_the_training_runs_alpha(trained):
    out, _ = trained
    alpha = json.loads((out / "metrics.json").read_text())["fusion"]["alpha"]
    proc = run_training("--output_dir", str(out), "--compare")
    assert f"hybrid at the training run's α {alpha}" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "bm25", "base", "fine-tuned", "hybrid", "gain"]
    assert "beat BM25" in proc.stdout


def test_bm25_negatives_are_the_best_bm25_passages_that_are_not_the_answer(example_data):
    from training.config import preset_config
    from training.pipeline import _with_negatives

    records = load_qa_data([example_data]).records
    passages = list(dict.fromkeys(r.positive for r in records))
    config = preset_config(num_negatives=2, negatives_from="bm25")
    log = []
    filled = _with_negatives(records, config, None, log.append)  # no model needed: BM25 ranks the candidates
    assert "mined with BM25" in log[0]
    index = LexicalIndex.open(":memory:", Analyzer.named("tr"))
    index.add_many(enumerate(passages))
    own: dict[str, set[str]] = {}
    for record in records:
        own.setdefault(record.question, set()).add(record.positive)
    for record in filled:
        assert len(record.negatives) == 2 and not own[record.question] & set(record.negatives)
        ranked = [passages[key] for key in index.search(record.question, k=len(passages)).keys]
        expected = [p for p in ranked if p not in own[record.question]][:2]
        if len(expected) == 2:  # otherwise topped up from below the window or at random
            assert list(record.negatives) == expected


def test_bm25_mining_keeps_explicit_negatives_and_needs_no_model():
    from training.negatives import NegativeMiner

    miner = NegativeMiner(None, num_negatives=2, source="bm25")
    (record,) = miner.fill([QARecord("Kahve nasıl pişer?", "Kahve cezvede pişer.", ("Çay demlenir.",))],
                           ["Kahve cezvede pişer.", "Çay demlenir.", "Kahve Yemen'den gelir.", "Rize'de yağmur"])
    assert record.negatives == ("Çay demlenir.", "Kahve Yemen'den gelir.")
    with pytest.raises(ValueError, match="needs its encode function"):
        NegativeMiner(None)
    with pytest.raises(ValueError, match="model or bm25"):
        NegativeMiner(None, source="tfidf")


def test_negatives_from_is_a_checked_flag(tmp_path, capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--data_path", str(EXAMPLES / "example_qa_data.json"), "--negatives_from", "tfidf"])
    assert exit_info.value.code == 2 and "invalid choice: 'tfidf'" in capsys.readouterr().err
    from training.config import preset_config

    with pytest.raises(ValueError, match="--negatives_from must be model or bm25"):
        preset_config(negatives_from="tfidf").check()
