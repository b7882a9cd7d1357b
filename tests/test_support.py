"""The support app: FAQ and questions files, batches without duplicate entries, the index, the hand-off threshold,
and the whole app built (tiny BERT retriever and intent model: trained, exported to int8 ONNX, calibrated) and
served; one build with the real MiniLM on the demo FAQ."""

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from servers import Server, headless_page
from tunelab.apps.support.faq import read_faq, read_questions
from tunelab.apps.support.fewshot import IntentHead, contrastive_pairs, fit_head, head_examples
from tunelab.apps.support.matcher import FaqIndex, ranking_metrics, threshold_for_precision
from tunelab.apps.encoder import no_duplicate_batches
from tunelab.errors import ConfigError, DataError, TunelabError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SPLIT = {"train": 0.7, "validation": 0.1, "test": 0.2}


# ---------------------------------------------------------------- files and split


def test_demo_faq_and_questions_split_per_entry_without_leaks():
    faq = read_faq(EXAMPLE / "faq.csv", "faq_id", "question", "answer")
    q = read_questions(EXAMPLE / "questions.csv", faq, "text", "faq_id", SPLIT, 42)
    assert len(faq) == 12 and (len(q.train), len(q.validation), len(q.test)) == (48, 12, 12)
    for split in (q.validation, q.test):  # every entry has one unseen phrasing in each held-out split
        assert sorted(e for _, e in split) == sorted(faq.ids)
    texts = [{t for t, _ in s} for s in (q.train, q.validation, q.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert read_questions(EXAMPLE / "questions.csv", faq, "text", "faq_id", SPLIT, 42).test == q.test  # seeded


def test_later_rows_of_an_entry_are_extra_answers_and_thin_entries_are_trained_on(tmp_path):
    (tmp_path / "faq.csv").write_text("faq_id,question,answer\n1,Q one,A one\n1,Q one,second answer\n2,Q two,A two\n")
    faq = read_faq(tmp_path / "faq.csv", "faq_id", "question", "answer")
    assert faq.ids == ["1", "2"] and faq.answers == ["A one", "A two"] and faq.extra_answers == 1
    rows = "text,faq_id\n" + "".join(f"ask one {i},1\n" for i in range(10)) + "ask two,2\nagain two,2\n"
    (tmp_path / "q.csv").write_text(rows)
    q = read_questions(tmp_path / "q.csv", faq, "text", "faq_id", SPLIT, 0)
    assert q.train_only_entries == 1 and {e for _, e in q.validation + q.test} == {"1"}
    assert sum(e == "2" for _, e in q.train) == 2 and len(q.train) + len(q.validation) + len(q.test) == 12


@pytest.mark.parametrize("faq, questions, message", [
    ("faq_id,question,answer\n1,Q,A\n2,,B\n", None, "faq.csv:line 3: column 'question': text is empty"),
    ("faq_id,question\n1,Q\n2,R\n", None, "missing column 'answer'; the header has: 'faq_id', 'question' (set "
     "columns.faq_id / columns.question / columns.answer"),
    ("faq_id,question,answer\n1,Q,A\n", None, "1 FAQ entry; the assistant needs at least 2"),
    (None, "text,faq_id\nhello,1\nbye,7\n", "q.csv:line 3: column 'faq_id': no FAQ entry has the id '7' (the FAQ's ids: 1, 2)"),
    (None, "text,entry\nhello,1\n", "missing column 'faq_id'; the header has: 'text', 'entry' (set columns.text"),
])
def test_bad_files_are_named_with_line_and_column(tmp_path, faq, questions, message):
    (tmp_path / "faq.csv").write_text(faq or "faq_id,question,answer\n1,Q one,A\n2,Q two,B\n")
    with pytest.raises(DataError) as err:
        entries = read_faq(tmp_path / "faq.csv", "faq_id", "question", "answer")
        (tmp_path / "q.csv").write_text(questions)
        read_questions(tmp_path / "q.csv", entries, "text", "faq_id", SPLIT, 0)
    assert message in str(err.value)


# ---------------------------------------------------------------- batches, index, threshold


def test_batches_never_hold_two_questions_of_one_entry_and_cover_every_pair():
    groups = [i % 7 for i in range(100)] + [0] * 30  # entry 0 is frequent
    batches = no_duplicate_batches(groups, 16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(130))
    assert all(len({groups[i] for i in b}) == len(b) <= 16 for b in batches)
    assert batches == no_duplicate_batches(groups, 16, seed=3) != no_duplicate_batches(groups, 16, seed=4)


def test_index_scores_each_entry_by_its_best_vector():
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 3]]  # entry 0: e0, e1; entry 1: e2; entry 2: e3, e3
    index = FaqIndex(vectors, np.array([0, 2, 3]))
    queries = np.array([[0, 1, 0, 0], [0.6, 0, 0.8, 0]], dtype=np.float32)
    assert np.allclose(index.scores(queries), [[1, 0, 0], [0.6, 0.8, 0]])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    figures = ranking_metrics(probs, np.array([0, 1, 2]))
    assert figures["recall_at_1"] == pytest.approx(1 / 3) and figures["mrr_at_10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_faiss_graph_finds_the_exact_best_entry_and_can_only_lower_confidence(tmp_path):
    from tunelab.apps.support.config import RetrieverConfig
    from tunelab.apps.support.matcher import choose_search, softmax

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = FaqIndex(vectors, np.arange(0, 3000, 10))  # 300 entries of 10 vectors
    queries = vectors[rng.choice(3000, 200, replace=False)] + 0.3 * rng.standard_normal((200, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    graph = exact.with_graph(candidates=32)
    truth, approximate = exact.scores(queries), graph.scores(queries)
    assert (approximate.argmax(axis=1) == truth.argmax(axis=1)).mean() >= 0.98
    assert np.allclose(approximate.max(axis=1), truth.max(axis=1), atol=1e-5)  # the best entry's own cosine
    assert (softmax(20 * approximate).max(axis=1) <= softmax(20 * truth).max(axis=1) + 1e-6).all()
    graph.save(tmp_path)
    assert (tmp_path / "index.faiss").is_file() and np.allclose(FaqIndex.load(tmp_path).scores(queries), approximate)
    exact.save(tmp_path)  # an exact index leaves no stale graph behind
    assert not (tmp_path / "index.faiss").exists() and FaqIndex.load(tmp_path).graph is None
    auto = RetrieverConfig(exact_up_to=1000)
    assert [choose_search(auto, n) for n in (1000, 1001)] == ["exact", "faiss"]
    assert choose_search(RetrieverConfig(search="exact", exact_up_to=10), 10**6) == "exact"


def test_threshold_is_the_lowest_that_keeps_the_target_precision():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.8, 0.7, 0.5])
    correct = np.array([1, 1, 1, 0, 1, 1, 0], dtype=bool)
    assert threshold_for_precision(confidence, correct, 0.8) == {"threshold": 0.7, "coverage": 6 / 7, "precision": 5 / 6}
    # 0.8 would hold 4 of 5 right, but a threshold cannot split the two 0.8s and take only the wrong one's partner
    assert threshold_for_precision(confidence, correct, 0.95)["threshold"] == 0.9
    assert threshold_for_precision(confidence, ~correct, 0.95) == {"threshold": 1.000001, "coverage": 0.0, "precision": None}


# ---------------------------------------------------------------- few-shot intents


def test_contrastive_pairs_join_examples_of_one_intent_and_its_description():
    examples = [(f"lost card {i}", "lost_card") for i in range(4)] + [("refund me", "refund"), ("money back", "refund")]
    pairs = contrastive_pairs(examples, partners=3, seed=0)
    by_text = {t: label for t, label in examples} | {"lost card": "lost_card", "refund": "refund"}
    assert all(by_text[a] == by_text[b] == label and a != b for a, b, label in pairs)
    assert len(pairs) == 4 * 3 + 2 * 2  # up to `partners` each: the refund examples have two partners only
    assert ("refund me", "refund", "refund") in pairs  # the description ("refund": the name in words) is a partner
    described = contrastive_pairs(examples, partners=3, seed=0, descriptions={"refund": "asks for money back"})
    assert ("refund me", "asks for money back", "refund") in described and ("refund me", "refund", "refund") not in described


def test_head_fits_examples_and_descriptions_and_round_trips_as_json(tmp_path):
    rng = np.random.default_rng(0)
    centres = {"a": np.eye(8)[0], "b": np.eye(8)[1], "c": np.eye(8)[2]}
    texts, labels = head_examples([("x1", "a"), ("x2", "a"), ("y1", "b")], {"c": "about c"})
    assert texts == ["x1", "x2", "y1", "a", "b", "about c"] and labels == ["a", "a", "b", "a", "b", "c"]
    vectors = np.stack([centres[label] + 0.05 * rng.standard_normal(8) for label in labels]).astype(np.float32)
    head = fit_head(vectors, labels, c=10.0)
    assert head.classes == ["a", "b", "c"]
    probs = head.probabilities(np.stack(list(centres.values())).astype(np.float32))
    assert list(probs.argmax(axis=1)) == [0, 1, 2]  # "c" known from its description alone (zero-shot)
    head.save(tmp_path)
    assert json.loads((tmp_path / "intent_head.json").read_text())["classes"] == ["a", "b", "c"]
    assert np.allclose(IntentHead.load(tmp_path).probabilities(vectors), head.probabilities(vectors))
    two = fit_head(vectors[:5], labels[:5], c=10.0)  # two intents: scikit-learn's single logit, as two rows
    assert two.classes == ["a", "b"] and list(two.probabilities(vectors[:5]).argmax(axis=1)) == [0, 0, 1, 0, 1]


def test_few_shot_intents_build_and_a_new_intent_needs_no_encoder_training(tmp_path, tiny_model_dir):
    from tunelab.apps.support.build import build, init
    from tunelab.apps.support.config import load_support_config
    from tunelab.apps.support.serving import app_models

    from conftest import write_csv

    rows = [(f"my card {w} {i}", "card") for i, w in enumerate("lost stolen gone missing".split())]
    rows += [(f"refund {w} {i}", "refund") for i, w in enumerate("now please money back".split())]
    examples = write_csv(tmp_path / "examples.csv", rows)
    path = init(tmp_path / "app", EXAMPLE / "faq.csv", EXAMPLE / "questions.csv")
    path.write_text(path.read_text().replace("epochs: 3", f"epochs: 1\n  model: {tiny_model_dir}")
                    + f"intent_examples: {examples}\nfew_shot:\n  model: {tiny_model_dir}\n  batch_size: 4\n")
    config = load_support_config(path)
    first = build(config, quiet=True)["intent"]
    assert first["intents"] == 2 and first["examples"] == 8 and first["zero_shot"] == [] and "training" in first
    weights = config.app_dir / "intent-encoder" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    write_csv(tmp_path / "examples.csv", rows + [("where is my parcel", "delivery"), ("parcel late", "delivery")])
    (tmp_path / "descriptions.csv").write_text("label,description\nopening_hours,when is the shop open\n")
    path.write_text(path.read_text() + f"intent_descriptions: {tmp_path / 'descriptions.csv'}\n")
    again = build(load_support_config(path), quiet=True)["intent"]
    assert weights.stat().st_mtime_ns == before and "training" not in again  # only the head was refitted
    assert again["intents"] == 4 and again["zero_shot"] == ["opening_hours"]
    assert again["added_since_encoder_training"] == ["delivery", "opening_hours"]
    model = app_models(load_support_config(path))["support-intent"]
    out = model.infer(["my card is lost", "when do you open"], None, False)
    assert out.probs.shape == (2, 4) and np.allclose(out.probs.sum(axis=1), 1, atol=1e-5)
    assert model.decide(out.probs)[0]["label"] in {"card", "refund", "delivery", "opening_hours"}


# ---------------------------------------------------------------- the app, built and served


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    """The demo FAQ with a tiny-BERT retriever and a tiny intent model, built once (init + build)."""
    from tunelab.apps.support.build import build, init
    from tunelab.apps.support.config import load_support_config

    from conftest import sentiment_rows, write_csv

    folder = tmp_path_factory.mktemp("support")
    intents = write_csv(folder / "intents.csv", sentiment_rows(300))  # two "intents" a tiny model learns
    path = init(folder / "app", EXAMPLE / "faq.csv", EXAMPLE / "questions.csv", intents)
    run = folder / "app" / "intents.yaml"
    run.write_text(run.read_text().replace("name: default", f"name: {tiny_model_dir}").replace("max_length: 64", "max_length: 32")
                   + "train:\n  learning_rate: 0.003\n  batch_size: 16\n  max_steps: 200\n  eval_every: 200\n"
                   "  trackers: []\n  precision: fp32\n")
    path.write_text(path.read_text().replace("epochs: 3", f"epochs: 2\n  model: {tiny_model_dir}\n  learning_rate: 0.001"))
    config = load_support_config(path)
    return path, config, build(config, quiet=True)


def test_build_trains_exports_calibrates_and_reports(built):
    path, config, report = built
    assert report["faq_entries"] == 12 and report["questions"] == {"train": 48, "validation": 12, "test": 12}
    assert report["index_vectors"] == 12 + 48  # each entry's question and its training phrasings
    assert report["retriever_export"]["quantize"] == "int8" and report["retriever_export"]["min_cosine"] >= 0.98
    assert report["intent"]["export"].endswith("onnx-int8")
    validation = report["validation"]
    assert validation["answered"] + validation["handed_off"] == 12
    assert validation["precision"] is None or validation["precision"] >= 0.95  # what the threshold was chosen for
    calibration = json.loads((config.app_dir / "faq" / "calibration.json").read_text())
    assert calibration["threshold"] == report["threshold"] and calibration["temperature"] == pytest.approx(report["temperature"], abs=1e-4)
    assert "## FAQ matching, test" in (config.app_dir / "report.md").read_text()


def test_build_again_reuses_the_retriever_and_redoes_the_index(built):
    from tunelab.apps.support.build import build

    path, config, report = built
    weights = config.app_dir / "retriever" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = build(config, quiet=True)
    assert weights.stat().st_mtime_ns == before and "retriever_training" not in again
    assert again["threshold"] == report["threshold"]
    reseeded = build(config.model_copy(update={"seed": 7}), quiet=True)  # another split: it may have trained on
    assert reseeded["retriever_training"]["steps"] > 0  # today's test questions, so it is trained again
    build(config, quiet=True)  # and back, for the tests after this one


def test_interrupted_retriever_training_resumes_from_its_last_epoch(built, tmp_path, monkeypatch):
    from tunelab.apps import encoder
    from tunelab.errors import Interrupted
    from tunelab.signals import Stopped

    path, config, _ = built
    pairs = [(f"question {i} about {e}", f"entry {e}", str(e)) for i in range(8) for e in range(4)]
    settings = config.retriever.model_copy(update={"epochs": 3, "batch_size": 4})
    saved = encoder._checkpoint
    calls = []

    def stop_after_first(*args):
        saved(*args)
        calls.append(args[3])
        raise Stopped(2)
    monkeypatch.setattr(encoder, "_checkpoint", stop_after_first)
    with pytest.raises(Interrupted, match="finished epochs are kept"):
        encoder.train_encoder(settings.model, pairs, tmp_path / "r", settings, quiet=True)
    assert calls == [1] and (tmp_path / "r.checkpoint" / "state.pt").is_file() and not (tmp_path / "r").exists()
    monkeypatch.setattr(encoder, "_checkpoint", lambda *args: (saved(*args), calls.append(args[3])))
    done = encoder.train_encoder(settings.model, pairs, tmp_path / "r", settings, quiet=True)
    assert calls == [1, 2, 3] and (tmp_path / "r" / "modules.json").is_file() and not (tmp_path / "r.checkpoint").exists()
    whole = encoder.train_encoder(settings.model, pairs, tmp_path / "whole", settings, quiet=True)
    assert whole["steps"] == done["steps"] == sum(len(no_duplicate_batches([p[2] for p in pairs], 4, 42 + e)) for e in range(3))
    from safetensors.numpy import load_file  # resumed = uninterrupted: same batches, optimizer, schedule, dropout

    resumed, uninterrupted = load_file(tmp_path / "r" / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert all(np.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in uninterrupted)


def _app(config, tmp_path, monitor=True):
    from tunelab.config import ServeConfig
    from tunelab.serve.app import create_app

    return create_app(settings=ServeConfig(monitor={"enabled": monitor, "database": f"sqlite:///{tmp_path / 'm.db'}"}),
                      app_config=config)


def test_served_answers_hand_off_log_and_take_feedback(built, tmp_path):
    from tunelab.apps.support.matcher import Matcher
    from tunelab.apps.encoder import Encoder

    path, config, report = built
    matcher = Matcher(Encoder(config.app_dir / "retriever-onnx-int8"), config.app_dir / "faq")
    with Server(_app(config, tmp_path)) as s:
        messages = ["I forgot my password", "do you deliver to Norway", "what's the weather on Mars"]
        answers = [httpx.post(f"{s.url}/v1/support/answer", json={"message": m, "conversation_id": "c-1"}).json()
                   for m in messages]
        for a in answers:
            assert set(a) >= {"id", "answer", "handed_off", "confidence", "sources", "intent", "faq_id"}
            assert a["handed_off"] == matcher.hands_off(a["confidence"], a["similarity"])
            assert (a["answer"] is None) == a["handed_off"] and len(a["sources"]) == config.top_k
            assert a["intent"]["label"] in {"positive", "negative"} and 0.5 <= a["intent"]["score"] <= 1
        shown = httpx.get(f"{s.url}/v1/support/conversations/c-1").json()["exchanges"]
        assert [e["message"] for e in shown] == messages and [e["id"] for e in shown] == [a["id"] for a in answers]
        assert httpx.get(f"{s.url}/v1/support/stats").json()["exchanges"] == 3
        fb = httpx.post(f"{s.url}/v1/feedback", json={"items": [{"id": answers[0]["id"], "label": "password"},
                                                                {"id": answers[1]["id"], "label": "shipping-abroad"}]})
        assert fb.status_code == 200 and fb.json()["accepted"] == 2
        logged = s.monitor.models["support-faq"]
        assert logged.task.labels == matcher.ids
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'tunelab_support_answers_total{outcome=' in metrics
        too_long = httpx.post(f"{s.url}/v1/support/answer", json={"message": "x" * 2001})
        assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "message_too_long"
        assert httpx.post(f"{s.url}/v1/support/answer", json={"message": "  "}).status_code == 422
        assert httpx.get(f"{s.url}/v1/support/conversations/nope").status_code == 404


def test_generated_answers_are_written_from_the_best_entries_and_logged(built, tmp_path, tiny_llama_dir):
    """With a generator (a tiny Llama run), an answer is generated from the best entries, which come back marked
    as used; the prompt holds their answers; the generation is logged; generate: false gives the entry's answer."""
    import yaml

    from tunelab.apps.support.build import build
    from tunelab.apps.support.config import load_support_config

    from conftest import conversations, write_jsonl

    path, _, _ = built
    files = {s: str(write_jsonl(tmp_path / f"{s}.jsonl", conversations(n, seed))) for s, n, seed in
             (("train", 64, 0), ("validation", 8, 1), ("test", 4, 2))}
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump({
        "name": "answers", "runs_dir": str(tmp_path / "runs"), "task": {"name": "causal_lm"}, "data": files,
        "model": {"name": str(tiny_llama_dir), "max_length": 64}, "evaluate": {"generate_examples": 4, "max_new_tokens": 4},
        "train": {"batch_size": 16, "max_steps": 4, "eval_every": 4, "trackers": [], "precision": "fp32"}}))
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("intents:"))
    rag = path.parent / "rag.yaml"  # everything answered: a tiny model's threshold would hand off at random
    rag.write_text(text.replace("name: support", "name: support-rag").replace("target_precision: 0.95", "target_precision: 0.01")
                   + f"\nout_of_scope_quantile: 0\ngenerator: {tmp_path / 'llm.yaml'}\ngeneration:\n  max_tokens: 6\n  sources: 2\n")
    config = load_support_config(rag)
    report = build(config, quiet=True)
    assert report["generator"]["steps"] == 4 and "rouge_l" in report["generator"]["test"]
    assert "## Generated answers" in (config.app_dir / "report.md").read_text()
    with Server(_app(config, tmp_path)) as s:
        message = "I forgot my password"
        a = httpx.post(f"{s.url}/v1/support/answer", json={"message": message, "conversation_id": "g"}).json()
        assert not a["handed_off"] and a["generated"] and isinstance(a["answer"], str)
        used = [x["used"] for x in a["sources"]]  # the best first, as many as fit the tiny model's 128 tokens
        assert used[0] and not used[2] and used == sorted(used, reverse=True)
        logged = s.monitor.live["support-llm"].generated[-1]
        faq = json.loads((config.app_dir / "faq" / "faq.json").read_text())
        answer_of = dict(zip(faq["ids"], faq["answers"]))
        assert logged["completion"] == a["answer"] and message in logged["prompt"]
        assert [answer_of[x["faq_id"]] in logged["prompt"] for x in a["sources"]] == used
        plain = httpx.post(f"{s.url}/v1/support/answer", json={"message": message, "generate": False}).json()
        assert not plain["generated"] and plain["answer"] == answer_of[plain["faq_id"]]
        shown = httpx.get(f"{s.url}/v1/support/conversations/g").json()["exchanges"]
        assert shown[0]["answer"] == a["answer"] and shown[0]["generated"] is True


