"""`tunelab app support init DIR` and `build CONFIG`: a config for the user's own files; the retriever trained,
exported, indexed and calibrated, the hand-off threshold set, the optional intent model built, one report.

build is safe to run again: a trained retriever is reused (an interrupted training resumes), the index, the
calibration and the threshold are always redone (seconds), so an edited FAQ needs only a build; `retrain` starts
the trainings over.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError

FAQ, INTENT, LLM = "support-faq", "support-intent", "support-llm"  # the names the app's models are served under
MODELS = (FAQ, INTENT, LLM)
PARITY_TEXTS = 500


def command(config) -> str:
    return f"tunelab app support build {config.source}"


def init(folder: str | Path, faq: str | Path | None = None, questions: str | Path | None = None,
         intents: str | Path | None = None) -> Path:
    """Write folder/support.yaml for the user's FAQ and questions files (default: the shipped StackFAQ example)
    and, with `intents` (a CSV of labelled customer messages), folder/intents.yaml, a classification run.
    Refuses to overwrite an existing config."""
    import yaml

    from tunelab.apps.config import new_config

    folder = Path(folder)
    target = new_config(folder, "support.yaml", {"--faq": faq, "--questions": questions, "--intents": intents})
    if intents is not None:
        new_config(folder, "intents.yaml", {})
    if (faq is None) != (questions is None):
        raise TunelabError("give both --faq and --questions (or neither, for the StackFAQ example)")
    if faq is None:
        import os

        shared = Path(os.environ.get("TUNELAB_DATA", "../shared/data")).resolve() / "stackfaq"
        faq, questions = shared / "faq_pairs.csv", shared / "all.csv"
        if not faq.is_file():
            raise TunelabError(f"the StackFAQ example is not at {shared} (set TUNELAB_DATA); give your own files: "
                               "--faq FAQ.csv --questions QUESTIONS.csv")
    folder.mkdir(parents=True, exist_ok=True)
    config = {"app": "support", "name": "support", "runs_dir": "runs", "faq": str(Path(faq).resolve()),
              "questions": str(Path(questions).resolve())}
    with open(questions, encoding="utf-8", errors="replace") as f:
        header = f.readline().strip().split(",")
    if "faq_id" not in header and "label" in header:  # a classification file (text, label): the label is the entry
        config["columns"] = {"entry": "label"}
    if intents is not None:
        run = {"name": f"{folder.resolve().name}-intents", "runs_dir": str((folder / "runs").resolve()),
               "data": {"train": str(Path(intents).resolve()), "validation_fraction": 0.1, "test_fraction": 0.1,
                        "seed": 42},
               "model": {"name": "default", "max_length": 64}}
        (folder / "intents.yaml").write_text(
            "# The intent model: a tunelab classification run (every key: tunelab config schema).\n"
            + yaml.safe_dump(run, sort_keys=False), encoding="utf-8")
        config["intents"] = "intents.yaml"
    config.update(target_precision=0.95, retriever={"epochs": 3, "batch_size": 32})
    target.write_text("# tunelab app support: every key and its meaning in docs/apps/support.md\n"
                      + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


def encoder_folder(config, name: str = "retriever", training=None) -> Path:
    """The encoder the app runs for `name` (retriever, intent-encoder): its export for the backend, or the trained
    folder with backend torch, or the base encoder when it is not fine-tuned (epochs 0)."""
    training = training or config.retriever
    if not training.epochs and config.backend == "torch":
        from tunelab.hub import resolve_model

        return Path(resolve_model(training.model))
    suffix = "" if config.backend == "torch" else "-" + config.backend.removesuffix("-fp32")
    folder = config.app_dir / f"{name}{suffix}"
    if not folder.is_dir():
        raise TunelabError(f"{folder} is missing: build the app first ({command(config)})")
    return folder


def served_models(config) -> dict[str, Path]:
    """The tunelab model folders the app serves: the intent model and the answers' LLM, when configured."""
    from tunelab.apps.runs import model_folder

    folders = {}
    if config.intents is not None:
        folders[INTENT] = model_folder(config.intents, config.backend, command(config))
    if config.generator is not None:
        folders[LLM] = model_folder(config.generator, "torch", command(config))
    return folders


