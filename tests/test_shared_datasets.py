"""`tunelab prepare` on every classification set in shared/data: counts match that folder's README."""

import pytest

from tunelab.config import load_config
from tunelab.data import prepare

from conftest import REPO

pytestmark = pytest.mark.integration


def run(example, tmp_path, tokenizer, *overrides):
    config = load_config(REPO / "examples" / example, [f"runs_dir={tmp_path}", *overrides])
    if not config.data.train.exists():
        pytest.skip(f"shared dataset {config.data.train} is absent (set TUNELAB_DATA to the folder holding it)")
    return prepare(config, tokenizer=tokenizer, quiet=True).report


def read_counts(report):
    return {s: v["rows_read"] for s, v in report["splits"].items() if not v["source"].startswith("split")}


def test_sst2(tmp_path, tokenizer):
    r = run("sst2.yaml", tmp_path, tokenizer)
    assert read_counts(r) == {"train": 67349, "validation": 872, "test": 1821}
    # README: 371 texts occur twice in train, 5 of them with conflicting labels (both copies dropped);
    # 2 texts occur in both train and test (kept in test).
    assert r["removed"] == {"duplicate": 366, "conflicting_duplicate": 10, "in_other_split": 2}
    assert r["label_distribution"]["validation"] == {"0": 428, "1": 444}
    assert r["label_distribution"]["test"] == {"0": 912, "1": 909}


@pytest.mark.parametrize("level,total,counts,dups,conflicts", [
    ("allagree", 2264, {"negative": 303, "neutral": 1391, "positive": 570}, 5, 0),
    ("50agree", 4846, {"negative": 604, "neutral": 2879, "positive": 1363}, 6, 2),
])
def test_financial_phrasebank(tmp_path, tokenizer, level, total, counts, dups, conflicts):
    r = run(f"fpb_{level}.yaml", tmp_path, tokenizer)
    assert r["rows_read"] == total
    removed = {"duplicate": dups, **({"conflicting_duplicate": 2 * conflicts} if conflicts else {})}
    assert r["removed"] == removed
    written = {lab: sum(r["label_distribution"][s].get(lab, 0) for s in r["splits"]) for lab in counts}
    dropped_conflicts = {"neutral": conflicts, "positive": conflicts} if conflicts else {}
    assert all(written[lab] <= counts[lab] - dropped_conflicts.get(lab, 0) for lab in counts)
    assert sum(written.values()) == total - dups - 2 * conflicts
    train = sum(r["label_distribution"]["train"].values())
    assert abs(train / r["rows_written"] - 0.8) < 0.01  # stratified 80/10/10


def test_banking77(tmp_path, tokenizer):
    r = run("banking77.yaml", tmp_path, tokenizer)
    assert read_counts(r) == {"train": 10003, "test": 3080}
    assert len(r["labels"]) == 77 and "reverted_card_payment?" in r["labels"]
    assert set(r["label_distribution"]["test"].values()) == {40, 39}  # 40 each; one duplicate removed
    # README: 4 duplicates in train, 1 in test, 6 texts in both train and test. One more pair differs
    # only by a double space, which whitespace folding makes equal: 7 leave train.
    assert r["removed"] == {"duplicate": 5, "in_other_split": 7}
    exact = run("banking77.yaml", tmp_path / "exact", tokenizer, "data.fold_whitespace=false")
    assert exact["removed"] == {"duplicate": 5, "in_other_split": 6}


def test_stackfaq(tmp_path, tokenizer):
    r = run("stackfaq.yaml", tmp_path, tokenizer)
    assert r["rows_read"] == 1249 and len(r["labels"]) == 125 and r["removed"] == {}
    assert all(v in (8, 9, 7) for v in r["label_distribution"]["train"].values())


def test_conll2003(tmp_path, tokenizer):
    """Sentence counts are the official ones; the test split stays whole (entity counts as the README gives them);
    train loses its exact repeats and the sentences that are in the evaluation splits."""
    r = run("conll2003.yaml", tmp_path, tokenizer)
    assert {s: v["sentences_read"] for s, v in r["splits"].items()} == {"train": 14041, "validation": 3250, "test": 3453}
    assert r["tag_scheme"] == "IOB2" and r["entity_types"] == ["LOC", "MISC", "ORG", "PER"]
    assert r["splits"]["test"]["sentences"] == 3453
    assert r["splits"]["test"]["entities"] == {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}
    assert set(r["removed"]) == {"duplicate", "conflicting_duplicate", "in_other_split"}