def test_hard_negatives_are_the_retrievers_best_wrong_entries():
    from tunelab.apps.support.rerank import MATCH, OTHER, hard_negative_pairs

    scores = np.array([[0.9, 0.8, 0.1, 0.7], [0.2, 0.3, 0.95, 0.1]])
    pairs = hard_negative_pairs([("q0", "b"), ("q1", "c")], scores, {"a": 0, "b": 1, "c": 2, "d": 3},
                                ["A", "B", "C", "D"], 2)
    assert pairs == [("q0", "B", MATCH), ("q0", "A", OTHER), ("q0", "D", OTHER),  # b itself ranked second: skipped
                     ("q1", "C", MATCH), ("q1", "B", OTHER), ("q1", "A", OTHER)]


def test_reranked_logits_blend_the_candidates_and_keep_the_rest_below_in_retriever_order():
    from tunelab.apps.support.matcher import ranking_metrics, softmax
    from tunelab.apps.support.rerank import Reranker, blend, choose_weight

    class Pairs:  # a pair classifier that believes entry "E2" answers every question
        labels = ["match", "other"]

        def probabilities(self, texts, pairs):
            return np.array([[0.9, 0.1] if p == "E2" else [0.2, 0.8] for p in pairs])

    reranker = Reranker.__new__(Reranker)
    reranker.predictor, reranker.match, reranker.candidates = Pairs(), 0, 3
    reranker.entries = [f"E{i}" for i in range(6)]
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.2, 0.3, 0.9, 0.8, 0.7]])
    best, odds = reranker.odds(["q0", "q1"], scores)
    assert best.tolist() == [[0, 1, 2], [3, 4, 5]] and odds[0].tolist() == pytest.approx([np.log(0.25)] * 2 + [np.log(9)])
    alone = blend(scores, best, odds, 0.0, 1.0)  # the re-ranker alone
    assert alone[0].argmax() == 2 and alone[1, 2] < alone[1, 5] - 100  # E2 not among q1's candidates: far below
    assert list(np.argsort(-alone[1], kind="stable")) == [3, 4, 5, 2, 1, 0]  # below the candidates: retriever order
    probs = softmax(alone)
    assert probs[0, 2] == pytest.approx(9 / (9 + 0.25 + 0.25)) and probs[0, 3:].sum() < 1e-12
    assert ranking_metrics(probs, np.array([2, 2])) == {"recall_at_1": 0.5, "recall_at_3": 0.5, "recall_at_10": 1.0,
                                                         "mrr_at_10": pytest.approx((1 + 1 / 4) / 2)}
    retriever = blend(scores, best, odds, 20.0, 0.0)
    assert (retriever[0, :3] == 20 * scores[0, :3]).all()  # weight 0: the retriever's own logits
    assert choose_weight(scores, best, odds, 20.0, np.array([2, 3]))["weight"] > 0  # E2 right for q0: the re-ranker helps
    fit = choose_weight(scores, best, odds, 20.0, np.array([0, 3]))  # the retriever was right: it only hurts
    assert fit["weight"] == 0 and fit["validation_mrr_at_10"]["0.0"] == 1.0
    assert choose_weight(scores, best, odds, 20.0, np.array([0, 3]), fixed=1.5)["weight"] == 1.5


