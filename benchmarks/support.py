"""The customer-service assistant on its shipped example (examples/support/stackfaq.yaml): FAQ retrieval against BM25
and the untuned encoder, coverage at the hand-off threshold, out-of-scope hand-offs, answer latency.

Protocol. StackFAQ (../shared/data/stackfaq: 125 entries, 1,249 paraphrased questions) is split by question,
stratified by entry, as the app splits it (seed 42; per entry 70% train, 10% validation, 20% test: 874 / 125 / 250
questions), so every entry has training phrasings and unseen test phrasings. `tunelab app support build` fine-tunes
the default MiniLM on the training questions (3 epochs, in-batch negatives), exports it to ONNX int8, fits the
temperature and the hand-off threshold on validation (target precision 0.95) and builds the intent model
(examples/banking77.yaml, Banking77). Every retriever ranks all 125 entries for each test question, over two indexes:
the entries' own questions only, and those plus the training questions (the app's default) -- BM25 (bm25s, its
default Lucene variant, English stop words) and the untuned MiniLM on the same texts. Out of scope: 500 Banking77
test messages (a bank's customers asking a web-apps FAQ) should all be handed off. Latency: `tunelab serve --app`
(intent + retrieval + threshold, ONNX int8, monitor on), POST /v1/support/answer on loopback, one client
(p50 of 400 sequential requests over the test questions) and 32 concurrent clients (answers per second).

    .venv/bin/python benchmarks/support.py              # about 30 minutes on 2 cores (Banking77 training: 6, re-ranker: 12)
    .venv/bin/python benchmarks/support.py --fewshot    # the few-shot intents against SetFit: about 90 minutes
    .venv/bin/python benchmarks/support.py --reranker   # the re-ranker's figures only (the rest kept)
    .venv/bin/python benchmarks/support.py --latency    # the answer latency only, after a build reusing the models

Few-shot (--fewshot): 8 examples per Banking77 intent drawn from train (seeds 42, 43, 44; the same draw for both),
all 3,080 test messages. tunelab (fewshot.py): the default MiniLM fine-tuned for one epoch on pairs of examples of
the same intent (each with up to 8 partners, its intent's name among them) with in-batch negatives, batch 32,
then a logistic-regression head on the embeddings, every intent's name one more example. SetFit 1.2 with the
same base encoder: its paper's setting (20 pair iterations, one epoch, batch 16, CosineSimilarityLoss,
logistic-regression head), seed as drawn. Torch fp32 for both, max length 64.

Figures (results/support.json): stackfaq_recall_at_1, stackfaq_mrr_at_10, their BM25 and untuned counterparts
and stackfaq_recall_at_1_gain_vs_bm25_points (targets: recall@1 >= 0.90, gain >= 10 points),
stackfaq_coverage_at_95_precision (>= 0.80), banking77_test_accuracy, answer_c1_p50_ms (<= 20),
answer_c32_per_second, out_of_scope_handoff_rate; then the same app with the cross-encoder re-ranker
(`reranker: {}`: MiniLM pair classifier on each training question with its entry and its 3 hardest wrong entries,
re-ranking the retriever's best 5, blended with the retriever at the weight chosen on validation): the same figures
with the suffix _reranked, reranked_* and reranker_alone_* ranking figures over both indexes, and the answer
latency with the re-ranker used (weight 1; suffix _reranker_on); with --fewshot: banking77_8shot_accuracy,
banking77_8shot_accuracy_setfit, banking77_8shot_delta_vs_setfit_points (target >= +2).
"""

from __future__ import annotations

import asyncio
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import REPO, WORK, machine, need_data, read_results, start_server, stop_server, write_results

CONFIG = REPO / "examples" / "support" / "stackfaq.yaml"
TUNELAB = str(REPO / ".venv" / "bin" / "tunelab")


def bm25_scores(index_texts: list[str], entry_of: list[int], queries: list[str], entries: int) -> np.ndarray:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(index_texts, stopwords="en", show_progress=False), show_progress=False)
    docs, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=len(index_texts),
                                      show_progress=False)
    out = np.full((len(queries), entries), -1e9)
    for i in range(len(queries)):
        for d, s in zip(docs[i], scores[i]):
            out[i, entry_of[d]] = max(out[i, entry_of[d]], s)
    return out


