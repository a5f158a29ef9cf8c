"""Loading and validating Q&A files: every format of the guide, every malformed case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import DataError, QARecord, load_qa_data, load_qa_file, write_pairs_jsonl

TURKISH = "İstanbul'un ılık şehri ğ ü ş ö ç Iı İi"


def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def test_json_plain_pairs(tmp_path):
    path = write(tmp_path, "d.json", json.dumps([{"question": "Soru?", "answer": TURKISH}], ensure_ascii=False))
    assert load_qa_file(path) == [QARecord("Soru?", TURKISH)]


def test_jsonl_with_bom_crlf_and_blank_lines(tmp_path):
    lines = ['{"question": "S1", "answer": "C1"}', "", '{"question": "S2", "answer": "' + TURKISH + '"}']
    path = write(tmp_path, "d.jsonl", "\ufeff" + "\r\n".join(lines) + "\r\n")
    records = load_qa_file(path)
    assert [r.question for r in records] == ["S1", "S2"]
    assert records[1].positive == TURKISH  # Turkish letters survive exactly


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    # json.dumps(ensure_ascii=False), as the service's feedback export writes, leaves these unescaped.
    texts = ["Kartımın limiti\u2028ne kadar?", "Birinci\u2029ikinci", "NEL\u0085satır"]
    lines = [json.dumps({"question": t, "answer": f"C{i}"}, ensure_ascii=False) for i, t in enumerate(texts)]
    path = write(tmp_path, "d.jsonl", "\n".join([*lines, '{"question": "S"}']) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:4: missing field 'answer'"):  # later line numbers stay right
        load_qa_file(path)
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    assert [r.question for r in load_qa_file(path)] == texts


def test_csv_quoted_commas_newlines_and_bom(tmp_path):
    content = '\ufeffquestion,answer\r\n"Soru, virgüllü?","Cevap satır\r\nikinci ""tırnak"""\r\n'
    (record,) = load_qa_file(write(tmp_path, "d.csv", content))
    assert record.question == "Soru, virgüllü?"
    assert record.positive == 'Cevap satır\r\nikinci "tırnak"'


def test_hard_negative_forms_json_and_csv(tmp_path):
    item = {"question": "Python nedir?", "positive": "Bir dil.", "negatives": ["Java.", "C++."]}
    from_json = load_qa_file(write(tmp_path, "n.json", json.dumps([item])))
    csv_text = "question,positive,negative1,negative2,negative3\nPython nedir?,Bir dil.,Java.,C++.,\n"
    from_csv = load_qa_file(write(tmp_path, "n.csv", csv_text))
    assert from_json == from_csv == [QARecord("Python nedir?", "Bir dil.", ("Java.", "C++."))]


def test_shipped_examples_load_identically_from_json_and_csv(example_data):
    for stem in ("example_qa_data", "example_qa_data_with_negatives"):
        as_json = load_qa_file(example_data.parent / f"{stem}.json")
        as_csv = load_qa_file(example_data.parent / f"{stem}.csv")
        assert as_json == as_csv and len(as_json) >= 40
    assert len(load_qa_file(example_data)) >= 60


def test_duplicates_dropped_across_files_and_counted(tmp_path):
    a = write(tmp_path, "a.jsonl", '{"question": "S", "answer": "C"}\n{"question": "S", "answer": "C"}\n')
    b = write(tmp_path, "b.csv", "question,answer\nS,C\nS2,C\n")
    data = load_qa_data([a, b])
    assert [(r.question, r.positive) for r in data.records] == [("S", "C"), ("S2", "C")]
    assert data.duplicates_dropped == 2
    assert data.passages == ["C"]


def test_a_folder_stands_for_its_data_files(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    write(folder, "b.csv", "question,answer\nS2,C2\n")
    write(folder, "a.jsonl", '{"question": "S", "answer": "C"}\n')
    write(folder, "notes.txt", "not data")
    (folder / "nested").mkdir()
    write(folder / "nested", "c.json", '[{"question": "S3", "answer": "C3"}]')
    data = load_qa_data([folder])
    assert [r.question for r in data.records] == ["S", "S2"]  # sorted, not recursive, other files ignored
    assert [Path(s).name for s in data.sources] == ["a.jsonl", "b.csv"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no data file .* in .*empty"):
        load_qa_data([empty])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("d.jsonl", '{"question": "S", "answer": "C"}\n{"question": "S2" "answer": 1}\n', "d.jsonl:2: malformed JSON"),
        ("d.jsonl", '{"question": "S"}\n', "d.jsonl:1: missing field 'answer'"),
        ("d.jsonl", '{"question": "", "answer": "C"}\n', "d.jsonl:1: field 'question' is empty"),
        ("d.jsonl", '{"question": "S", "answer": 5}\n', "d.jsonl:1: field 'answer' must be a string, found int"),
        ("d.jsonl", '["S", "C"]\n', "d.jsonl:1: expected an object"),
        ("d.json", '[{"question": "S", "answer": "C"}, {"question": "S"}]', "d.json[1]: missing field 'answer'"),
        ("d.json", '[{"question": "S",\n "answer": "C"', "d.json:2: malformed JSON"),
        ("d.json", '{"question": "S", "answer": "C"}', "must hold a list of objects"),
        ("d.json", '[{"question": "S", "positive": "C", "negatives": "N"}]', "'negatives' must be a list"),
        ("d.json", '[{"question": "S", "positive": "C", "negatives": ["N", 3]}]', "'negatives[1]' must be a non-empty"),
        ("d.json", '[{"question": "S", "positive": "C", "negatives": ["C"]}]', "'negatives[0]' is the same text"),
        ("d.csv", "question,text\nS,C\n", "d.csv:1: CSV header lacks column 'answer'"),
        ("d.csv", 'question,answer\nS,C\n"S2,C2\n', "d.csv:3: malformed CSV"),
        ("d.csv", "question,answer\nS,C\nS2,C2,extra\n", "d.csv:3: expected 2 columns, found 3"),
        ("d.csv", "question,answer\nS,\n", "d.csv:2: field 'answer' is empty"),
        ("d.txt", "question,answer\n", "unsupported file extension '.txt'"),
        ("d.csv", "question,answer\n", "no records found"),
    ],
)
def test_malformed_input_names_file_line_and_field(tmp_path, name, content, expected):
    with pytest.raises(DataError, match=None) as info:
        load_qa_file(write(tmp_path, name, content))
    assert expected in str(info.value)


def test_invalid_utf8_names_line(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"question": "S", "answer": "C"}\n{"question": "\xff"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8"):
        load_qa_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_qa_file(tmp_path / "nope.json")


def test_written_pairs_read_back_unchanged(tmp_path):
    records = [QARecord("İstanbul'un eski adı nedir?", 'Eski adı "Konstantinopolis"dir.\nSatır sonu da var.'),
               QARecord("Çay nerede yetişir?", "Rize'de.", negatives=("Kahve cezvede pişer.",))]
    path = write_pairs_jsonl(records, tmp_path / "pairs.jsonl")
    assert "İstanbul" in path.read_text(encoding="utf-8")  # not \u-escaped
    assert [(r.question, r.positive, r.negatives) for r in load_qa_file(path)] == [
        (records[0].question, records[0].positive, ()), (records[1].question, records[1].positive, ())]