def test_build_with_a_reranker_trains_it_on_hard_negatives_and_serves_its_confidence(tmp_path, tiny_model_dir):
    from tunelab.apps.support.build import build, init
    from tunelab.apps.support.config import load_support_config
    from tunelab.apps.support.serving import faq_model

    path = init(tmp_path / "app", EXAMPLE / "faq.csv", EXAMPLE / "questions.csv")
    path.write_text(path.read_text().replace("epochs: 3", f"epochs: 1\n  model: {tiny_model_dir}\n  learning_rate: 0.001")
                    + f"reranker:\n  model: {tiny_model_dir}\n  epochs: 1\n  max_length: 48\n  candidates: 4\n")
    config = load_support_config(path)
    report = build(config, quiet=True)
    with open(config.app_dir / "reranker-pairs" / "train.csv", encoding="utf-8") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    assert len(labels) == report["reranker"]["pairs"]["train"] == 48 * (1 + 3)  # each question: its entry, 3 wrong
    assert labels.count("match") == 48
    assert report["reranker"]["export_parity"]["quantize"] == "int8"
    fitted = json.loads((config.app_dir / "faq" / "calibration.json").read_text())["reranker"]
    assert fitted == {"candidates": 4, "weight": report["reranker_fit"]["weight"]}
    assert "re-ranked by a cross-encoder" in (config.app_dir / "report.md").read_text()
    weights = config.app_dir / "reranker" / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    used = config.model_copy(update={"reranker": config.reranker.model_copy(update={"weight": 2.0})})
    again = build(used, quiet=True)  # a fixed weight: the trained re-ranker is reused, the matcher fitted again
    assert weights.stat().st_mtime_ns == before and again["reranker_fit"]["weight"] == 2.0
    model = faq_model(used)
    assert model.info["task"] == "faq_retrieval"
    out = model.infer(["I forgot my password", "do you deliver to Norway"], None, False)
    assert ((out.probs > 1e-6).sum(axis=1) <= 4).all()  # probability only for the re-ranked candidates
    assert np.allclose(out.probs.sum(axis=1), 1, atol=1e-5)
    plain = config.model_copy(update={"reranker": None})
    with pytest.raises(TunelabError, match="built with a re-ranker and the config has none"):
        faq_model(plain)