def retrieval(config, faq, questions) -> dict:
    """Recall@1 and MRR@10 of BM25, the untuned MiniLM and the app's retriever, over both indexes."""
    from tunelab.apps.support.build import encoder_folder
    from tunelab.apps.support.matcher import build_index, ranking_metrics
    from tunelab.apps.encoder import Encoder
    from tunelab.hub import default_model_dir

    position = {e: i for i, e in enumerate(faq.ids)}
    queries = [t for t, _ in questions.test]
    targets = np.array([position[e] for _, e in questions.test])
    encoders = {"untuned": Encoder(default_model_dir(), 128), "tuned": Encoder(encoder_folder(config))}
    out = {}
    for index_name, phrasings in (("questions_only", []), ("with_training_questions", questions.train)):
        texts = list(faq.questions) + [t for t, _ in phrasings]
        entry_of = list(range(len(faq))) + [position[e] for _, e in phrasings]
        bm25 = ranking_metrics(bm25_scores(texts, entry_of, queries, len(faq)), targets)
        out.update({f"bm25_{index_name}_{k}": round(v, 4) for k, v in bm25.items()})
        for name, encoder in encoders.items():
            index = build_index(encoder, faq, phrasings)
            figures = ranking_metrics(index.scores(encoder.encode(queries)), targets)
            out.update({f"{name}_{index_name}_{k}": round(v, 4) for k, v in figures.items()})
    return out


def reranked(config, faq, questions) -> dict:
    """Recall@1 and MRR@10 over both indexes of the retriever's candidates ordered by the re-ranker alone
    (`reranker_alone_*`) and blended with the retriever at the weight the build chose (`reranked_*`)."""
    from tunelab.apps.support.build import encoder_folder
    from tunelab.apps.support.matcher import build_index, ranking_metrics
    from tunelab.apps.support.rerank import Reranker, blend, entry_texts, model_folder
    from tunelab.apps.encoder import Encoder

    position = {e: i for i, e in enumerate(faq.ids)}
    queries = [t for t, _ in questions.test]
    targets = np.array([position[e] for _, e in questions.test])
    fitted = json.loads((config.app_dir / "faq" / "calibration.json").read_text())["reranker"]
    encoder = Encoder(encoder_folder(config))
    reranker = Reranker(model_folder(config), fitted["candidates"],
                        entry_texts(faq.questions, faq.answers), fitted["weight"])
    out = {"reranker_weight": fitted["weight"]}
    for index_name, phrasings in (("questions_only", []), ("with_training_questions", questions.train)):
        scores = build_index(encoder, faq, phrasings).scores(encoder.encode(queries))
        best, odds = reranker.odds(queries, scores)
        for name, logits in (("reranker_alone", blend(scores, best, odds, 0.0, 1.0)),
                             ("reranked", blend(scores, best, odds, config.retriever.scale, fitted["weight"]))):
            figures = ranking_metrics(logits, targets)
            out.update({f"{name}_{index_name}_{k}": round(v, 4) for k, v in figures.items()})
    return out


def out_of_scope(config, messages: list[str]) -> dict:
    """Share of `messages` handed off, and the share the confidence threshold alone would have answered."""
    from tunelab.apps.support.serving import faq_model

    model = faq_model(config)
    out = model.infer(messages, None, False)
    results = model.decide(out.probs, None, out.contexts)
    threshold = json.loads((config.app_dir / "faq" / "calibration.json").read_text())["threshold"]
    return {"out_of_scope_handoff_rate": round(sum(r["handed_off"] for r in results) / len(results), 4),
            "out_of_scope_answered_without_floor": round(sum(r["score"] >= threshold for r in results) / len(results), 4)}


async def load(url: str, messages: list[str], clients: int, seconds: float = 20.0) -> tuple[list[float], int]:
    """`clients` concurrent clients posting messages in turn for `seconds` -> (latencies in ms, answers)."""
    import aiohttp

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(k: int, session):
        i = k
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(f"{url}/v1/support/answer", json={"message": messages[i % len(messages)]}) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append((time.perf_counter() - started) * 1000)
            i += clients
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    return latencies, len(latencies)


def latency(config_path: Path, messages: list[str]) -> dict:
    import httpx

    proc, url = start_server([TUNELAB, "serve", "--app", str(config_path), "--host", "127.0.0.1"], "/readyz")
    try:
        with httpx.Client() as client:
            for m in messages[:50]:  # warm-up
                client.post(f"{url}/v1/support/answer", json={"message": m})
            rounds = []
            for _ in range(3):  # interleaved with nothing else: the median of three rounds
                times = []
                for m in messages[:400]:
                    started = time.perf_counter()
                    assert client.post(f"{url}/v1/support/answer", json={"message": m}).status_code == 200
                    times.append((time.perf_counter() - started) * 1000)
                rounds.append(statistics.median(times))
        _, answers = asyncio.run(load(url, messages, 32, 20.0))
        return {"answer_c1_p50_ms": round(statistics.median(rounds), 2), "answer_c1_p50_ms_rounds": [round(r, 2) for r in rounds],
                "answer_c32_per_second": round(answers / 20.0, 1)}
    finally:
        stop_server(proc)


