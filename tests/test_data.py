"""fg_edge.data (readers, rows, tokenize): TSV / CSV / JSONL / text files, labels, subsampling, errors, tokenisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import needs_shared
from fg_edge.data.readers import ClassificationData, detect_format, load_classification, load_texts, subsample_indices
from fg_edge.data.tokenize import lm_blocks, pad_collate, tokenize_classification
from fg_edge.errors import DataError


SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "SST-2"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- happy paths ---------------------------------------------------------------------------------------------
def test_tsv_is_read_without_quoting(tmp_path):
    # GLUE TSVs are unquoted: a lone double quote is part of the text, not the start of a quoted field
    path = write(tmp_path / "t.tsv", 'text\tlabel\nthe " movie \t1\nit \'s bad\t0\nok "quoted, with comma"\t1\n')
    data = load_classification(path)
    assert data.texts == ['the " movie ', "it 's bad", 'ok "quoted, with comma"']
    assert data.labels == [1, 0, 1]
    assert data.num_labels == 2 and data.id2label is None and not data.string_labels
    assert data.total_rows == 3 and data.format == "tsv"
    assert data.label_config() == {"id2label": {0: "LABEL_0", 1: "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}


def test_long_fields_read_without_changing_csv_limit(tmp_path):
    import csv

    before = csv.field_size_limit()
    long_text = "w " * 100_000  # 200 KB: over csv's default 128 KiB field limit
    data = load_classification(write(tmp_path / "long.tsv", f"text\tlabel\n{long_text}\t1\nshort\t0\n"))
    assert data.texts[0] == long_text and data.labels == [1, 0]
    assert csv.field_size_limit() == before  # the limit is lifted per parse step, not process-wide


def test_csv_with_quotes_and_string_labels_and_pairs(tmp_path):
    path = write(tmp_path / "t.csv", 'premise,hypothesis,gold\n"a, b",c,neutral\nd,"e ""x""",entailment\n'
                                     'f,g,contradiction\nh,i,entailment\n')
    data = load_classification(path, text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert data.texts == ["a, b", "d", "f", "h"]
    assert data.text_pairs == ["c", 'e "x"', "g", "i"]
    # sorted unique strings → ids
    assert data.id2label == {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert data.labels == [2, 1, 0, 1] and data.num_labels == 3 and data.string_labels
    assert data.label_config()["label2id"] == {"contradiction": 0, "entailment": 1, "neutral": 2}


def test_jsonl_dev_file_uses_the_training_label_mapping(tmp_path):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["pos", "neg", "pos", "neg"])]
    train = load_classification(write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"))
    assert train.id2label == {0: "neg", 1: "pos"} and train.labels == [1, 0, 1, 0]
    dev = load_classification(write(tmp_path / "dev.jsonl", '{"text": "x", "label": "neg"}\n'), reference=train)
    assert dev.labels == [0] and dev.id2label == train.id2label
    with pytest.raises(DataError, match=r"dev file .*dev2\.jsonl: label 'meh' on line 1 does not occur in the training"):
        load_classification(write(tmp_path / "dev2.jsonl", '{"text": "x", "label": "meh"}\n'), reference=train)


def test_integer_labels_in_jsonl_and_dev_range_check(tmp_path):
    train = load_classification(write(tmp_path / "a.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 2}\n'))
    assert train.num_labels == 3 and train.labels == [0, 2]
    with pytest.raises(DataError, match=r"label 5 on line 1 is not one of the training labels 0\.\.2"):
        load_classification(write(tmp_path / "d.jsonl", '{"text": "a", "label": 5}\n'), reference=train)


def test_negative_integer_labels_are_mapped(tmp_path):
    data = load_classification(write(tmp_path / "t.tsv", "text\tlabel\na\t-1\nb\t1\nc\t-1\n"))
    assert data.id2label == {0: "-1", 1: "1"} and data.labels == [0, 1, 0]


def test_subsampling_is_deterministic(tmp_path):
    lines = "".join(f"row {i}\t{i % 2}\n" for i in range(50))
    path = write(tmp_path / "t.tsv", "text\tlabel\n" + lines)
    a = load_classification(path, max_rows=10, seed=3)
    b = load_classification(path, max_rows=10, seed=3)
    c = load_classification(path, max_rows=10, seed=4)
    assert a.texts == b.texts and a.texts != c.texts and len(a) == 10 and a.total_rows == 50
    assert subsample_indices(5, None, 0) == [0, 1, 2, 3, 4] and subsample_indices(5, 99, 0) == [0, 1, 2, 3, 4]


@needs_shared(SST2 / "dev.tsv")
def test_reads_the_shared_sst2_dev_file():
    data = load_classification(SST2 / "dev.tsv")
    assert len(data) == 872 and data.num_labels == 2 and set(data.labels) == {0, 1}


def test_format_detection(tmp_path):
    assert detect_format("a.TSV") == "tsv" and detect_format("a.jsonl") == "jsonl" and detect_format("a.txt") == "text"
    assert detect_format("a.data", "csv") == "csv"
    with pytest.raises(DataError, match=r"a\.data.*--format"):
        detect_format("a.data")


# -- errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, kwargs, pattern", [
    ("missing.tsv", None, {}, r"missing\.tsv does not exist"),
    ("empty.tsv", "", {}, r"empty\.tsv is empty"),
    ("header.tsv", "text\tlabel\n", {}, r"header\.tsv has a header but no data rows"),
    ("ragged.tsv", "text\tlabel\na\t1\nb\t0\textra\n", {}, r"ragged\.tsv: line 3 has 3 field\(s\) but the header"),
    ("cols.tsv", "sentence\tlabel\na\t1\n", {}, r"cols\.tsv has no column 'text' \(columns found: sentence, label\); "
                                                r"pass --text-column"),
    ("lab.tsv", "text\ty\na\t1\n", {}, r"no column 'label' \(columns found: text, y\)"),
    ("mixed.tsv", "text\tlabel\na\t1\nb\tpos\n", {}, r"label 'pos' on line 3 is not an integer while other labels are"),
    ("one.tsv", "text\tlabel\na\t1\nb\t1\n", {}, r"one\.tsv: every row has the same label.*at least 2 classes"),
    ("nolabel.tsv", "text\tlabel\na\t\nb\t1\n", {}, r"line 2 has an empty 'label'"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', {}, r"bad\.jsonl: line 2 is not valid JSON"),
    ("list.jsonl", '[1, 2]\n', {}, r"list\.jsonl: line 1 is a JSON list, not an object"),
    ("short.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', {}, r"short\.jsonl: line 2 has no 'label' field"),
    ("quoted.csv", 'text,label\n"unterminated,1\n', {}, r"quoted\.csv: line \d+ "),
    ("plain.txt", "just text\n", {}, r"plain\.txt: a plain text file has no columns"),
])
def test_classification_errors(tmp_path, name, content, kwargs, pattern):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_classification(path, **kwargs)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.tsv"
    path.write_bytes("text\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.tsv is not UTF-8"):
        load_classification(path)


def test_hf_source_without_datasets_is_a_clear_error():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"hf:glue/sst2 needs the `datasets` package"):
            load_classification("hf:glue/sst2")
    else:
        pytest.skip("datasets is installed; the offline error path is not reachable")


# -- causal LM text ------------------------------------------------------------------------------------------
def test_texts_and_blocks(tmp_path, decoder_tokenizer):
    path = write(tmp_path / "s.txt", "good w1 w2\nw3 w4\n\n\nbad w5 w6 w7\n\nw8\n")
    data = load_texts(path)
    assert data.texts == ["good w1 w2\nw3 w4", "bad w5 w6 w7", "w8"] and data.format == "text"
    # [BOS] + 5 + [EOS], [BOS] + 4 + [EOS], [BOS] + 1 + [EOS] = 16 tokens → three blocks of 5, one token dropped
    blocks = lm_blocks(data, decoder_tokenizer, 5)
    assert blocks.shape == (3, 5) and blocks.dtype == torch.long
    assert blocks[0, 0] == decoder_tokenizer.bos_token_id and blocks[1, 1] == decoder_tokenizer.eos_token_id
    data.max_blocks = 2
    assert lm_blocks(data, decoder_tokenizer, 5).shape == (2, 5)
    # a stream shorter than one block gives one shorter block
    assert lm_blocks(load_texts(write(tmp_path / "tiny.txt", "w1 w2\n")), decoder_tokenizer, 64).shape == (1, 4)


def test_texts_from_jsonl_and_errors(tmp_path):
    data = load_texts(write(tmp_path / "d.jsonl", '{"body": "a b"}\n{"body": ""}\n{"body": "c"}\n'), text_column="body")
    assert data.texts == ["a b", "c"]
    with pytest.raises(DataError, match=r"d\.jsonl has no column 'text' \(columns found: body\)"):
        load_texts(tmp_path / "d.jsonl")
    with pytest.raises(DataError, match=r"blank\.txt holds no text"):
        load_texts(write(tmp_path / "blank.txt", "\n\n  \n"))
    with pytest.raises(DataError, match=r"nothing\.txt does not exist"):
        load_texts(tmp_path / "nothing.txt")


# -- tokenisation --------------------------------------------------------------------------------------------
def test_tokenize_and_pad(encoder_tokenizer):
    data = ClassificationData(source="mem", texts=["good w1 w2", "bad"], labels=[1, 0], num_labels=2,
                              text_pairs=["w3", "w4"])
    rows = tokenize_classification(data, encoder_tokenizer, max_length=6)
    assert [len(r["input_ids"]) for r in rows] == [6, 5]  # truncated pair / full pair
    batch = pad_collate(encoder_tokenizer)(rows)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 1, 0]
    assert batch["input_ids"][1, 5] == encoder_tokenizer.pad_token_id
    assert batch["token_type_ids"].tolist()[1] == [0, 0, 0, 1, 1, 0]
    assert batch["labels"].tolist() == [1, 0]


def test_missing_shared_data_fails_under_ci(monkeypatch, tmp_path):
    """Tests that need ../shared skip on a developer machine without it, but fail under CI."""
    missing = tmp_path / "nope.tsv"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: .*nope.tsv"):
        needs_shared(missing)(lambda: None)()
    monkeypatch.delenv("CI")
    assert needs_shared(missing).name == "skip"
    assert needs_shared(tmp_path)(len) is len          # present: the test is left as it is


def test_headerless_file_is_detected_and_read_with_no_header(tmp_path):
    """AG News ships as label<TAB>text with no header: say so instead of listing a data row as column names."""
    from fg_edge.errors import DataError

    path = tmp_path / "ag.tsv"
    path.write_text("3\tWall St. Bears Claw Back Into the Black\n1\tOil prices soar to all-time record\n"
                    "3\tStocks end up, but near year lows\n")
    with pytest.raises(DataError, match="looks like a data row.*--no-header"):
        load_classification(path)
    data = load_classification(path, header=False, text_column="1", label_column="0")
    assert data.texts[0].startswith("Wall St.") and len(data) == 3 and data.labels == [3, 1, 3]
    texts = load_texts(path, header=False, text_column="1")
    assert len(texts.texts) == 3
    # a real header with a misspelt column still gets the plain message
    named = tmp_path / "named.tsv"
    named.write_text("sentence\tlabel\ngood film\t1\n")
    with pytest.raises(DataError, match="has no column 'text'.*--text-column"):
        load_classification(named)