def test_support_config_errors_are_one_line(tmp_path):
    from tunelab.apps import load_app_config
    from tunelab.apps.support.build import init

    path = init(tmp_path / "mine", EXAMPLE / "faq.csv", EXAMPLE / "questions.csv")
    assert load_app_config(path).faq == (EXAMPLE / "faq.csv").resolve()
    with pytest.raises(TunelabError, match="exists; edit it"):
        init(tmp_path / "mine", EXAMPLE / "faq.csv", EXAMPLE / "questions.csv")
    with pytest.raises(TunelabError, match="give both --faq and --questions"):
        init(tmp_path / "other", EXAMPLE / "faq.csv")
    path.write_text(path.read_text().replace("target_precision: 0.95", "target_precision: 1.5"))
    with pytest.raises(ConfigError, match="target_precision"):
        load_app_config(path)
    path.write_text(path.read_text().replace("target_precision: 1.5", "target_precison: 0.9"))
    with pytest.raises(ConfigError, match="target_precison: unknown key"):
        load_app_config(path)
    (tmp_path / "llm.yaml").write_text("name: x\n")
    path.write_text(path.read_text().replace("target_precison: 0.9", f"generator: {tmp_path / 'llm.yaml'}\n"
                                             "generation:\n  sources: 5"))
    with pytest.raises(ConfigError, match=r"generation.sources \(5\) is more than top_k \(3\)"):
        load_app_config(path)


