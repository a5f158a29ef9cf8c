"""Gate and service run one runtime: the export gates' encoder and the model behind /embed give the same
vectors for the same texts (query prompt, right and left truncation of over-long texts, refusal)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from export.bundle import open_bundle
from export.runtime import InputTooLong, OnnxEncoder
from service.errors import TooLarge
from service.model import open_serving_model
from service.settings import Settings

MAX_SEQ = 32
PROMPT = "query: "
SHORT = ["Python nedir?", "ok", "Türkiye'nin başkenti neresidir?"]
BODY = ("Fotosentez, bitkilerin güneş ışığını kullanarak karbondioksit ve sudan glikoz ve oksijen ürettiği "
        "süreçtir. Klorofil bu süreçte ışığı soğuran başlıca pigmenttir. ") * 3
# each well over MAX_SEQ tokens, differing only at one end: the truncation side decides what is kept
LONG = [BODY + "Sonuç: şeker.", BODY + "Sonuç: oksijen.", "Boğaz iki kıtayı ayırır. " + BODY + "Sonuç: şeker."]
TEXTS = SHORT + LONG
CASES = [(is_query, direction) for is_query in (False, True) for direction in ("right", "left")]


@pytest.fixture(scope="module")
def prompted_bundle(tmp_path_factory, minilm_path) -> tuple:
    """MiniLM exported with a query prompt and a short ``max_seq_length`` (fp32 and int8)."""
    from export.pipeline import export_model

    folder = tmp_path_factory.mktemp("prompted") / "model"
    folder.mkdir()
    for item in minilm_path.iterdir():
        if item.name != "config_sentence_transformers.json":
            (folder / item.name).symlink_to(item)
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": PROMPT, "document": ""}, "default_prompt_name": None}))
    registry = tmp_path_factory.mktemp("registry")
    export_model(str(folder), registry, "prompted", variants=("onnx", "int8"), max_seq_length=MAX_SEQ, threads=2,
                 log=lambda message: None)
    bundle = open_bundle(registry, "prompted")
    assert (bundle.query_prompt, bundle.max_seq_length) == (PROMPT, MAX_SEQ)
    return registry, "prompted"


def serving_model(registry, name: str, variant: str):
    settings = Settings.build(registry=registry, name=name, variant=variant, device="cpu", warmup=False,
                              intra_op_threads=2)
    return open_serving_model(settings)


def embed(model, texts, **options) -> np.ndarray:
    """What /embed computes for ``texts`` (the route adds only JSON around it)."""
    async def run():
        result, _ = await model.embed(texts, **options)
        return result.vectors

    return asyncio.run(run())


def test_texts_exercise_truncation_and_the_prompt(prompted_bundle):
    encoder = OnnxEncoder.from_bundle(open_bundle(*prompted_bundle), "onnx", threads=2)
    lengths = [len(e) for e in encoder.tokenizer.encode(LONG, truncate=True)]
    assert lengths == [MAX_SEQ] * len(LONG)
    right, left = (encoder.encode(LONG, truncation_direction=d) for d in ("right", "left"))
    assert np.abs(right[0] - right[1]).max() < 1e-6 < np.abs(left[0] - left[1]).max()  # same start, other end
    assert np.abs(left[0] - left[2]).max() < 1e-6 < np.abs(right[0] - right[2]).max()  # same end, other start
    assert np.abs(encoder.encode(SHORT, is_query=True) - encoder.encode(SHORT)).max() > 1e-3


@pytest.mark.parametrize("is_query, direction", CASES)
def test_gate_encoder_and_service_agree_fp32(prompted_bundle, is_query, direction):
    bundle = open_bundle(*prompted_bundle)
    encoder = OnnxEncoder.from_bundle(bundle, "onnx", threads=2)
    model = serving_model(*prompted_bundle, "onnx")
    try:
        served = embed(model, TEXTS, is_query=is_query, truncation_direction=direction)
    finally:
        model.close()
    gated = encoder.encode(TEXTS, batch_size=4, is_query=is_query, truncation_direction=direction)
    assert served.dtype == gated.dtype == np.float32 and served.shape == (len(TEXTS), bundle.dimension)
    np.testing.assert_allclose(served, gated, atol=1e-5)


def test_gate_encoder_and_service_agree_int8_one_text_per_call(prompted_bundle):
    """Dynamic int8 scales activations per batch (issue 17): compared one text per call on both sides."""
    encoder = OnnxEncoder.from_bundle(open_bundle(*prompted_bundle), "int8", threads=2)
    model = serving_model(*prompted_bundle, "int8")
    try:
        for is_query, direction in CASES:
            for text in (SHORT[0], LONG[0], LONG[2]):
                served = embed(model, [text], is_query=is_query, truncation_direction=direction)
                gated = encoder.encode([text], is_query=is_query, truncation_direction=direction)
                np.testing.assert_allclose(served, gated, atol=1e-5, err_msg=f"{is_query=} {direction=} {text!r}")
    finally:
        model.close()


def test_the_prompt_argument_encodes_every_text_as_a_query(prompted_bundle):
    """retrain's query side: ``from_bundle(..., prompt=bundle.query_prompt)`` is /embed with a query prompt."""
    bundle = open_bundle(*prompted_bundle)
    queries = OnnxEncoder.from_bundle(bundle, "onnx", threads=2, prompt=bundle.query_prompt)
    both = OnnxEncoder.from_bundle(bundle, "onnx", threads=2)
    np.testing.assert_allclose(queries.encode(TEXTS), both.encode(TEXTS, is_query=True), atol=1e-6)


def test_too_long_without_truncation_is_refused_alike(prompted_bundle):
    encoder = OnnxEncoder.from_bundle(open_bundle(*prompted_bundle), "onnx", threads=2)
    model = serving_model(*prompted_bundle, "onnx")
    try:
        for direction in ("right", "left"):
            with pytest.raises(InputTooLong):
                encoder.encode(TEXTS, truncate=False, truncation_direction=direction)
            with pytest.raises(TooLarge, match="input 3 is longer than the model's 32 tokens"):
                embed(model, TEXTS, truncate=False, truncation_direction=direction)
        np.testing.assert_allclose(embed(model, SHORT, truncate=False), encoder.encode(SHORT, truncate=False),
                                   atol=1e-5)
    finally:
        model.close()
