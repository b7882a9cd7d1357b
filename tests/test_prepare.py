"""The data stage's behaviour: cleaning, splitting, formats, reuse and crash safety."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.data import load_prepared, prepare
import tunelab.data.pipeline as prepare_module
from tunelab.errors import DataError


def read_split(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def csv_rows(rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label"])
    w.writerows(rows)
    return buf.getvalue()


def test_cleaning_normalises_unicode_and_whitespace(write, make_config, tokenizer):
    decomposed = "cafe\u0301  was\tgood"
    rows = [(f"sentence {i}", "a" if i % 2 else "b") for i in range(20)] + [(decomposed, "a"), ("CAFÉ was good", "a")]
    path = write("t.csv", csv_rows(rows))
    prepared = prepare(make_config(train=path, lowercase=True), tokenizer=tokenizer, quiet=True)
    texts = [r["text"] for f in prepared.files.values() for r in read_split(f)]
    assert "café was good" in texts  # NFC + folded whitespace + lowercase
    assert prepared.report["removed"] == {"duplicate": 1}  # the two spellings became one text


def test_length_limits_remove_and_report(write, make_config, tokenizer):
    rows = [(f"sentence number {i}", "a" if i % 2 else "b") for i in range(20)] + [("x" * 50, "a"), ("ab", "b")]
    path = write("t.csv", csv_rows(rows))
    prepared = prepare(make_config(train=path, min_chars=3, max_chars=40), tokenizer=tokenizer, quiet=True)
    assert prepared.report["removed"] == {"too_long": 1, "too_short": 1}


def test_given_splits_keep_evaluation_sets_whole(write, make_config, tokenizer):
    train = write("train.csv", csv_rows([(f"t {i}", "a" if i % 2 else "b") for i in range(10)] + [("shared", "a"), ("both", "b")]))
    dev = write("dev.csv", csv_rows([("shared", "a"), ("dev only", "b"), ("both", "b")]))
    test = write("test.csv", csv_rows([("both", "b"), ("test only", "a")]))
    prepared = prepare(make_config(train=train, validation=dev, test=test), tokenizer=tokenizer, quiet=True)
    texts = {s: [r["text"] for r in read_split(f)] for s, f in prepared.files.items()}
    assert texts["test"] == ["both", "test only"]
    assert texts["validation"] == ["shared", "dev only"]  # 'both' belongs to test
    assert "shared" not in texts["train"] and "both" not in texts["train"]
    assert prepared.report["removed"] == {"in_other_split": 3}


def test_stratified_split_is_seeded_and_exact(write, make_config, tokenizer):
    rows = [(f"text {i}", lab) for i, lab in enumerate(["a"] * 50 + ["b"] * 30 + ["c"] * 20)]
    path = write("t.csv", csv_rows(rows))
    one = prepare(make_config(name="one", train=path, seed=1), tokenizer=tokenizer, quiet=True)
    dist = one.report["label_distribution"]
    assert dist == {"train": {"a": 40, "b": 24, "c": 16}, "validation": {"a": 5, "b": 3, "c": 2},
                    "test": {"a": 5, "b": 3, "c": 2}}
    two = prepare(make_config(name="two", train=path, seed=1), tokenizer=tokenizer, quiet=True)
    three = prepare(make_config(name="three", train=path, seed=2), tokenizer=tokenizer, quiet=True)
    assert read_split(one.files["test"]) == read_split(two.files["test"])
    assert read_split(one.files["test"]) != read_split(three.files["test"])


def test_too_few_examples_per_class_is_a_clear_error(write, make_config, tokenizer):
    rows = [(f"text {i}", "a") for i in range(20)] + [("lonely", "rare")]
    path = write("t.csv", csv_rows(rows))
    with pytest.raises(DataError, match=r"too few examples to split: 'rare' has 1 .*min_examples_per_class is 3"):
        prepare(make_config(train=path), tokenizer=tokenizer, quiet=True)


def test_imbalance_warning(write, make_config, tokenizer):
    rows = [(f"text {i}", "a") for i in range(60)] + [(f"other {i}", "b") for i in range(5)]
    prepared = prepare(make_config(train=write("t.csv", csv_rows(rows))), tokenizer=tokenizer, quiet=True)
    assert any("label imbalance: 'a' has 48" in w for w in prepared.report["warnings"])


def test_multilabel_csv_with_separator_and_jsonl_lists(write, make_config, tokenizer):
    rows = [(f"text {i}", ["a|b", "b", "a", "c;a"][i % 4]) for i in range(40)]
    path = write("t.csv", csv_rows(rows))
    prepared = prepare(make_config(train=path, multi_label=True, label_separator="|", on_bad_rows="drop",
                                   labels=["a", "b"]), tokenizer=tokenizer, quiet=True)
    assert prepared.report["removed"] == {"unknown_label": 10}  # 'c;a' is one unknown label with '|'
    labels = [r["label"] for f in prepared.files.values() for r in read_split(f)]
    assert ["a", "b"] in labels and ["b"] in labels
    lines = "\n".join(json.dumps({"text": f"t {i}", "label": [["x"], ["x", "y"], ["y"]][i % 3]}) for i in range(30))
    prepared = prepare(make_config(name="j", train=write("t.jsonl", lines), multi_label=True), tokenizer=tokenizer, quiet=True)
    assert prepared.labels == ["x", "y"]


def test_sentence_pairs_from_parquet_to_jsonl(write, make_config, tokenizer, tmp_path):
    n = 30
    table = pa.table({"premise": [f"premise {i}" for i in range(n)], "hypothesis": [f"hyp {i % 5}" for i in range(n)],
                      "gold": [i % 3 for i in range(n)]})
    path = tmp_path / "pairs.parquet"
    pq.write_table(table, path)
    prepared = prepare(make_config(train=path, text_column="premise", text_pair_column="hypothesis",
                                   label_column="gold", output_format="jsonl"), tokenizer=tokenizer, quiet=True)
    assert prepared.labels == ["0", "1", "2"]  # numeric labels become strings, sorted numerically
    row = read_split(prepared.files["train"])[0]
    assert set(row) == {"text", "text_pair", "label", "source_row"}
    # pair lengths count both texts plus [CLS] and two [SEP]
    shortest = min(len(tokenizer(f"premise {i}", f"hyp {i % 5}")["input_ids"]) for i in range(n))
    assert prepared.report["text_length_tokens"]["validation"]["min"] >= shortest > len(tokenizer("premise 0")["input_ids"])


def test_rerun_is_a_noop_and_changed_input_reprepares(write, make_config, tokenizer):
    path = write("t.csv", csv_rows([(f"text {i}", "a" if i % 2 else "b") for i in range(30)]))
    config = make_config(train=path)
    first = prepare(config, tokenizer=tokenizer, quiet=True)
    mtime = first.files["train"].stat().st_mtime_ns
    again = prepare(config, tokenizer=tokenizer, quiet=True)
    assert again.up_to_date and again.files["train"].stat().st_mtime_ns == mtime
    path.write_text(csv_rows([(f"text {i}", "a" if i % 2 else "b") for i in range(40)]))
    changed = prepare(config, tokenizer=tokenizer, quiet=True)
    assert not changed.up_to_date and changed.report["rows_read"] == 40
    other = prepare(make_config(train=path, seed=5), tokenizer=tokenizer, quiet=True)
    assert not other.up_to_date  # a changed setting re-prepares too


def test_crash_while_writing_leaves_nothing_a_later_stage_accepts(write, make_config, tokenizer, monkeypatch):
    path = write("t.csv", csv_rows([(f"text {i}", "a" if i % 2 else "b") for i in range(30)]))
    config = make_config(train=path)
    prepare(config, tokenizer=tokenizer, quiet=True)
    path.write_text(csv_rows([(f"new text {i}", "a" if i % 2 else "b") for i in range(30)]))
    real = prepare_module.write_split
    calls = []

    def crash_on_second(rows, out, fmt):
        calls.append(out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(rows, out, fmt)

    monkeypatch.setattr(prepare_module, "write_split", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare(config, tokenizer=tokenizer, quiet=True)
    assert load_prepared(config.run_dir / "data") is None  # no manifest: not accepted as prepared
    monkeypatch.setattr(prepare_module, "write_split", real)
    redone = prepare(config, tokenizer=tokenizer, quiet=True)
    assert not redone.up_to_date and "new text" in read_split(redone.files["train"])[0]["text"]


def test_truncated_split_file_is_not_accepted(write, make_config, tokenizer):
    path = write("t.csv", csv_rows([(f"text {i}", "a" if i % 2 else "b") for i in range(30)]))
    config = make_config(train=path)
    prepared = prepare(config, tokenizer=tokenizer, quiet=True)
    data = prepared.files["train"].read_bytes()
    prepared.files["train"].write_bytes(data[: len(data) // 2])
    assert load_prepared(prepared.dir) is None
    assert not prepare(config, tokenizer=tokenizer, quiet=True).up_to_date


# ----------------------------------------------------------------- property-based

texts = st.text(alphabet=st.sampled_from("ab cdé\t\n,\"'xyz"), min_size=0, max_size=12)
labels = st.sampled_from(["neg", "pos", "neu", "", " pos "])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(texts, labels), min_size=0, max_size=80), seed=st.integers(0, 3))
def test_prepare_invariants(rows, seed, write, make_config, tokenizer):
    """No row lost without a reason; no text in two splits; each split within ±1 of its share per class."""
    path = write("p.csv", csv_rows(rows))
    config = make_config(name="p", train=path, on_bad_rows="drop", seed=seed, min_examples_per_class=1)
    try:
        prepared = prepare(config, tokenizer=tokenizer, quiet=True, force=True)
    except DataError as exc:
        # the only refusals in drop mode: nothing usable to train on
        assert any(m in str(exc) for m in ("no row has a usable label", "no data rows", "no row of the train split is left"))
        assert not [r for r in rows if r[0].strip() and r[1].strip()] or "no data rows" not in str(exc)
        return
    report = prepared.report
    out = {s: read_split(f) for s, f in prepared.files.items()}
    written = sum(len(v) for v in out.values())
    assert report["rows_read"] == written + sum(report["removed"].values())
    assert report["rows_read"] == len(rows)  # blank rows are read and counted as removed (empty_row)
    seen = {}
    for split, part in out.items():
        for r in part:
            assert seen.setdefault(r["text"], split) == split
    per_class = Counter(r["label"] for part in out.values() for r in part)
    for split, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        counts = Counter(r["label"] for r in out[split])
        for label, total in per_class.items():
            assert abs(counts[label] - total * share) <= 1, (split, label, counts[label], total)
