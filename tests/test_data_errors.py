"""Each validation error, from a real malformed file: the message names the right file, line and column."""

import json
import os
import subprocess
import sys

import pytest

from tunelab.data import prepare
from tunelab.errors import DataError

GOOD = "".join(f"good text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(12))


def _error(make_config, tokenizer, **data) -> str:
    with pytest.raises(DataError) as err:
        prepare(make_config(**data), tokenizer=tokenizer, quiet=True)
    return str(err.value)


def test_truncated_csv_names_the_line_of_the_open_quote(write, make_config, tokenizer):
    path = write("t.csv", "text,label\n" + GOOD + '"this row was cut off in the mid')
    msg = _error(make_config, tokenizer, train=path)
    assert f"{path}:line 14: malformed CSV: a quoted field is never closed" in msg


def test_wrong_field_count_names_the_line(write, make_config, tokenizer):
    path = write("t.csv", "text,label\n" + GOOD + "one, two, three,pos\n")
    msg = _error(make_config, tokenizer, train=path)
    assert f"{path}:line 14: malformed row: 4 fields, but the header has 2" in msg


def test_latin1_bytes_name_line_and_byte_offset(write, make_config, tokenizer):
    head = ("text,label\n" + GOOD).encode()
    path = write("t.csv", head + "caf\xe9 au lait,pos\n".encode("latin-1"))
    msg = _error(make_config, tokenizer, train=path)
    offset = len(head) + 3
    assert f"{path}:line 14: bytes that are not valid utf-8 at byte offset {offset}" in msg
    assert "data.encoding" in msg
    # and with the right encoding the same file is fine
    prepared = prepare(make_config(train=path, encoding="latin-1"), tokenizer=tokenizer, quiet=True)
    assert prepared.report["rows_written"] == 13


def test_unknown_label_names_line_column_and_allowed(write, make_config, tokenizer):
    path = write("t.csv", "text,label\n" + GOOD + "a fine day,postive\n")
    msg = _error(make_config, tokenizer, train=path, labels=["neg", "pos"])
    assert f"{path}:line 14: column 'label': unknown label 'postive' (allowed: neg, pos)" in msg


def test_label_matching_is_case_and_space_insensitive(write, make_config, tokenizer):
    path = write("t.csv", "text,label\n" + GOOD + "a fine day, POS \n")
    prepared = prepare(make_config(train=path, labels=["neg", "pos"]), tokenizer=tokenizer, quiet=True)
    assert prepared.report["rows_written"] == 13


def test_empty_and_whitespace_text_and_missing_label(write, make_config, tokenizer):
    path = write("t.csv", "sentence,y\n" + GOOD.replace(",", ",", 1) + ",pos\n   ,neg\nno label here,\n")
    msg = _error(make_config, tokenizer, train=path, text_column="sentence", label_column="y")
    assert f"{path}:line 14: column 'sentence': text is empty" in msg
    assert f"{path}:line 15: column 'sentence': text is only whitespace" in msg
    assert f"{path}:line 16: column 'y': label is missing" in msg


def test_missing_column_names_it_and_the_header(write, make_config, tokenizer):
    path = write("t.csv", "review,label\n" + GOOD)
    msg = _error(make_config, tokenizer, train=path)
    assert f"{path}:line 1: missing column 'text'; the header has: 'review', 'label'" in msg


def test_jsonl_broken_line_names_line_and_column(write, make_config, tokenizer):
    lines = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(12)]
    lines.insert(4, '{"text": "broken", "label": ')
    path = write("t.jsonl", "\n".join(lines) + "\n")
    msg = _error(make_config, tokenizer, train=path)
    assert f"{path}:line 5: malformed JSON at column 29" in msg


def test_jsonl_missing_field_per_record(write, make_config, tokenizer):
    lines = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(12)]
    lines[3] = json.dumps({"text": "no label key"})
    path = write("t.jsonl", "\n".join(lines))
    msg = _error(make_config, tokenizer, train=path)
    assert f"{path}:line 4: column 'label': field 'label' is missing" in msg


def test_conflicting_duplicates_are_reported(write, make_config, tokenizer):
    path = write("t.csv", "text,label\n" + GOOD + "same words,pos\nsame words,neg\nsame words,pos\n")
    msg = _error(make_config, tokenizer, train=path, conflicting_duplicates="error")
    assert "'same words' has labels neg, pos at lines 14, 15, 16" in msg
    prepared = prepare(make_config(train=path), tokenizer=tokenizer, quiet=True)  # default: drop all copies
    report = prepared.report
    assert report["removed"] == {"conflicting_duplicate": 3}
    assert report["conflicting_duplicates"][0]["where"] == [14, 15, 16]
    kept = prepared_texts(prepared)
    assert "same words" not in kept
    first = prepare(make_config(name="k", train=path, conflicting_duplicates="keep_first"), tokenizer=tokenizer, quiet=True)
    assert first.report["removed"] == {"conflicting_duplicate": 2}