def build(config, retrain: bool = False, quiet: bool = False) -> dict:
    """Everything the app serves, from the config's files; writes app_dir/report.json and report.md."""
    from tunelab.apps.runs import build_run
    from tunelab.apps.support.faq import read_faq, read_questions
    from tunelab.apps.support.fewshot import build_fewshot
    from tunelab.apps.encoder import Encoder, train_encoder

    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    check_before_training(config)
    c = config.columns
    faq = read_faq(config.faq, c.faq_id, c.question, c.answer)  # bad files fail before any training
    train_fraction = 1 - config.validation_fraction - config.test_fraction
    questions = read_questions(config.questions, faq, c.text, c.entry, {"train": train_fraction, "validation":
                               config.validation_fraction, "test": config.test_fraction}, config.seed)
    if not questions.validation:
        raise TunelabError(f"{config.questions}: no entry has enough questions for one to be held out to set the "
                           f"hand-off threshold (validation_fraction {config.validation_fraction}); add questions, or "
                           "raise validation_fraction")
    app_dir = config.app_dir
    app_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"faq_entries": len(faq), "faq_extra_answers": faq.extra_answers,
                    "questions": {s: len(getattr(questions, s)) for s in ("train", "validation", "test")},
                    "train_only_entries": questions.train_only_entries, "target_precision": config.target_precision,
                    "backend": config.backend}

    def export(source: Path, name: str, texts: list[str], max_length: int, fresh: bool) -> Path:
        """The encoder at `source` as the backend runs it: app_dir/<name>-onnx[-int8] (exported when new), or itself."""
        from tunelab.apps.encoder import export_unless_current

        if config.backend == "torch":
            return source
        out = app_dir / f"{name}-{config.backend.removesuffix('-fp32')}"
        report[f"{name}_export"] = export_unless_current(source, out, "int8" if config.backend == "onnx-int8" else None,
                                                         texts, max_length, fresh or retrain,
                                                         lambda m: say(f"{name}: {m}"))
        return out

    if config.intents is not None:
        report["intent"] = build_run(config.intents, "intent", "classification", config.backend, retrain, quiet,
                                     command(config))
        report["intent"].pop("labels")
    elif config.intent_examples is not None:
        report["intent"] = build_fewshot(config, retrain, quiet, say, export)
    if config.generator is not None:
        report["generator"] = build_run(config.generator, "generator", "causal_lm", "torch", retrain, quiet,
                                        command(config))
        report["generator"].pop("labels")
    r = config.retriever
    question_of = dict(zip(faq.ids, faq.questions))
    fresh = False
    if r.epochs:
        trained = app_dir / "retriever"
        pairs = [(text, question_of[entry], entry) for text, entry in questions.train]
        recipe = _fingerprint(pairs, r)
        done = (trained / "modules.json").is_file()
        if done and not retrain and _read_fingerprint(trained) != recipe:  # a split or setting changed: held-out
            say("retriever: the training questions or settings changed since it was trained; training it again")
            retrain = True  # questions may be among what it was trained on
        if retrain or not done:
            say(f"retriever: fine-tuning {r.model} on {len(questions.train)} questions ({r.epochs} epochs)")
            report["retriever_training"] = train_encoder(r.model, pairs, trained, r, quiet, retrain, name="retriever")
            (trained / "trained_on.json").write_text(json.dumps({"sha256": recipe}))
            fresh = True
        source = trained
    else:
        from tunelab.hub import resolve_model

        source = Path(resolve_model(r.model))
    texts = ([t for t, _ in questions.validation] + faq.questions)[:PARITY_TEXTS]
    encoder = Encoder(export(source, "retriever", texts, r.max_length, fresh), r.max_length)
    index = make_index(config, encoder, faq, questions, say)
    reranker = None
    if config.reranker is not None:
        from tunelab.apps.support.rerank import Reranker, entry_texts, model_folder, train_reranker

        report["reranker"] = train_reranker(config, faq, lambda t: index.scores(encoder.encode(t)), questions,
                                            retrain, quiet, say)
        reranker = Reranker(model_folder(config), config.reranker.candidates,
                            entry_texts(faq.questions, faq.answers))
    report.update(fit_matcher(config, encoder, index, faq, questions, say, reranker))
    (app_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (app_dir / "report.md").write_text(_markdown(report, config), encoding="utf-8")
    return report


def _fingerprint(pairs: list[tuple[str, str, str]], settings) -> str:
    """What a retriever was trained on: its pairs and its training settings."""
    import hashlib

    return hashlib.sha256(json.dumps([pairs, settings.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()


def _read_fingerprint(folder: Path) -> str | None:
    path = folder / "trained_on.json"
    return json.loads(path.read_text())["sha256"] if path.is_file() else None


def check_before_training(config) -> None:
    """The config mistakes that would otherwise surface only after a training: each one line, now."""
    from tunelab.apps.runs import run_config
    from tunelab.apps.support.matcher import choose_search
    from tunelab.errors import ConfigError

    if config.retriever.search == "faiss":
        choose_search(config.retriever, 0)  # raises when FAISS is not installed
    if config.intents is not None:
        run = run_config(config.intents)
        if run.task.name != "classification" or run.data.multi_label or run.data.text_pair_column:
            raise ConfigError(f"{config.intents}: the intent model must be a single-label classification run of "
                              "single texts (not multi-label, not sentence pairs)")
    if config.generator is not None and run_config(config.generator).task.name != "causal_lm":
        raise ConfigError(f"{config.generator}: the generator must be a causal_lm run (task.name: causal_lm)")


def make_index(config, encoder, faq, questions, say):
    """The FAQ's index: each entry's question and (retriever.index_questions) its training phrasings, searched
    exactly or through a FAISS graph as retriever.search says."""
    from tunelab.apps.support.matcher import build_index, choose_search

    r = config.retriever
    index = build_index(encoder, faq, questions.train if r.index_questions else [])
    search = choose_search(r, len(index.vectors))
    if search == "faiss":
        return index.with_graph(r.candidates)
    if len(index.vectors) > r.exact_up_to:
        say(f"faq: {len(index.vectors)} index vectors searched exactly; pip install 'tunelab[ann]' for FAISS")
    return index


def fit_matcher(config, encoder, index, faq, questions, say, reranker=None) -> dict:
    """Fit the temperature and the hand-off threshold on validation, measure on test; the matcher's folder
    (app_dir/faq) is written. -> the figures."""
    from tunelab.apps.support.matcher import answered, ranking_metrics, softmax, threshold_for_precision, write_matcher
    from tunelab.apps.support.rerank import FAR, blend, choose_weight
    from tunelab.tasks.calibration import fit_temperature
    from tunelab.tasks.classification.metrics import calibration

    started = time.perf_counter()
    position = {entry: i for i, entry in enumerate(faq.ids)}
    scale = config.retriever.scale
    figures: dict = {"index_vectors": len(index.vectors), "search": "exact" if index.graph is None else "faiss"}
    scored = {}  # split -> questions, retriever scores, targets
    for split in ("validation", "test"):
        rows = getattr(questions, split)
        if rows:
            texts = [t for t, _ in rows]
            scored[split] = (texts, index.scores(encoder.encode(texts)), np.array([position[e] for _, e in rows]))
    weight, odds = 0.0, {}  # odds: split -> the re-ranker's (candidates, log-odds), computed where they are used
    if reranker is not None:
        texts, scores, targets = scored["validation"]
        odds["validation"] = reranker.odds(texts, scores)
        figures["reranker_fit"] = choose_weight(scores, *odds["validation"], scale, targets, config.reranker.weight)
        weight = reranker.weight = figures["reranker_fit"]["weight"]
        say(f"reranker: weight {weight}" + (" (the validation questions are ranked no better than by the retriever "
                                            "alone: not used)" if not weight else ""))

    def logits_of(split: str, texts: list[str], scores: np.ndarray) -> np.ndarray:
        if not weight:
            return scale * scores
        return blend(scores, *(odds.get(split) or reranker.odds(texts, scores)), scale, weight)

    splits = {split: (logits_of(split, texts, scores), scores.max(axis=1), targets)
              for split, (texts, scores, targets) in scored.items()}

    def judged(split: str, threshold: float, min_similarity: float):
        logits, similarity, targets = splits[split]
        probs = softmax(logits / temperature)
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == targets
        given = (confidence >= threshold) & (similarity >= min_similarity)
        return logits, probs, confidence, correct, given

    logits, similarity, targets = splits["validation"]
    # with a re-ranker, a question whose entry is not among the candidates says nothing of the temperature
    among = logits[np.arange(len(targets)), targets] > logits.max(axis=1) - FAR / 2
    temperature = fit_temperature(logits[among], targets[among]) if among.any() else 1.0
    _, probs, confidence, correct, _ = judged("validation", 1.0, -1.0)
    chosen = threshold_for_precision(confidence, correct, config.target_precision)
    min_similarity = (float(np.quantile(similarity, config.out_of_scope_quantile))
                      if config.out_of_scope_quantile > 0 else -1.0)  # 0: no floor (a cosine is never below -1)
    *_, correct, given = judged("validation", chosen["threshold"], min_similarity)
    figures["validation"] = {**ranking_metrics(probs, targets), **answered(given, correct)}
    calibration_fit = {"scale": scale, "temperature": temperature, "threshold": chosen["threshold"],
                       "min_similarity": min_similarity, "target_precision": config.target_precision,
                       "validation": figures["validation"]}
    if reranker is not None:
        calibration_fit["reranker"] = {"candidates": reranker.candidates, "weight": weight}
    write_matcher(config.app_dir / "faq", faq, index, calibration_fit)
    if "test" in splits:
        logits, probs, confidence, correct, given = judged("test", chosen["threshold"], min_similarity)
        targets = splits["test"][2]
        figures["test"] = {**ranking_metrics(probs, targets), **answered(given, correct),
                           "ece": calibration(confidence, correct, 10)[0],
                           "ece_uncalibrated": calibration(softmax(logits).max(axis=1), correct, 10)[0]}
    figures.update(temperature=round(temperature, 4), threshold=chosen["threshold"], min_similarity=min_similarity,
                   matcher_seconds=round(time.perf_counter() - started, 1))
    say(f"faq: answers {figures['validation']['coverage']:.1%} of validation questions (confidence at least "
        f"{chosen['threshold']:.4f}, similarity at least {min_similarity:.3f}) for a target precision of "
        f"{config.target_precision:.0%}")
    return figures


def _markdown(report: dict, config) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    q = report["questions"]
    lines = ["# Support app build", "",
             f"FAQ: {report['faq_entries']} entries. Customer questions split per entry (stratified, the same text in "
             f"one split only): {q['train']} train, {q['validation']} validation, {q['test']} test"
             + (f"; {report['train_only_entries']} entries with fewer than 3 questions are trained on only" if
                report["train_only_entries"] else "") + ".",
             f"The retriever ranks every entry for each held-out question; the hand-off threshold is the lowest "
             f"confidence whose validation answers were right {config.target_precision:.0%} of the time, and the test "
             "figures show what it gives on unseen questions.", ""]
    reranker = report.get("reranker")
    if reranker:
        lines += [f"The retriever's {reranker['candidates']} best entries are re-ranked by a cross-encoder "
                  f"(`{reranker['run']}`), trained on {reranker['pairs']['train']} pairs: each training question with "
                  f"its entry and the {reranker['negatives']} wrong entries the retriever ranked highest. A "
                  "candidate's logit is the retriever's plus a weight times the re-ranker's log-odds (validation "
                  "MRR@10 by weight: " + ", ".join(f"{float(w):g}: {v:.4f}" for w, v in
                                                    report["reranker_fit"]["validation_mrr_at_10"].items())
                  + f"); the build kept {report['reranker_fit']['weight']:g}"
                  + (" (no better than the retriever alone: the re-ranker is not used)."
                     if not report["reranker_fit"]["weight"] else "."), ""]
    for split in ("validation", "test"):
        if split in report:
            lines += [f"## FAQ matching, {split}", ""] + [f"- {k}: {f(v)}" for k, v in report[split].items()] + [""]
    entry = report.get("intent")
    if entry and "run" in entry:
        lines += ["## Intent", "", f"- run: `{entry['run']}` ({entry['steps']} steps)",
                  "- test split: " + ", ".join(f"{k} {v:.4f}" for k, v in entry["test"].items() if isinstance(v, float)), ""]
    elif entry:
        lines += ["## Intent (few-shot)", "", f"- {entry['intents']} intents from {entry['examples']} examples"
                  + (f"; known by their description only: {', '.join(entry['zero_shot'])}" if entry["zero_shot"] else ""),
                  *([f"- added since the encoder was trained (head refitted only): "
                     f"{', '.join(entry['added_since_encoder_training'])}"] if entry["added_since_encoder_training"] else []),
                  *([f"- intent_test: accuracy {f(entry['test']['accuracy'])} on {entry['test']['examples']} messages"
                     + (f" ({entry['test']['unknown_intent']} of unknown intents left out)" if entry['test']['unknown_intent'] else "")]
                    if "test" in entry else []), ""]
    generator = report.get("generator")
    if generator:
        lines += ["## Generated answers", "", f"- run: `{generator['run']}` ({generator['steps']} steps), given the "
                  f"{config.generation.sources} best-matching entries",
                  "- test split: " + ", ".join(f"{k} {v:.4f}" for k, v in generator["test"].items() if isinstance(v, float)), ""]
    return "\n".join(lines)