def draw(rows: list[dict], shots: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["text"])
    return [(by_label[label][i], label) for label in sorted(by_label)
            for i in sorted(rng.choice(len(by_label[label]), shots, replace=False))]


def tunelab_fewshot(examples, test_texts, seed: int) -> tuple[np.ndarray, float]:
    from tunelab.apps.support.config import RetrieverConfig
    from tunelab.apps.support.fewshot import contrastive_pairs, fit_head, head_examples
    from tunelab.apps.encoder import Encoder, train_encoder

    started = time.perf_counter()
    settings = RetrieverConfig(epochs=1, batch_size=32, max_length=64, seed=seed)
    folder = WORK / "fewshot" / f"seed{seed}"
    train_encoder("default", contrastive_pairs(examples, 8, seed), folder, settings, quiet=True, retrain=True)
    encoder = Encoder(folder, 64)
    texts, labels = head_examples(examples, {})
    head = fit_head(encoder.encode(texts), labels, seed=seed)
    seconds = time.perf_counter() - started
    return np.array(head.classes)[head.probabilities(encoder.encode(test_texts)).argmax(axis=1)], seconds


def setfit_fewshot(examples, test_texts, seed: int) -> tuple[np.ndarray, float]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from tunelab.hub import default_model_dir

    started = time.perf_counter()
    model = SetFitModel.from_pretrained(str(default_model_dir()))
    args = TrainingArguments(output_dir=str(WORK / "setfit"), batch_size=16, num_iterations=20, num_epochs=1, seed=seed,
                             max_length=64, save_strategy="no", show_progress_bar=False, report_to="none")
    data = Dataset.from_dict({"text": [t for t, _ in examples], "label": [label for _, label in examples]})
    Trainer(model=model, args=args, train_dataset=data).train()
    seconds = time.perf_counter() - started
    return np.asarray(model.predict(test_texts, batch_size=64)), seconds


def fewshot(shots: int = 8, seeds: tuple[int, ...] = (42, 43, 44)) -> dict:
    train = list(csv.DictReader(open(need_data("banking77", "train.csv"), encoding="utf-8")))
    test = list(csv.DictReader(open(need_data("banking77", "test.csv"), encoding="utf-8")))
    texts, truth = [r["text"] for r in test], np.array([r["label"] for r in test])
    ours, theirs, seconds = [], [], {"tunelab": [], "setfit": []}
    for seed in seeds:
        examples = draw(train, shots, seed)
        predicted, took = tunelab_fewshot(examples, texts, seed)
        ours.append(float((predicted == truth).mean()))
        seconds["tunelab"].append(took)
        predicted, took = setfit_fewshot(examples, texts, seed)
        theirs.append(float((predicted == truth).mean()))
        seconds["setfit"].append(took)
        print(f"seed {seed}: tunelab {ours[-1]:.4f} ({seconds['tunelab'][-1]:.0f} s), setfit {theirs[-1]:.4f} "
              f"({seconds['setfit'][-1]:.0f} s)", flush=True)
    return {"banking77_8shot_accuracy": round(float(np.mean(ours)), 4),
            "banking77_8shot_accuracy_setfit": round(float(np.mean(theirs)), 4),
            "banking77_8shot_delta_vs_setfit_points": round(100 * float(np.mean(ours) - np.mean(theirs)), 2),
            "banking77_8shot_draws": [round(a, 4) for a in ours], "banking77_8shot_draws_setfit": [round(a, 4) for a in theirs],
            "banking77_8shot_train_seconds": round(float(np.mean(seconds["tunelab"])), 1),
            "banking77_8shot_train_seconds_setfit": round(float(np.mean(seconds["setfit"])), 1)}


