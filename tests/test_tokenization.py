"""The runtime's tokenizer: truncation on either side, the query instruction kept, padding."""

from __future__ import annotations

import numpy as np
import pytest

from export.runtime import Encoded, InputTooLong, TextTokenizer, pad_batch


def test_tokenizer_truncates_and_refuses_when_asked(minilm_path):
    tok = TextTokenizer(minilm_path / "tokenizer.json", max_seq_length=8, query_prompt="query: ")
    long = "one two three four five six seven eight nine ten"
    assert [len(e) for e in tok.encode(["hi", long])] == [3, 8]
    assert len(tok.encode(["hi"], is_query=True)[0]) > 3  # prompt only for queries
    with pytest.raises(InputTooLong, match="input 1 is longer than the model's 8 tokens"):
        tok.encode(["hi", long], truncate=False)
    with pytest.raises(InputTooLong):
        tok.encode([long], truncate=False, truncation_direction="left")
    assert len(tok.encode(["one two three four five six"], truncate=False)[0]) == 8  # exactly fits
    with pytest.raises(ValueError, match="truncation_direction"):
        tok.encode(["hi"], truncation_direction="middle")


def test_left_truncation_keeps_the_end_of_the_text_and_the_query_instruction(minilm_path):
    from tokenizers import Tokenizer

    path = minilm_path / "tokenizer.json"
    tok = TextTokenizer(path, max_seq_length=8, query_prompt="query: ")
    words = Tokenizer.from_file(str(path))
    long = "one two three four five six seven eight nine ten"

    def tokens(encoded):
        return [words.id_to_token(int(i)) for i in encoded.ids]

    # as the tokenizers library truncates on the left
    words.no_padding()
    words.enable_truncation(8, direction="left")
    assert tok.encode([long], truncation_direction="left")[0].ids.tolist() == words.encode(long).ids
    assert tokens(tok.encode([long], truncation_direction="left")[0]) == \
        ["[CLS]", "five", "six", "seven", "eight", "nine", "ten", "[SEP]"]
    # a query: the instruction stays, the start of the text goes
    assert tokens(tok.encode([long], is_query=True, truncation_direction="left")[0]) == \
        ["[CLS]", "query", ":", "seven", "eight", "nine", "ten", "[SEP]"]
    assert tokens(tok.encode([long], is_query=True)[0]) == \
        ["[CLS]", "query", ":", "one", "two", "three", "four", "[SEP]"]
    short = tok.encode(["hi"], is_query=True, truncation_direction="left")[0]
    assert tokens(short) == ["[CLS]", "query", ":", "hi", "[SEP]"]


def test_pad_batch_pads_right_with_a_mask():
    ids, mask, types = pad_batch([Encoded(np.array([101, 7, 102]), np.zeros(3, np.int64)),
                                  Encoded(np.array([101, 102]), np.ones(2, np.int64))])
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert types.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == types.dtype == np.int64