def prepared_texts(prepared):
    import pyarrow.parquet as pq

    return [t for f in prepared.files.values() for t in pq.read_table(f).column("text").to_pylist()]


def test_duplicate_ids(write, make_config, tokenizer):
    rows = "".join(f"{i},text {i},{'a' if i % 2 else 'b'}\n" for i in range(12))
    path = write("t.csv", "id,text,label\n" + rows + "3,another text,a\n")
    msg = _error(make_config, tokenizer, train=path, id_column="id")
    assert f"{path}:line 14: column 'id': id '3' already used at line 5" in msg


def test_every_problem_is_listed_first_twenty_shown(write, make_config, tokenizer):
    bad = "".join(f"text {i},\n" for i in range(30))
    path = write("t.csv", "text,label\n" + GOOD + bad)
    msg = _error(make_config, tokenizer, train=path)
    assert msg.startswith("the data has bad rows: 30 problems (30 missing_label)")
    assert msg.count("label is missing") == 20 and "... and 10 more" in msg
    assert "data.on_bad_rows: drop" in msg


def test_drop_mode_removes_bad_rows_and_lists_them_in_the_report(write, make_config, tokenizer):
    path = write("t.csv", "text,label\n" + GOOD + ",pos\nok text,\n\"a\"b,pos\nnice one,zzz\n")
    prepared = prepare(make_config(train=path, on_bad_rows="drop", labels=["neg", "pos"]), tokenizer=tokenizer, quiet=True)
    report = prepared.report
    assert report["removed"] == {"empty_text": 1, "malformed": 1, "missing_label": 1, "unknown_label": 1}
    assert sorted(p["line"] for p in report["removed_rows"]) == [14, 15, 16, 17]
    assert report["rows_read"] == 16 and report["rows_written"] == 12
    md = (prepared.dir / "report.md").read_text()
    assert "unknown_label" in md and ":17:" in md


def test_cli_prints_the_problem_list_without_traceback(write, tmp_path):
    path = write("t.csv", "text,label\n" + GOOD + ",pos\n")
    cfg = write("c.yaml", f"name: c\nruns_dir: {tmp_path / 'runs'}\ndata:\n  train: {path}\n")
    res = subprocess.run([sys.executable, "-m", "tunelab", "prepare", str(cfg)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    assert f"{path}:line 14: column 'text': text is empty" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs" / "c" / "data" / "manifest.json").exists()


def test_missing_file_and_unknown_extension(write, make_config, tokenizer):
    assert "does not exist" in _error(make_config, tokenizer, train="nowhere/train.csv")
    path = write("t.txt", "text,label\n")
    assert "cannot tell the format from the extension 'txt'" in _error(make_config, tokenizer, train=path)


# ----------------------------------------------------------------- text that is not valid Unicode, odd encodings

def test_lone_surrogates_and_undecodable_bytes_are_one_kind_of_bad_row(write, make_config, tokenizer):
    """A JSON "\\ud800" escape without its pair decodes to a lone surrogate, which the tokenizer and Parquet refuse:
    the row is reported (file, line, column) like a CSV row with bytes that are not UTF-8, under one reason."""
    lines = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(12)]
    lines.insert(3, '{"text": "broken \\ud800 escape", "label": "a"}')
    lines.insert(6, '{"text": "fine text", "label": "b\\udfff"}')
    path = write("t.jsonl", "\n".join(lines) + "\n")
    msg = _error(make_config, tokenizer, train=path)
    assert msg.startswith("the data has bad rows: 2 problems (2 invalid_unicode)")
    assert f"{path}:line 4: column 'text': not valid Unicode: a lone surrogate U+D800 at character 8" in msg
    assert f"{path}:line 7: column 'label': not valid Unicode: a lone surrogate U+DFFF at character 2" in msg
    prepared = prepare(make_config(train=path, on_bad_rows="drop"), tokenizer=tokenizer, quiet=True)
    assert prepared.report["removed"] == {"invalid_unicode": 2} and prepared.labels == ["a", "b"]
    csv_path = write("t.csv", ("text,label\n" + GOOD).encode() + b"caf\xe9 au lait,pos\n")
    dropped = prepare(make_config(name="c", train=csv_path, on_bad_rows="drop"), tokenizer=tokenizer, quiet=True)
    assert dropped.report["removed"] == {"invalid_unicode": 1}
    assert dropped.report["removed_rows"][0]["line"] == 14


def test_parquet_strings_that_are_not_utf8_are_bad_rows(tmp_path, make_config, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"text {i}".encode() for i in range(12)] + [b"caf\xe9"]  # a writer that did not check UTF-8
    offsets = [0]
    for t in texts:
        offsets.append(offsets[-1] + len(t))
    column = pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
                                                             pa.py_buffer(b"".join(texts))])
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": column, "label": ["a", "b"] * 6 + ["a"]}), path)
    msg = _error(make_config, tokenizer, train=path)
    assert f"{path}:row 13: column 'text': bytes that are not valid UTF-8" in msg


