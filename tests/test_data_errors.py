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
