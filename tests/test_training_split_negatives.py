"""Passage split (no leakage), hard-negative mining, duplicate-free batches and the metrics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from training.data import QARecord, load_qa_data
from training.metrics import RetrievalTask, evaluate, ranking_metrics
from training.split import split_by_passage


@pytest.fixture(scope="module")
def records(example_data):
    return load_qa_data([example_data]).records


@pytest.fixture(scope="module")
def encoder(minilm_path):
    from training.encoding import SentenceEncoder
    from training.models import load_base_model

    return SentenceEncoder(load_base_model(str(minilm_path), "mean", 64, "sorgu: "))


def test_passages_are_encoded_plain_even_when_the_model_has_a_document_prompt(minilm_path, tmp_path):
    """Training prompts the question column only and the bundle and service embed passages plain, so evaluation
    and mining (both through SentenceEncoder) must too: a model's "document" or default prompt is never applied."""
    from sentence_transformers import SentenceTransformer

    from training.encoding import SentenceEncoder
    from training.models import load_base_model

    folder = tmp_path / "model"
    folder.mkdir()
    for item in minilm_path.iterdir():
        if item.name != "config_sentence_transformers.json":
            (folder / item.name).symlink_to(item)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": "document"}))
    model = load_base_model(str(folder), "mean", 64)
    assert model.prompts == {"query": "query: ", "document": ""}  # what the saved model will say
    encoder = SentenceEncoder(model)
    reference = SentenceTransformer(str(minilm_path), device="cpu")
    passages = ["Python yüksek seviyeli bir programlama dilidir.", "Ankara Türkiye'nin başkentidir."]
    plain = reference.encode(passages, normalize_embeddings=True)
    # short passages: one window each, the whole text (chunking changes nothing for them)
    np.testing.assert_allclose(encoder.passages(passages).vectors, plain, atol=1e-5)
    model.prompts["document"] = "passage: "  # even when set after loading
    np.testing.assert_allclose(encoder.passages(passages).vectors, plain, atol=1e-5)
    np.testing.assert_allclose(encoder.plain_passages(passages), plain, atol=1e-5)
    np.testing.assert_allclose(encoder.queries(["Python nedir?"]),
                               reference.encode(["query: Python nedir?"], normalize_embeddings=True), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_keeps_every_passage_on_one_side(records, seed):
    split = split_by_passage(records, 0.8, seed)
    train_passages = {r.positive for r in split.train}
    eval_passages = {r.positive for r in split.eval}
    assert train_passages and eval_passages and not train_passages & eval_passages
    assert len(split.train) + len(split.eval) == len(records)
    assert 0.6 < len(split.train) / len(records) < 0.95


def test_split_is_seeded_and_independent_of_file_order(records):
    a = split_by_passage(records, 0.8, 7)
    b = split_by_passage(list(reversed(records)), 0.8, 7)
    assert {r.positive for r in a.eval} == {r.positive for r in b.eval}
    assert {r.positive for r in a.eval} != {r.positive for r in split_by_passage(records, 0.8, 8).eval}


def test_split_removes_eval_passages_from_train_negatives():
    records = [QARecord("q1", "p1", ("p2",)), QARecord("q2", "p2", ("p1",))]
    split = split_by_passage(records, 0.5, 0)
    (train,) = split.train
    assert train.negatives == () and split.negatives_removed == 1


def test_split_rejects_bad_fraction(records):
    with pytest.raises(ValueError, match="train_split"):
        split_by_passage(records, 1.5, 0)


def test_mined_negatives_never_contain_the_positive(records, encoder):
    from training.negatives import NegativeMiner

    # Two questions share one passage here; a question's own passages are never its negatives.
    extra = QARecord(records[0].question, records[5].positive)
    records = [*records, extra]
    filled = NegativeMiner(encoder, num_negatives=3).fill(records, [r.positive for r in records])
    own = {}
    for r in records:
        own.setdefault(r.question, set()).add(r.positive)
    assert all(len(r.negatives) == 3 for r in filled)
    for record in filled:
        assert not own[record.question] & set(record.negatives)
        assert len(set(record.negatives)) == len(record.negatives)


def test_explicit_negatives_are_kept_first(encoder, example_data):
    from training.negatives import NegativeMiner

    data = load_qa_data([example_data.parent / "example_qa_data_with_negatives.json"])
    partial = [QARecord(r.question, r.positive, r.negatives[:1]) for r in data.records]
    filled = NegativeMiner(encoder, num_negatives=3).fill(partial, data.passages)
    for before, after in zip(partial, filled):
        assert after.negatives[:1] == before.negatives and len(after.negatives) == 3


def test_margin_filter_skips_near_duplicates_of_the_positive():
    from training.negatives import NegativeMiner

    vectors = {"q": [1.0, 0.0], "pos": [0.9, 0.436], "twin": [0.9, 0.435], "far": [0.2, 0.98]}
    encode = lambda texts, is_query: np.array([vectors[t] for t in texts], dtype="float32")  # noqa: E731
    (record,) = NegativeMiner(encode, num_negatives=1, relative_margin=0.05).fill([QARecord("q", "pos")],
                                                                                   ["pos", "twin", "far"])
    assert record.negatives == ("far",)


def test_batches_never_hold_the_same_passage_twice(records, tmp_path, minilm_path):
    from training.config import TrainingConfig
    from training.finetune import build_trainer
    from training.models import load_base_model

    # Many questions per passage: a naive sampler would put a passage twice in most batches.
    config = TrainingConfig(epochs=1, batch_size=8, learning_rate=1e-5, warmup_steps=0, seed=0)
    trainer = build_trainer(load_base_model(str(minilm_path)), list(records), None, config, tmp_path / "ckpt")
    dataset = trainer.train_dataset
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert sum(len(b) for b in batches) == len(dataset)
    for batch in batches:
        assert_no_false_negatives(dataset, batch)


def assert_no_false_negatives(dataset, batch) -> None:
    """No question or positive twice in a batch, and none of them as another row's negative."""
    rows = [list(dataset[int(i)].values()) for i in batch]
    keys = [text for row in rows for text in row[:2]]
    assert len(keys) == len(set(keys))
    assert not {text for row in rows for text in row[2:]} & set(keys)



@pytest.mark.parametrize("negatives", [0, 2])
def test_batches_stay_full_when_one_passage_has_many_questions(negatives):
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from training.sampler import PassageBalancedBatchSampler

    # FAQ-shaped: 25 questions for "big", 2-3 for each of 100 small passages (ENELPI has ~23 per passage).
    # First-come sampling leaves a tail of single-row batches of "big", which the trainer never reaches.
    rng = random.Random(1)
    rows = [(f"big q{i}", "big") for i in range(25)]
    rows += [(f"q{p}.{i}", f"passage {p}") for p in range(100) for i in range(rng.choice((2, 3)))]
    columns = {"anchor": [q for q, _ in rows], "positive": [p for _, p in rows]}
    passages = sorted(set(columns["positive"]))
    picks = [rng.sample([x for x in passages if x != p], negatives) for _, p in rows]
    for n in range(negatives):
        columns[f"negative_{n + 1}"] = [pick[n] for pick in picks]
    dataset = Dataset.from_dict(columns)
    sampler = PassageBalancedBatchSampler(dataset, batch_size=8, drop_last=False, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(sampler) == len(batches)  # exact: the trainer sizes the epoch by it
        assert sorted(i for b in batches for i in b) == list(range(len(rows)))  # every row once
        for batch in batches:
            assert_no_false_negatives(dataset, batch)
        sizes = [len(b) for b in batches]
        # Full batches; only random negatives clashing at the very end can leave a few partial ones.
        assert len(batches) <= -(-len(rows) // 8) + (2 if negatives else 0), str(sizes)
        assert sum(size < 8 for size in sizes) <= (3 if negatives else 1), str(sizes)
    first_come = NoDuplicatesBatchSampler(dataset, batch_size=8, drop_last=False, seed=3)
    assert len(first_come) == -(-len(rows) // 8)  # its estimate, which the trainer trusts

    # One passage with more questions (60) than there are batches: its surplus forms one-row batches,
    # kept with negatives (they still rank against them), left out without (nothing to rank against).
    crowded = Dataset.from_dict({name: values + [f"crowded q{i}" if name == "anchor" else
                                                 "crowded" if name == "positive" else passages[i % 50]
                                                 for i in range(60)] for name, values in columns.items()})
    sizes = [len(b) for b in PassageBalancedBatchSampler(crowded, batch_size=8, drop_last=False, seed=3)]
    assert (1 in sizes) == bool(negatives) and sizes.count(8) >= len(rows) // 8

def test_metrics_by_hand():
    ranked = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]])
    relevant = [frozenset({0}), frozenset({0}), frozenset({3})]
    m = ranking_metrics(ranked, relevant)
    assert m["accuracy@1"] == pytest.approx(1 / 3)
    assert m["accuracy@3"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 3)


def test_real_model_beats_chance_on_examples(records, encoder):
    task = RetrievalTask.from_records(records)
    metrics = evaluate(task, encoder.queries, encoder.passages)
    assert metrics["mrr@10"] > 0.3 > 1 / len(task.corpus)


def test_every_question_gets_the_full_count_when_its_window_is_empty():
    from training.finetune import to_dataset
    from training.negatives import NegativeMiner

    # "hard" ranks its positive last: every passage in the window [0, 2) scores above the margin ceiling,
    # so its negatives come from below the window, and "lonely" (only its own passage and one other is
    # far above) from random passages. Neither may shrink the dataset's negative columns.
    vectors = {"easy": [1.0, 0.0, 0.0], "easy_pos": [1.0, 0.0, 0.0],
               "hard": [0.0, 1.0, 0.0], "hard_pos": [0.1, 0.1, 0.99],
               "p1": [0.0, 1.0, 0.0], "p2": [0.1, 0.99, 0.0], "p3": [0.0, 0.0, 1.0], "p4": [0.0, -1.0, 0.0]}
    encode = lambda texts, is_query: np.array([vectors[t] for t in texts], dtype="float32")  # noqa: E731
    records = [QARecord("easy", "easy_pos"), QARecord("hard", "hard_pos")]
    miner = NegativeMiner(encode, num_negatives=2, range_max=2)
    filled = miner.fill(records, ["easy_pos", "hard_pos", "p1", "p2", "p3", "p4"])
    assert [len(r.negatives) for r in filled] == [2, 2]
    hard = filled[1].negatives
    assert "p1" not in hard and "p2" not in hard  # above the ceiling: likely answers, never negatives
    assert miner.stats.below_window >= 1
    assert len(to_dataset(filled).column_names) == 4  # anchor, positive, negative_1, negative_2

    # A question whose positive scores lowest of all: nothing ranks below its ceiling, so random passages fill.
    lonely = NegativeMiner(encode, num_negatives=2, range_max=2)
    (record,) = lonely.fill([QARecord("hard", "p4")], ["p4", "p1", "p2", "p3"])
    assert len(record.negatives) == 2 and "p4" not in record.negatives
    assert lonely.stats.random == 1