def test_utf16_file_names_its_encoding_and_the_setting_reads_it(write, make_config, tokenizer):
    path = write("t.csv", ("text,label\n" + GOOD).encode("utf-16"))  # with a byte-order mark, as Excel writes it
    msg = _error(make_config, tokenizer, train=path)
    assert msg == f"{path} looks UTF-16 encoded (byte-order mark); set data.encoding: utf-16 (or save it as UTF-8)"
    assert prepare(make_config(train=path, encoding="utf-16"), tokenizer=tokenizer, quiet=True).report["rows_written"] == 12
    bare = write("le.csv", ("text,label\n" + GOOD).encode("utf-16-le"))  # no mark: NUL bytes give it away
    assert "looks UTF-16-LE encoded" in _error(make_config, tokenizer, train=bare)
    assert prepare(make_config(name="le", train=bare, encoding="utf-16-le"), tokenizer=tokenizer,
                   quiet=True).report["rows_written"] == 12


def test_gzipped_csv_is_read(write, make_config, tokenizer):
    import gzip

    path = write("t.csv.gz", gzip.compress(("text,label\n" + GOOD).encode()))
    assert prepare(make_config(train=path), tokenizer=tokenizer, quiet=True).report["rows_written"] == 12


# ----------------------------------------------------------------- empty files and splits, folders, types

def test_a_file_without_rows_is_an_error_naming_it(write, make_config, tokenizer):
    header_only = write("train.csv", "text,label\n")
    assert _error(make_config, tokenizer, train=header_only, labels=["neg", "pos"]) == (
        f"{header_only}: no data rows; data.train must hold at least one row")
    train = write("ok.csv", "text,label\n" + GOOD)
    dev = write("dev.csv", "text,label\n\n\n")
    assert _error(make_config, tokenizer, train=train, validation=dev) == (
        f"{dev}: no data rows (only 2 blank lines); data.validation must hold at least one row")


def test_a_split_whose_every_row_was_removed_is_an_error_listing_why(write, make_config, tokenizer):
    train = write("t.csv", "text,label\n,pos\nno label,\nsame,neg\nsame,pos\n")
    msg = _error(make_config, tokenizer, train=train, labels=["neg", "pos"], on_bad_rows="drop")
    assert msg.startswith(f"{train}: no row of the train split is left: 4 problems "
                          "(2 conflicting_duplicate, 1 empty_text, 1 missing_label)")
    assert f"{train}:line 5: text also at line 4 with another label" in msg and "Nothing is left to train on" in msg
    train = write("t2.csv", "text,label\n" + GOOD)
    test = write("test.csv", "text,label\n" + GOOD)  # the same texts: they stay in test, train loses them all
    msg = _error(make_config, tokenizer, train=train, test=test)
    assert msg.startswith(f"{train}: no row of the train split is left: 12 problems (12 in_other_split)")


def test_a_folder_is_named_as_a_folder(tmp_path, make_config, tokenizer):
    msg = _error(make_config, tokenizer, train=tmp_path)
    assert msg == f"{tmp_path} is a folder; expected a data file (.csv, .tsv, .jsonl, .json or .parquet)"


def test_json_texts_must_be_strings_csv_cells_are_always_text(write, make_config, tokenizer, tmp_path):
    lines = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(12)]
    lines += [json.dumps({"text": t, "label": "a"}) for t in (42, ["a list"], {"an": "object"}, True)]
    msg = _error(make_config, tokenizer, train=write("t.jsonl", "\n".join(lines)))
    for line, kind in ((13, "a number"), (14, "a list"), (15, "an object"), (16, "true/false")):
        assert f"t.jsonl:line {line}: column 'text': text must be a string, got {kind}" in msg
    numbers = write("n.csv", "text,label\n" + "".join(f"{i},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    prepared = prepare(make_config(train=numbers), tokenizer=tokenizer, quiet=True)
    assert prepared.report["rows_written"] == 20  # in CSV every cell is text: '7' is the text "7"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": list(range(12)), "label": ["a", "b"] * 6}), tmp_path / "n.parquet")
    assert _error(make_config, tokenizer, train=tmp_path / "n.parquet") == (
        f"{tmp_path / 'n.parquet'}: column 'text' holds int64 values; a text column must hold strings")
