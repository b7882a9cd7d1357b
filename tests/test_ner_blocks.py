"""Token-classification building blocks: readers, tag schemes, sub-word windows, spans and metrics."""

import json
import random

import numpy as np
import pytest

from tunelab.errors import DataError
from tunelab.tasks.ner import align, formats, metrics, schemes, spans

TYPES = ["LOC", "MISC", "ORG", "PER"]


def random_iob2(rng: random.Random, n: int, valid: bool = True) -> list[str]:
    """A random IOB2 sequence (valid, or with stray I- tags when valid=False)."""
    tags, prev = [], "O"
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            tag = "O"
        elif r < 0.7 or (valid and prev == "O"):
            tag = f"B-{rng.choice(TYPES)}"
        elif valid:
            tag = f"I-{prev[2:]}"
        else:
            tag = f"I-{rng.choice(TYPES)}"
        tags.append(tag)
        prev = tag
    return tags


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


# ------------------------------------------------------------------ formats

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter B-PER
Blackburn\tI-PER
-DOCSTART- -X- O
BRUSSELS B-LOC
"""


def test_read_conll_columns_docstart_lines_and_offsets(write):
    s = formats.read_conll(write("train.txt", CONLL))
    assert s.tokens == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert s.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert s.where == [3, 8, 11]  # the line of each sentence's first token, as an editor numbers it
    assert s.text[0] == "EU rejects German" and s.offsets[0] == [(0, 2), (3, 10), (11, 17)]
    assert s.problems == [] and len(s) == 3
    assert s.line_of(1, 1) == 9
    picked = s.take([2, 0])
    assert picked.tokens == [["BRUSSELS"], ["EU", "rejects", "German"]] and picked.where == [11, 3]
    assert picked.tags == [["B-LOC"], ["B-ORG", "O", "B-MISC"]] and picked.text[1] == "EU rejects German"


def test_read_conll_line_without_tag_drops_its_sentence_with_one_problem(write):
    s = formats.read_conll(write("a.conll", "Ann B-PER\nsaid\nhi\n\nBob B-PER\n"))
    assert s.tokens == [["Bob"]] and s.where == [5]
    [p] = s.problems
    assert (p.where, p.reason, p.unit) == (2, "missing_tag", "line")
    assert "'said'" in p.message and "1 more such line" in p.message
    assert str(p).startswith(f"{s.file}:line 2")


def test_read_conll_unlabelled_takes_one_token_per_line(write):
    path = write("a.txt", "Ann\nsaid\u00a0hi\n\nBob\n")
    with pytest.raises(DataError, match="a.txt: no line has a tag.*unlabelled"):
        formats.read_conll(path)
    s = formats.read_conll(path, labelled=False)
    assert s.tags is None and s.problems == []
    assert s.tokens == [["Ann", "said\u00a0hi"], ["Bob"]]  # only ASCII spaces and tabs separate columns
    assert s.take([1]).tags is None


def test_read_conll_undecodable_bytes_named_by_line(write):
    path = write("a.txt", b"Ann B-PER\n\nZ\xfcrich B-LOC\nis O\n\nBob B-PER\n")
    s = formats.read_conll(path)
    assert s.tokens == [["Ann"], ["Bob"]]
    [p] = s.problems
    assert (p.where, p.reason) == (3, "invalid_unicode") and "utf-8" in p.message
    assert formats.read_conll(path, encoding="latin-1").tokens[1] == ["Z\u00fcrich", "is"]


def test_read_conll_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        formats.read_conll(tmp_path / "none.txt")


def test_read_token_jsonl_keeps_good_lines_and_names_each_bad_one(write):
    path = write("a.jsonl", jsonl(
        {"tokens": ["Ann", "sings"], "tags": ["B-PER", "O"]},
        "",
        {"tokens": ["Ann", ""], "tags": ["B-PER", "O"]},
        {"tokens": ["Ann"], "tags": ["B-PER", "O"]},
        {"tokens": ["Ann"]},
        "{bad json",
        [1, 2],
        {"tokens": [], "tags": []},
        {"tokens": ["Bo"], "tags": [None]},
        {"tokens": "Ann", "tags": ["O"]},
        {"tokens": ["Bob"], "tags": ["B-PER"]},
    ))
    s = formats.read_token_jsonl(path)
    assert s.tokens == [["Ann", "sings"], ["Bob"]] and s.where == [1, 11] and s.tags == [["B-PER", "O"], ["B-PER"]]
    got = [(p.where, p.column, p.reason) for p in s.problems]
    assert got == [(3, "tokens", "bad_tokens"), (4, "tags", "length_mismatch"), (5, "tags", "missing_field"),
                   (6, None, "malformed"), (7, None, "malformed"), (8, "tokens", "empty_sentence"),
                   (9, "tags", "bad_tags"), (10, "tokens", "bad_tokens")]
    assert "tokens[1] must be a non-empty string, got ''" in s.problems[0].message
    assert "2 tags for 1 tokens" in s.problems[1].message
    unlabelled = formats.read_token_jsonl(path, tags_key=None)
    assert unlabelled.tags is None and len(unlabelled) == 5  # lines 1, 4, 5, 9, 11


def test_read_token_jsonl_key_no_record_has_is_a_data_error(write):
    with pytest.raises(DataError, match="no record has the field 'labels'.*'tokens', 'tags'"):
        formats.read_token_jsonl(write("a.jsonl", jsonl({"tokens": ["a"], "tags": ["O"]})), tags_key="labels")


def test_read_entity_jsonl_tags_words_and_keeps_original_offsets(write):
    text = "Ann  Lee-Smith visited New York's port."
    path = write("a.jsonl", jsonl({"text": text, "entities": [
        {"start": 0, "end": 14, "label": "PER"}, {"start": 23, "end": 33, "type": "LOC"}]}))
    s = formats.read_entity_jsonl(path)
    assert s.problems == []
    assert s.tokens == [["Ann", "Lee-Smith", "visited", "New", "York's", "port", "."]]
    assert s.tags == [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O"]]
    assert s.text == [text] and [text[a:b] for a, b in s.offsets[0]] == s.tokens[0]
    shown = spans.char_entities(text, s.offsets[0], spans.entities(s.tags[0]))
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in shown] == [
        (0, 14, "PER", "Ann  Lee-Smith"), (23, 33, "LOC", "New York's")]


@pytest.mark.parametrize("entity, expected", [
    ({"start": 0, "end": 2, "label": "PER"}, "entities[1] (0-2 'PER'): ends inside the word at 0-3"),
    ({"start": 4, "end": 12, "label": "PER"}, "entities[1] (4-12 'PER') overlaps entities[0] (4-7)"),
    ({"start": 9, "end": 9, "label": "PER"}, "entities[1] (9-9 'PER'): start must be before end"),
    ({"start": 9, "end": 99, "label": "PER"}, "offsets must lie within the text (0-17)"),
    ({"start": 3, "end": 4, "label": "PER"}, "entities[1] (3-4 'PER'): covers no word"),
    ({"start": 0, "end": 3, "label": 5}, "entities[1]: 'label' must be a non-empty string"),
    ({"start": "0", "end": 3, "label": "PER"}, "entities[1]: 'start' must be an integer"),
])
def test_read_entity_jsonl_bad_entity_is_a_problem_naming_line_and_index(write, entity, expected):
    good = {"text": "Ann Lee", "entities": []}
    bad = {"text": "Ann Lee met Zoe .", "entities": [{"start": 4, "end": 7, "label": "PER"}, entity]}
    s = formats.read_entity_jsonl(write("a.jsonl", jsonl(good, bad)))
    assert s.tokens == [["Ann", "Lee"]] and s.tags == [["O", "O"]]
    [p] = s.problems
    assert (p.where, p.column, p.reason) == (2, "entities", "bad_entities")
    assert expected in p.message


def test_read_entity_jsonl_text_problems(write):
    s = formats.read_entity_jsonl(write("a.jsonl", jsonl(
        {"entities": []}, {"text": 5, "entities": []}, {"text": " \t", "entities": []}, {"text": "Hi", "entities": {}},
        {"text": "Hi"})), entities_key=None)
    assert s.tokens == [["Hi"], ["Hi"]] and s.tags is None and s.where == [4, 5]
    assert [(p.where, p.column, p.reason) for p in s.problems] == [
        (1, "text", "missing_field"), (2, "text", "bad_text"), (3, "text", "empty_text")]
    labelled = formats.read_entity_jsonl(write("b.jsonl", jsonl({"text": "Hi", "entities": {}}, {"text": "Hi"})))
    assert [(p.where, p.column, p.reason) for p in labelled.problems] == [
        (1, "entities", "bad_entities"), (2, "entities", "missing_field")]


def test_detect_format_by_extension_and_first_record(write):
    assert formats.detect_format(write("a.iob", "x O\n")) == "conll"
    assert formats.detect_format(write("a.jsonl", "\n" + jsonl({"tokens": ["a"], "tags": ["O"]}))) == "token_jsonl"
    assert formats.detect_format(write("b.json", jsonl({"text": "a", "entities": []}))) == "entity_jsonl"
    with pytest.raises(DataError, match=r"c.jsonl:line 1: cannot tell the NER format: the first record has 'words'"):
        formats.detect_format(write("c.jsonl", jsonl({"words": ["a"]})))
    with pytest.raises(DataError, match="JSON array"):
        formats.detect_format(write("d.json", '[{"tokens": ["a"]}]'))
    with pytest.raises(DataError, match="extension '.csv'"):
        formats.detect_format(write("e.csv", "a,b\n"))
    assert formats.read_sentences(write("f.jsonl", jsonl({"text": "Hi Bo", "entities": []}))).tokens == [["Hi", "Bo"]]


# ------------------------------------------------------------------ schemes

@pytest.mark.parametrize("tags, scheme, expected", [
    (["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"], "IOB2", None),
    (["O", "I-PER"], "IOB2", (1, "I-PER after O is not valid IOB2")),
    (["B-LOC", "I-PER"], "BIO", (1, "I-PER after B-LOC is not valid IOB2")),
    (["I-PER"], "IOB2", (0, "I-PER at the start of the sentence is not valid IOB2")),
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1", None),
    (["O", "B-PER"], "IOB1", (1, "B-PER after O is not valid IOB1")),
    (["I-LOC", "B-PER"], "IOB1", (1, "B-PER after I-LOC is not valid IOB1")),
    (["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"], "IOBES", None),
    (["B-PER", "O"], "IOBES", (1, "O after B-PER is not valid IOBES (B-PER must be followed by I-PER or E-PER)")),
    (["B-PER", "E-LOC"], "IOBES", (1, "E-LOC after B-PER is not valid IOBES")),
    (["O", "E-PER"], "IOBES", (1, "E-PER after O is not valid IOBES")),
    (["B-PER", "I-PER"], "IOBES", (1, "the sentence ends inside an entity at I-PER")),
    (["U-PER", "B-LOC", "L-LOC"], "BILOU", None),
    (["B-LOC", "E-LOC"], "BILOU", (1, "'E-LOC' is not a BILOU tag")),
    (["O", "PER"], "IOB2", (1, "'PER' is not a IOB2 tag")),
    (["O-PER"], "IOB2", (0, "'O-PER' is not a IOB2 tag")),
    (["B-"], "IOB2", (0, "'B-' is not a IOB2 tag")),
])
def test_check_finds_the_first_invalid_tag(tags, scheme, expected):
    found = schemes.check(tags, scheme)
    if expected is None:
        assert found is None
    else:
        assert found[0] == expected[0] and expected[1] in found[1]


def test_check_unknown_scheme_names_the_allowed_ones():
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown tag scheme 'BIOES2'; allowed: IOB1, IOB2"):
        schemes.check(["O"], "BIOES2")


def test_detect_scheme():
    assert schemes.detect([["B-PER", "I-PER", "O"], ["B-LOC"]]) == "IOB2"
    assert schemes.detect([["I-PER", "I-PER", "O"], ["I-LOC", "B-LOC"]]) == "IOB1"
    assert schemes.detect([["B-PER", "E-PER"], ["O"]]) == "IOBES"
    assert schemes.detect([["U-PER"]]) == "BILOU"
    assert schemes.detect([["O"], ["O", "O"]]) == "IOB2"
    # IOB2 with one error is still IOB2: IOB1 would make every B- after O invalid
    assert schemes.detect([["B-PER", "O", "B-LOC"], ["O", "I-ORG"]]) == "IOB2"


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES", "BILOU"])
def test_conversions_round_trip_and_give_valid_sequences(scheme):
    rng = random.Random(scheme)
    for _ in range(300):
        iob2 = random_iob2(rng, rng.randint(0, 12))
        written = schemes.from_iob2(iob2, scheme)
        assert schemes.check(written, scheme) is None, (iob2, written)
        assert schemes.to_iob2(written, scheme) == iob2


def test_conversion_examples():
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG"]
    assert schemes.from_iob2(iob2, "IOB1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG"]
    assert schemes.from_iob2(iob2, "IOBES") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG"]
    assert schemes.from_iob2(iob2, "BILOU") == ["B-PER", "L-PER", "U-PER", "O", "U-LOC", "B-ORG", "I-ORG", "L-ORG"]
    with pytest.raises(ValueError, match="'PER' is not a IOB2 tag"):
        schemes.to_iob2(["PER"], "IOB2")


def test_entity_types_and_label_list():
    assert schemes.entity_types([["B-PER", "O"], ["S-LOC", "I-PER"], []]) == ["LOC", "PER"]
    assert schemes.iob2_labels(["LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_validate_sentences_one_problem_per_bad_sentence_at_the_token_line(write):
    text = "Ann I-PER\nLee I-PER\n\nin O\nNew I-LOC\nYork B-LOC\nCity B-ORG\n\nBob I-PER\n"  # IOB1; sentence 2 invalid
    s = formats.read_conll(write("a.txt", text))
    v = schemes.validate_sentences(s, "auto")
    assert v.scheme == "IOB1" and v.kept == [0, 2]
    assert v.tags == [["B-PER", "I-PER"], ["B-PER"]]
    [p] = v.problems
    assert (p.file, p.where, p.reason) == (s.file, 7, "invalid_tag_sequence")
    assert p.message == "'City': B-ORG after B-LOC is not valid IOB1 (B- only splits two adjacent ORG entities; start with I-ORG)"
    with pytest.raises(ValueError, match="without tags"):
        schemes.validate_sentences(formats.read_conll(write("u.txt", "Ann\n"), labelled=False))
    j = formats.read_token_jsonl(write("a.jsonl", jsonl({"tokens": ["a"], "tags": ["O"]},
                                                        {"tokens": ["x", "Bo"], "tags": ["O", "I-PER"]})))
    [p] = schemes.validate_sentences(j, "IOB2").problems
    assert (p.where, p.column) == (2, "tags") and p.message.startswith("tags[1] ('Bo'): I-PER after O is not valid IOB2")


# ------------------------------------------------------------------ spans

def test_entities_match_seqeval_strict_reading():
    from seqeval.scheme import IOB2, Entities

    rng = random.Random(1)
    seqs = [random_iob2(rng, rng.randint(0, 15), valid=False) for _ in range(300)]
    theirs = Entities(seqs, IOB2).entities
    for tags, expected in zip(seqs, theirs):
        assert [(s, e, t) for s, e, t, _ in spans.entities(tags)] == [(x.start, x.end, x.tag) for x in expected]


def test_entity_score_is_the_mean_of_its_words():
    got = spans.entities(["B-PER", "I-PER", "O", "B-LOC"], scores=[0.9, 0.5, 0.99, 0.8])
    assert [(s, e, t) for s, e, t, _ in got] == [(0, 2, "PER"), (3, 4, "LOC")]
    assert got[0][3] == pytest.approx(0.7) and got[1][3] == pytest.approx(0.8)
    assert spans.entities(["B-PER"])[0][3] is None


def test_tags_from_entities_on_word_spans():
    words = [(0, 3), (4, 7), (8, 11)]
    assert spans.tags_from_entities(words, 11, [(4, 11, "X"), (0, 3, "Y")]) == (["B-Y", "B-X", "I-X"], None)
    assert spans.tags_from_entities(words, 11, [(0, 11, "X"), (4, 7, "Y")])[1] == "entities[1] (4-7 'Y') overlaps entities[0] (0-11)"


# ------------------------------------------------------------------ align

def test_labels_on_first_sub_words(tokenizer):
    words = ["Gutenberg", "printed", "in", "Mainz"]
    [w] = align.encode_words(tokenizer, [words], [[3, 0, 0, 5]], max_length=32)
    pieces = tokenizer.tokenize("Gutenberg")
    assert len(pieces) >= 2
    assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
    assert w.word_ids[0] is None and w.word_ids[-1] is None
    assert w.word_ids[1:1 + len(pieces)] == [0] * len(pieces)
    assert tokenizer.convert_ids_to_tokens(w.input_ids[1:1 + len(pieces)]) == pieces
    expected = [align.IGNORE, 3] + [align.IGNORE] * (len(pieces) - 1)
    assert w.labels[:len(pieces) + 1] == expected
    labelled = [(w.word_ids[k], lab) for k, lab in enumerate(w.labels) if lab != align.IGNORE]
    assert labelled == [(0, 3), (1, 0), (2, 0), (3, 5)]
    assert (w.words, w.owned, w.truncated, w.unknown) == ((0, 4), (0, 4), 0, 0)
    assert align.encode_words(tokenizer, [words], None, max_length=32)[0].labels is None


def test_long_sentence_windows_round_trip_to_one_score_per_word(tokenizer):
    rng = random.Random(0)
    vocab = ["Gutenberg", "the", "printing", "press", "Mainz", "1450", "revolutionised", ",", "Europe", "."]
    long = [rng.choice(vocab) for _ in range(600)]
    batch = [["short", "one"], long, []]
    tag_ids = [[1, 2], list(range(600)), []]
    windows = align.encode_words(tokenizer, batch, tag_ids, max_length=128)
    mine = [w for w in windows if w.sentence == 1]
    assert len(mine) > 5 and all(len(w.input_ids) <= 128 for w in windows)
    assert [w.sentence for w in windows] == sorted(w.sentence for w in windows)
    # owned ranges tile the sentence; neighbours share context words
    assert [w.owned for w in mine] == [(a, b) for a, b in zip([0] + [w.owned[1] for w in mine[:-1]], [w.owned[1] for w in mine])]
    assert mine[0].owned[0] == 0 and mine[-1].owned[1] == 600
    assert all(a.words[1] > a.owned[1] > b.words[0] for a, b in zip(mine, mine[1:]))  # joined inside the overlap
    # every word labelled exactly once, on its first sub-word
    labelled = sorted(w.word_ids[k] for w in mine for k, lab in enumerate(w.labels) if lab != align.IGNORE)
    assert labelled == list(range(600))
    # scores that name their word (and sub-word position) come back one per word, in order
    scores = [np.array([[-1 if wid is None else wid, k] for k, wid in enumerate(w.word_ids)] + [[-7, -7]] * 3)
              for w in windows]
    joined = align.join_windows(windows, scores)
    assert len(joined) == 3 and joined[2].shape == (0, 2)
    assert joined[1][:, 0].tolist() == list(range(600))
    firsts = [w.word_ids.index(i) for w in mine for i in range(*w.owned)]
    assert joined[1][:, 1].tolist() == firsts
    assert joined[0][:, 0].tolist() == [0, 1]


def test_word_without_tokens_and_word_longer_than_a_window(tokenizer):
    huge = "x" * 40  # no spaces: "xxxx..." becomes many sub-words
    assert len(tokenizer.tokenize(huge)) > 10
    windows = align.encode_words(tokenizer, [["a", "\u200b", huge, "b"]], [[1, 2, 3, 4]], max_length=12)
    assert sum(w.unknown for w in windows) == 1 and sum(w.truncated for w in windows) == 1
    assert all(len(w.input_ids) <= 12 for w in windows)
    labelled = [(w.word_ids[k], w.input_ids[k], lab) for w in windows for k, lab in enumerate(w.labels) if lab != align.IGNORE]
    assert [(wid, lab) for wid, _, lab in labelled] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert labelled[1][1] == tokenizer.unk_token_id
    joined = align.join_windows(windows, [w.word_ids for w in windows])
    assert joined[0].tolist() == [0, 1, 2, 3]


def test_plan_windows_fit_progress_and_overlap():
    rng = random.Random(2)
    for _ in range(300):
        budget = rng.randint(4, 40)
        stride = rng.randint(0, budget - 1)
        lengths = [rng.randint(1, budget) for _ in range(rng.randint(0, 60))]
        plan = align.plan_windows(lengths, budget, stride)
        assert plan[0][0] == 0 and plan[-1][1] == len(lengths)
        for (s, e), (s2, e2) in zip(plan, plan[1:]):
            assert s < s2 <= e < e2  # each window starts later and reaches further
            assert sum(lengths[s2:e]) <= stride  # the shared context is at most `stride` tokens
        assert all(sum(lengths[s:e]) <= budget for s, e in plan)


def test_encode_words_rejects_a_stride_that_leaves_no_room(tokenizer):
    with pytest.raises(ValueError, match="need 0 <= stride < 14"):
        align.encode_words(tokenizer, [["a"]], None, max_length=16, stride=14)


# ------------------------------------------------------------------ metrics

def test_ner_metrics_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"], ["O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"], ["B-PER", "I-PER"]]
    m = metrics.ner_metrics(gold, pred, tokens=[["Ann", "Lee", "in", "Rome"], ["IBM", "."], ["with", "Bo"]])
    # gold: PER, LOC, ORG, PER; predicted: PER, ORG, ORG, PER(0-2); right: PER, ORG
    assert (m["examples"], m["entity_precision"], m["entity_recall"]) == (3, 0.5, 0.5)
    assert m["entity_f1"] == pytest.approx(0.5)
    assert m["token_accuracy"] == pytest.approx(5 / 8)  # wrong: Rome, with, Bo
    assert m["per_type"]["PER"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["per_type"]["LOC"]["support"] == 1 and m["per_type"]["LOC"]["f1"] == 0
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["confusion_labels"] == ["LOC", "ORG", "PER", "O"]
    assert m["confusion_matrix"] == [[0, 1, 0, 0],  # LOC predicted as ORG
                                     [0, 1, 0, 0],
                                     [0, 0, 1, 1],  # one PER found, one missed (wrong boundary) ...
                                     [0, 0, 1, 0]]  # ... and predicted with the wrong boundary
    assert [e["sentence"] for e in m["errors"]] == [0, 2]
    assert m["errors"][1]["predicted"] == [{"start": 0, "end": 2, "label": "PER", "text": "with Bo"}]
    assert metrics.ner_metrics(gold, pred, max_errors=1)["errors"][0]["tokens"] is None


def test_ner_metrics_micro_f1_and_true_positives_equal_seqeval():
    from seqeval.metrics import f1_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(3)
    gold = [random_iob2(rng, n) for n in (rng.randint(1, 20) for _ in range(200))]
    pred = [[t if rng.random() < 0.8 else rng.choice(["O", "B-PER", "I-PER", "I-LOC"]) for t in g] for g in gold]
    m = metrics.ner_metrics(gold, pred)
    assert m["entity_f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
    assert m["entity_recall"] == pytest.approx(recall_score(gold, pred, mode="strict", scheme=IOB2))
    found = {t: round(r["recall"] * r["support"]) for t, r in m["per_type"].items()}
    diagonal = {t: m["confusion_matrix"][k][k] for k, t in enumerate(m["confusion_labels"][:-1])}
    assert diagonal == found
    gold_row_sums = {t: sum(m["confusion_matrix"][k]) for k, t in enumerate(m["confusion_labels"][:-1])}
    assert gold_row_sums == {t: r["support"] for t, r in m["per_type"].items()}


def test_ner_metrics_other_scheme_and_no_entity():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC"]]
    as_iobes = metrics.ner_metrics([schemes.from_iob2(g, "IOBES") for g in gold],
                                   [schemes.from_iob2(p, "IOBES") for p in pred], scheme="IOBES")
    assert as_iobes == metrics.ner_metrics(gold, pred)
    empty = metrics.ner_metrics([["O", "O"]], [["O", "O"]])
    assert (empty["entity_f1"], empty["macro_f1"], empty["token_accuracy"], empty["per_type"]) == (0.0, 0.0, 1.0, {})
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        metrics.ner_metrics([["O", "O"]], [["O"]])
