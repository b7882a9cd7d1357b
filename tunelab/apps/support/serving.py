"""The FAQ matcher as a served model: the server batches its questions (dynamic batching), the monitor logs its
answers (label: the best entry's id; score: its calibrated confidence) and takes feedback on them."""

from __future__ import annotations

import numpy as np

from tunelab.apps.support.build import FAQ, INTENT, command, encoder_folder


def faq_model(config):
    """The ServedModel of the app's FAQ matcher (built by `tunelab app support build`)."""
    from tunelab.apps.support.matcher import Matcher
    from tunelab.apps.encoder import Encoder
    from tunelab.errors import TunelabError
    from tunelab.models.predictor import Inference
    from tunelab.serve.models import ServedModel
    from tunelab.tasks.classification import ClassificationTask

    folder = encoder_folder(config)
    if not (config.app_dir / "faq").is_dir():
        raise TunelabError(f"{config.app_dir / 'faq'} is missing: build the app first "
                           f"({command(config)})")
    encoder = Encoder(folder, config.retriever.max_length)
    matcher = Matcher(encoder, config.app_dir / "faq", reranker_of(config))
    task = ClassificationTask(list(matcher.ids))

    def infer(texts: list[str], pairs=None, embeddings: bool = True) -> Inference:
        vectors = encoder.encode(texts)
        scores = matcher.index.scores(vectors)
        lengths, unknown = encoder.token_counts(texts)
        return Inference(matcher.calibrated(texts, scores), vectors if embeddings else None, lengths, unknown,
                         contexts=[float(s) for s in scores.max(axis=1)])

    def decide(probs, top_k: int | None = None, contexts=None) -> list[dict]:
        """Per question: the best entry and its confidence, the top candidates, whether it is handed off."""
        results = []
        for row, similarity in zip(np.asarray(probs).reshape(-1, len(matcher.ids)), contexts or [1.0] * len(probs)):
            best = np.argsort(-row, kind="stable")[: top_k or config.top_k]
            results.append({"label": matcher.ids[best[0]], "score": float(row[best[0]]), "similarity": similarity,
                            "handed_off": matcher.hands_off(float(row[best[0]]), similarity),
                            "top_k": [{"label": matcher.ids[i], "score": float(row[i])} for i in best],
                            "scores": {matcher.ids[i]: float(row[i]) for i in best}})
        return results

    backend = "torch" if encoder.onnx is None else f"onnx-{config.backend.split('-')[-1]}"
    info = {"labels": matcher.ids, "task": "faq_retrieval", "backend": backend, "path": str(folder),
            "max_length": encoder.max_length, "pair": False,
            "metrics": {"accuracy": matcher.validation.get("recall_at_1")} if matcher.validation else {}}
    return ServedModel(FAQ, infer, decide, encoder.tokenizer, encoder.max_length, False, info, None, 0.5, task)


def reranker_of(config):
    """The app's re-ranker as the build calibrated it, or None (also when the config asks for one the build has not
    made yet: the matcher's calibration says what it was fitted with)."""
    import json

    from tunelab.apps.support.matcher import CALIBRATION_FILE, FAQ_FILE
    from tunelab.apps.support.rerank import Reranker, entry_texts, model_folder
    from tunelab.errors import TunelabError

    fitted = json.loads((config.app_dir / "faq" / CALIBRATION_FILE).read_text()).get("reranker")
    if (fitted is None) != (config.reranker is None):
        raise TunelabError(f"the app was built {'without' if fitted is None else 'with'} a re-ranker and the config "
                           f"{'asks for one' if fitted is None else 'has none'}: build it again ({command(config)})")
    if fitted is None or not fitted["weight"]:  # weight 0: the build found it no help on validation
        return None
    faq = json.loads((config.app_dir / "faq" / FAQ_FILE).read_text(encoding="utf-8"))
    return Reranker(model_folder(config), fitted["candidates"],
                    entry_texts(faq["questions"], faq["answers"]), fitted["weight"])


def intent_model(config):
    """The ServedModel of the few-shot intent model: its encoder and logistic-regression head."""
    from tunelab.apps.support.fewshot import HEAD_FILE, IntentHead
    from tunelab.apps.encoder import Encoder
    from tunelab.errors import TunelabError
    from tunelab.models.predictor import Inference
    from tunelab.serve.models import ServedModel
    from tunelab.tasks.classification import ClassificationTask

    folder = encoder_folder(config, "intent-encoder", config.few_shot)
    if not (config.app_dir / HEAD_FILE).is_file():
        raise TunelabError(f"{config.app_dir / HEAD_FILE} is missing: build the app first "
                           f"({command(config)})")
    encoder = Encoder(folder, config.few_shot.max_length)
    head = IntentHead.load(config.app_dir)
    task = ClassificationTask(list(head.classes))

    def infer(texts: list[str], pairs=None, embeddings: bool = True) -> Inference:
        vectors = encoder.encode(texts)
        lengths, unknown = encoder.token_counts(texts)
        return Inference(head.probabilities(vectors), vectors if embeddings else None, lengths, unknown)

    def decide(probs, top_k: int | None = None, contexts=None) -> list[dict]:
        return task.decide(probs, top_k=top_k)

    backend = "torch" if encoder.onnx is None else f"onnx-{config.backend.split('-')[-1]}"
    info = {"labels": head.classes, "task": "classification", "method": "few-shot", "backend": backend,
            "path": str(folder), "max_length": encoder.max_length, "pair": False, "metrics": {}}
    return ServedModel(INTENT, infer, decide, encoder.tokenizer, encoder.max_length, False, info, None, 0.5, task)


def app_models(config) -> dict:
    """The models the app builds itself (not tunelab model folders): the FAQ matcher, the few-shot intent model."""
    return {FAQ: faq_model(config), **({INTENT: intent_model(config)} if config.intent_examples else {})}
