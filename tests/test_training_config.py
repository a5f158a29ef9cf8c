"""training.config: the one place training defaults live, for `python -m training` and `python -m retrain`."""

from __future__ import annotations

from dataclasses import fields

import pytest

from training.cli import _training_config, build_parser
from training.config import BGE_QUERY_INSTRUCTION, DEFAULTS, PRESETS, TrainingConfig, preset_config


def config_for(*argv: str) -> TrainingConfig:
    return _training_config(build_parser().parse_args(["--data_path", "data.json", *argv]))


def test_presets_are_the_guides_trainers():
    turkish, bge = PRESETS["turkish-bert"], PRESETS["bge"]
    assert (turkish.model_name, turkish.learning_rate, turkish.max_seq_length, turkish.pooling_mode,
            turkish.query_instruction) == ("dbmdz/bert-base-turkish-cased", 2e-5, 128, "mean", "")
    assert (bge.model_name, bge.learning_rate, bge.max_seq_length, bge.pooling_mode,
            bge.query_instruction) == ("BAAI/bge-m3", 1e-5, 512, "cls", BGE_QUERY_INSTRUCTION)
    for preset in PRESETS.values():  # the common defaults, once
        assert (preset.epochs, preset.batch_size, preset.warmup_steps, preset.train_split, preset.num_negatives,
                preset.negatives_range_max, preset.negatives_margin, preset.mini_batch_size) == (
                    3, 16, None, 0.8, 3, 100, 0.05, 32)  # warm-up None: the guide's 100, at most 10 % of the run


def test_cli_flags_override_the_preset_and_unset_ones_keep_it():
    assert config_for() == PRESETS["turkish-bert"]
    config = config_for("--preset", "bge", "--epochs", "1", "--negatives_margin", "0.1", "--no_hard_negatives")
    assert config == preset_config("bge", epochs=1, negatives_margin=0.1, hard_negatives=False)
    assert config_for("--preset", "bge", "--no_instructions").query_instruction == ""
    assert config_for("--query_instruction", "soru: ").query_instruction == "soru: "
    assert config_for("--output_dir", "out", "--resume").output_dir == "out"


def test_retrain_takes_its_training_defaults_from_training_config():
    from retrain.cli import build_parser as retrain_parser
    from retrain.pipeline import RetrainConfig

    defaults = {f.name: f.default for f in fields(RetrainConfig)}
    for name in ("epochs", "batch_size", "learning_rate", "seed"):
        assert defaults[name] == getattr(DEFAULTS, name), name
    args = retrain_parser().parse_args(["--registry", "r", "--name", "n", "--data", "d", "--eval_data", "e"])
    assert (args.epochs, args.batch_size, args.learning_rate, args.seed, args.warmup_steps, args.tolerance) == (
        DEFAULTS.epochs, DEFAULTS.batch_size, DEFAULTS.learning_rate, DEFAULTS.seed, defaults["warmup_steps"], 0.01)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--negatives_range_min", "100"], "--negatives_range_min must be at least 0 and below"),
    (["--negatives_margin", "nan"], "--negatives_margin must be in"),
    (["--learning_rate", "0"], "--learning_rate must be positive"),
    (["--train_split", "1.5"], "--train_split must be in"),
    (["--num_negatives", "-1"], "must not be negative"),
    (["--max_train_samples", "0"], "--max_train_samples must be at least 1"),
])
def test_bad_values_are_refused_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        config_for(*flags)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset 'gte'"):
        preset_config("gte")


def test_max_train_samples_takes_a_seeded_sample_of_the_train_side_only():
    from training.data import QARecord
    from training.pipeline import _limit_train
    from training.split import split_by_passage

    split = split_by_passage([QARecord(f"q{i}", f"p{i % 40}") for i in range(200)], 0.8, seed=1)
    config = config_for("--max_train_samples", "50", "--seed", "7")
    assert config.max_train_samples == 50
    limited = _limit_train(split, config)
    assert len(limited.train) == 50 and limited.eval == split.eval  # the held-out split is kept whole
    assert set(limited.train) <= set(split.train)
    assert [split.train.index(r) for r in limited.train] == sorted(split.train.index(r) for r in limited.train)
    assert _limit_train(split, config) == limited  # same seed, same sample
    assert _limit_train(split, config_for("--max_train_samples", "50", "--seed", "8")).train != limited.train
    assert _limit_train(split, config_for()) is split
