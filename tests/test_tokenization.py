"""Tokenization: truncation on either side, the query instruction kept."""

from __future__ import annotations

import pytest

from service.errors import TooLarge


def test_tokenizer_truncates_and_refuses_when_asked(minilm_path):
    from service.tokenization import TextTokenizer

    tok = TextTokenizer(minilm_path / "tokenizer.json", max_seq_length=8, query_prompt="query: ")
    long = "one two three four five six seven eight nine ten"
    assert [len(e) for e in tok.encode(["hi", long])] == [3, 8]
    assert len(tok.encode(["hi"], is_query=True)[0]) > 3  # prompt only for queries
    with pytest.raises(TooLarge):
        tok.encode([long], truncate=False)
    with pytest.raises(TooLarge):
        tok.encode([long], truncate=False, truncation_direction="left")


def test_left_truncation_keeps_the_end_of_the_text_and_the_query_instruction(minilm_path):
    from tokenizers import Tokenizer

    from service.tokenization import TextTokenizer

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