def main() -> None:
    if "--fewshot" in sys.argv:
        write_results("support", {**read_results("support"), **fewshot()})
        return
    from tunelab.apps.support.config import load_support_config
    from tunelab.apps.support.faq import read_faq, read_questions

    need_data("stackfaq", "all.csv")
    need_data("banking77", "test.csv")
    runs = WORK / "runs"
    config_path = WORK / "support.yaml"  # the shipped example, its runs under benchmarks/work
    WORK.mkdir(exist_ok=True)
    intents = WORK / "banking77.yaml"  # examples/banking77.yaml, its run under benchmarks/work
    intents.write_text((REPO / "examples" / "banking77.yaml").read_text() + f"runs_dir: {runs}\n")
    config_path.write_text(CONFIG.read_text().replace("runs_dir: ../../runs", f"runs_dir: {runs}")
                           .replace("intents: ../banking77.yaml", f"intents: {intents}"))
    config = load_support_config(config_path)
    c = config.columns
    faq = read_faq(config.faq, c.faq_id, c.question, c.answer)
    questions = read_questions(config.questions, faq, c.text, c.entry, {"train": 0.7, "validation": 0.1, "test": 0.2},
                               config.seed)
    banking = [r["text"] for r in csv.DictReader(open(need_data("banking77", "test.csv"), encoding="utf-8"))][:500]
    if "--latency" in sys.argv:  # the answer latency only, of the app as the trained models build it again
        subprocess.run([TUNELAB, "app", "support", "build", str(config_path)], check=True, cwd=REPO)
        write_results("support", {**read_results("support"), **latency(config_path, [t for t, _ in questions.test] * 2)})
        return
    if "--reranker" in sys.argv:  # the re-ranker's figures only, beside the others already measured
        kept = {k: v for k, v in read_results("support").items() if "rerank" not in k}
        write_results("support", {**kept, **with_reranker(config_path, faq, questions, banking)})
        return
    started = time.perf_counter()
    subprocess.run([TUNELAB, "app", "support", "build", str(config_path)], check=True, cwd=REPO)
    build_seconds = time.perf_counter() - started
    report = json.loads((config.app_dir / "report.json").read_text())
    figures = retrieval(config, faq, questions)
    test = report["test"]
    results = {
        "machine": machine(),
        "protocol": "StackFAQ split per entry 70/10/20 (seed 42); index: entry questions + training questions",
        "test_questions": report["questions"]["test"],
        "stackfaq_recall_at_1": test["recall_at_1"], "stackfaq_mrr_at_10": test["mrr_at_10"],
        "stackfaq_recall_at_1_bm25": figures["bm25_with_training_questions_recall_at_1"],
        "stackfaq_mrr_at_10_bm25": figures["bm25_with_training_questions_mrr_at_10"],
        "stackfaq_recall_at_1_untuned": figures["untuned_with_training_questions_recall_at_1"],
        "stackfaq_mrr_at_10_untuned": figures["untuned_with_training_questions_mrr_at_10"],
        "stackfaq_recall_at_1_gain_vs_bm25_points": round(100 * (test["recall_at_1"] - figures["bm25_with_training_questions_recall_at_1"]), 2),
        "stackfaq_coverage_at_95_precision": test["coverage"], "stackfaq_precision_at_threshold": test["precision"],
        "stackfaq_ece": round(test["ece"], 4), "stackfaq_ece_uncalibrated": round(test["ece_uncalibrated"], 4),
        **out_of_scope(config, banking),
        "banking77_test_accuracy": report["intent"]["test"]["accuracy"],
        "build_seconds": round(build_seconds, 1),
        **figures,
    }
    results.update(latency(config_path, [t for t, _ in questions.test] * 2))
    results.update(with_reranker(config_path, faq, questions, banking))
    keep = {k: v for k, v in read_results("support").items() if k.startswith("banking77_8shot")}  # --fewshot's
    write_results("support", {**results, **keep})


def with_reranker(config_path: Path, faq, questions, banking: list[str]) -> dict:
    """The same app with the cross-encoder re-ranker (the retriever reused, the re-ranker trained on its hard
    negatives): its figures, and the answer latency with the re-ranker used (weight 1, the trained one reused)."""
    from tunelab.apps.support.config import load_support_config

    plain = config_path.read_text().split("reranker:")[0]
    config_path.write_text(plain + "reranker:\n  candidates: 5\n")
    started = time.perf_counter()
    subprocess.run([TUNELAB, "app", "support", "build", str(config_path)], check=True, cwd=REPO)
    config = load_support_config(config_path)
    report = json.loads((config.app_dir / "report.json").read_text())
    test = report["test"]
    results = {
        "reranker_build_seconds": round(time.perf_counter() - started, 1),
        "reranker_candidates": config.reranker.candidates,
        "reranker_validation_mrr_at_10_by_weight": report["reranker_fit"]["validation_mrr_at_10"],
        "stackfaq_recall_at_1_reranked": test["recall_at_1"], "stackfaq_mrr_at_10_reranked": round(test["mrr_at_10"], 4),
        "stackfaq_coverage_at_95_precision_reranked": test["coverage"],
        "stackfaq_precision_at_threshold_reranked": test["precision"],
        "stackfaq_ece_reranked": round(test["ece"], 4),
        **reranked(config, faq, questions),
        **{f"{k}_reranked": v for k, v in out_of_scope(config, banking).items()},
    }
    config_path.write_text(plain + "reranker:\n  candidates: 5\n  weight: 1\n")
    subprocess.run([TUNELAB, "app", "support", "build", str(config_path)], check=True, cwd=REPO)
    results.update({f"{k}_reranker_on": v for k, v in latency(config_path, [t for t, _ in questions.test] * 2).items()})
    config_path.write_text(plain)
    return results


if __name__ == "__main__":
    sys.exit(main())