def test_support_page_in_headless_chromium_answers_and_escapes(built, tmp_path):
    hostile = '<img src=x onerror="window.pwned=1">'
    with Server(_app(built[1], tmp_path, monitor=False)) as s:
        with headless_page(1000, 800) as page:
            page.goto(f"{s.url}/support")
            for message in ("I forgot my password", f"help {hostile}"):
                page.fill("#message", message)
                page.press("#message", "Enter")
                page.wait_for_function(f"document.querySelectorAll('.msg.bot').length === {1 + (message != 'I forgot my password')}")
            last = page.evaluate("() => window.tunelabSupport.last")
            assert page.inner_text(".msg.you >> nth=1") == f"help {hostile}" and page.evaluate("window.pwned") is None
            bot = page.inner_text(".msg.bot >> nth=1")
            assert ("passed your question to a colleague" in bot) == last["handed_off"]
            assert last["sources"][0]["question"] in bot
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "support.png"), full_page=True)


@pytest.mark.integration
def test_demo_build_with_minilm_answers_unseen_questions(tmp_path):
    """The README's example: the shipped demo config, the real MiniLM, every held-out question ranked."""
    from tunelab.apps.support.build import build
    from tunelab.apps.support.config import load_support_config

    folder = tmp_path / "support"
    shutil.copytree(EXAMPLE, folder)
    import csv

    questions = list(csv.DictReader(open(EXAMPLE / "questions.csv", encoding="utf-8")))  # as intents: 3 shots each
    seen: dict = {}
    shots, test = [], []
    for q in questions:
        seen[q["faq_id"]] = seen.get(q["faq_id"], 0) + 1
        (shots if seen[q["faq_id"]] <= 3 else test).append((q["text"], q["faq_id"]))
    from conftest import write_csv

    write_csv(tmp_path / "shots.csv", shots)
    write_csv(tmp_path / "intent_test.csv", test)
    config = load_support_config(folder / "support.yaml", [f"runs_dir={tmp_path / 'runs'}",
                                                           f"intent_examples={tmp_path / 'shots.csv'}",
                                                           f"intent_test={tmp_path / 'intent_test.csv'}"])
    report = build(config, quiet=True)
    assert report["test"]["recall_at_1"] >= 0.9 and report["test"]["recall_at_3"] == 1.0
    assert report["test"]["coverage"] >= 0.5 and report["test"]["precision"] >= 0.9
    assert report["intent"]["test"]["examples"] == 36 and report["intent"]["test"]["accuracy"] >= 0.8  # 12 intents, 3 shots
