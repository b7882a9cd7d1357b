"""`tunelab export RUN --format onnx [--quantize int8]`: an ONNX Runtime model folder, checked before it is kept.

The folder (runs/<name>/export/onnx or onnx-int8) holds model.onnx, the tokenizer and tunelab.json, so
`tunelab serve` and `tunelab predict` take it like a run; plain onnxruntime runs model.onnx (inputs
input_ids, attention_mask[, token_type_ids] as int64 [batch, sequence]; outputs logits and sentence_embedding,
the mean-pooled last layer that drift monitoring uses). LoRA/IA3 runs are
merged first. Export goes through torch.onnx's dynamo exporter (the TorchScript one bakes the padding of
the example batch into the attention mask: measured 1e-2 logit error), with dynamic batch and sequence axes; the
graph is then fused into onnxruntime's transformer kernels (export/ort_fusion.py) unless `portable`.

Parity runs against the torch fp32 model on the validation split, topped up to 1000 texts with training texts
(export/merge.py parity_texts), and is written to parity.json: label agreement, the count of changed labels and
max |probability difference|. fp32 must match to FP32_TOLERANCE; int8 must agree on at least
`min_agreement` of the labels -- every weight matmul in int8 first, then (said, and recorded in parity.json)
with the GELU-fed ones in fp32 -- or nothing is written and the error says what to do.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.export.ort_fusion import fuse_for_onnxruntime
from tunelab.export.result import ExportResult
from tunelab.files import replace_folder
from tunelab.models.card import ModelCard
from tunelab.runlock import run_lock

FP32_TOLERANCE = 1e-4  # max |probability difference| of the fp32 export
OPSET = 18


class _Logits(torch.nn.Module):
    """The classifier as a function of named int64 tensors -> (logits, embedding): what the ONNX graph
    computes. The embedding (mean-pooled last layer) is what the server's drift monitor compares."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from tunelab.models.inference import mean_pool

        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        return out.logits, mean_pool(out.hidden_states[-1], attention_mask)


def _plain_model(model_dir: Path, card):
    """The trained model as one torch module: PEFT adapters merged into the base weights."""
    from tunelab.methods import METHODS
    from tunelab.models.load import load_model

    method = card.method_name
    model = load_model(model_dir, card)
    if METHODS[method].SAVES == "peft":
        if not getattr(METHODS[method], "MERGEABLE", False):
            raise TunelabError(f"method '{method}' cannot be exported to ONNX (its virtual tokens live in peft's "
                               "generation wrapper); LoRA, IA3, adapters, freeze, head and full fine-tuning can")
        model = model.merge_and_unload()
    return model.eval().float()


def export_onnx(run: str | Path, out: str | Path | None = None, quantize: str | None = None,
                min_agreement: float = 0.99, limit: int | None = None, quiet: bool = False,
                ffn_down_fp32: bool = False, max_metric_drop: float = 0.5, portable: bool = False) -> ExportResult:
    """Write the ONNX folder; the result holds its parity figures (also in parity.json). int8 is refused under
    `min_agreement` of the labels; for a task judged by a metric (token classification: entity F1), when it loses
    more than `max_metric_drop` points of it on validation. `portable`: standard ONNX ops only, not fused into
    onnxruntime's kernels (export/ort_fusion.py)."""
    from tunelab.models.predictor import ONNX_FILE, find_model_dir

    model_dir = find_model_dir(run)
    if (model_dir / ONNX_FILE).is_file():
        raise TunelabError(f"{model_dir} is already an ONNX export; export the run it came from")
    with run_lock(model_dir.parent, "export"):  # a training of the run would rewrite the model being exported
        return _export_onnx(model_dir, out, quantize, min_agreement, limit, quiet, ffn_down_fp32, max_metric_drop, portable)


def _export_onnx(model_dir: Path, out, quantize, min_agreement, limit, quiet, ffn_down_fp32, max_metric_drop,
                 portable) -> ExportResult:
    from transformers import AutoTokenizer

    from tunelab.export.merge import parity_texts
    from tunelab.models.predictor import ONNX_FILE, Predictor
    from tunelab.hub import quiet_transformers
    from tunelab.monitor.profile import build_profile

    quiet_transformers()
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    run_dir = model_dir.parent
    card = ModelCard.read(model_dir)
    if card.task == "causal_lm":
        raise TunelabError(f"{model_dir} is a causal LM: ONNX export covers classifiers and taggers; export it "
                           "for llama.cpp with --format gguf, or fold its adapter into a transformers folder with --merge")
    out = Path(out) if out else run_dir / "export" / ("onnx-int8" if quantize == "int8" else "onnx")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _plain_model(model_dir, card)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if card.pair and "token_type_ids" in tokenizer.model_input_names else [])
    sample = tokenizer(*(["an example", "a second, longer example text"],) * (2 if len(names) == 3 else 1),
                       padding=True, return_tensors="pt")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        say(f"export: tracing {model_dir} to ONNX (opset {OPSET}) ...")
        try:
            fused = _export(model, names, tuple(sample[n] for n in names), tmp / "model.fp32.onnx", fuse=not portable)
        except Exception as exc:
            raise TunelabError(f"ONNX export of this '{card.method_name}' model failed: {type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)  # labels and architecture, for readers of the folder
        texts, pairs, sources = parity_texts(run_dir, limit)
        reference = Predictor(model_dir, model=model)
        judge = _Judge(reference, run_dir, min_agreement, max_metric_drop)
        fp32_file = tmp / "model.fp32.onnx"
        # int8: every weight matmul first (fastest); under the floor, the GELU-fed ones back in fp32, said so
        tries = ([ffn_down_fp32] if ffn_down_fp32 or not quantize else [False, True])
        first = None
        for keep_ffn in tries:
            if quantize == "int8":
                _quantize_int8(fp32_file, tmp / ONNX_FILE, keep_ffn)
            else:
                fp32_file.rename(tmp / ONNX_FILE)
            onnx_card = card.replace(exported_from=str(run_dir.resolve()),
                                     onnx={"opset": OPSET, "quantize": quantize, "inputs": names, "fused": fused,
                                           **({"ffn_down_fp32": keep_ffn} if quantize else {})})
            onnx_card.write(tmp)
            exported = Predictor(tmp)
            parity = {**_parity(reference, exported, texts, pairs), "texts": sources, **judge.scores(exported, quantize)}
            if not quantize or judge.passes(parity) or keep_ffn:
                break
            first = parity
            say(f"export: with every matmul in int8, {judge.shortfall(parity)}; trying again with the GELU-fed matmuls in fp32")
        if first is not None:
            parity["all_int8_label_agreement"] = first["label_agreement"]
            if judge.metric:
                parity["all_int8_metric_drop_points"] = first["metric_drop_points"]
        if fp32_file.exists():
            fp32_file.unlink()
        parity.update(quantize=quantize, ffn_down_fp32=onnx_card.onnx.get("ffn_down_fp32"),
                      min_agreement=min_agreement if quantize and not judge.metric else None,
                      max_metric_drop=max_metric_drop if quantize and judge.metric else None,
                      seconds=round(time.perf_counter() - started, 1),
                      bytes=(tmp / ONNX_FILE).stat().st_size)
        (tmp / "parity.json").write_text(json.dumps(parity, indent=1))
        if quantize == "int8" and not judge.passes(parity):
            raise TunelabError(f"int8: {judge.shortfall(parity)}" + judge.first_try(first)
                               + "; nothing written. Serve the fp32 export (--format onnx without --quantize), or accept "
                               f"the loss with {judge.accept(parity)}")
        if not quantize and parity["max_abs_prob_diff"] > FP32_TOLERANCE:
            raise TunelabError(f"the ONNX model differs from the torch model by {parity['max_abs_prob_diff']:.2e} in "
                               f"probability (> {FP32_TOLERANCE}) on {_texts(parity)}; nothing written (please report this)")
        build_profile(tmp, run_dir)  # the monitor's reference, as this model (int8 included) sees the data
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)
    return ExportResult(out, parity)


def _export(model, names: list[str], sample: tuple, path: Path, module=None,
            outputs: tuple[str, ...] = ("logits", "sentence_embedding"), fuse: bool = True) -> dict[str, int]:
    """Trace `module` (default: the classifier's logits and embedding) into an ONNX file with dynamic batch and
    sequence axes; `model` gives the longest sequence. `fuse`: then rewrite it into onnxruntime's transformer
    kernels (export/ort_fusion.py); returns how many of each fusion were applied."""
    import contextlib
    import io
    import warnings

    from torch.export import Dim

    batch, seq = Dim("batch"), Dim("sequence", max=int(getattr(model.config, "max_position_embeddings", 512)))
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter chats on stdout
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module or _Logits(model, names), sample, dynamo=True, opset_version=OPSET,
                                        input_names=names, output_names=list(outputs), verbose=False,
                                        dynamic_shapes={n: {0: batch, 1: seq} for n in names})
            program.save(str(path), external_data=False)
    finally:
        exporter_log.setLevel(level)
    return fuse_for_onnxruntime(path) if fuse else {}


def _quantize_int8(src: Path, dst: Path, ffn_down_fp32: bool = False) -> None:
    """Dynamic int8 of the weight matmuls, per output channel (`ffn_down_fp32`: except those fed by GELU).

    Measured (BENCHMARKS.md, "Serving"): on MiniLM fine-tuned on 20k SST-2 examples, all weight matmuls in
    int8 keep fp32's accuracy (validation 0.8773 -> 0.8773, test 0.8863 -> 0.8885; labels agree on 98.5%)
    and serve ~20% more requests/s than with the FFN down-projections left in fp32 (0.8739 / 0.8858; 98.6%).
    Those take GELU outputs, whose outliers a per-tensor activation scale flattens: on another model the
    exclusion raised label agreement from 98.3% to 99.1%, hence the option. Attention's
    activation-by-activation matmuls stay fp32 (MatMulConstBOnly).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}

    def after_gelu(node) -> bool:
        source = producer.get(node.input[0])
        return source is not None and (source.op_type in ("Gelu", "FastGelu", "BiasGelu") or "gelu" in source.name.lower())

    skip = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights and after_gelu(n)] if ffn_down_fp32 else []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime advises pre-processing through the root logger on every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=skip, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


class _Judge:
    """Whether an int8 export is close enough to its source: label agreement on the parity texts, or, for a task
    judged by a metric (token classification: entity F1), the points of it lost on the labelled validation split."""

    def __init__(self, reference, run_dir: Path, min_agreement: float, max_drop: float):
        self.metric = getattr(reference.task, "parity_metric", None)
        self.min_agreement, self.max_drop = min_agreement, max_drop
        self.run_dir, self.reference_score = run_dir, None
        if self.metric:
            self.reference_score = self._score(reference)

    def _score(self, predictor) -> float:
        from tunelab.evaluation.run import resolve_split, score_file

        return float(score_file(predictor, resolve_split(self.run_dir, "validation")[1])[self.metric])

    def scores(self, exported, quantize) -> dict:
        if not self.metric:
            return {}
        score = self._score(exported)
        return {f"reference_{self.metric}": self.reference_score, self.metric: score,
                "metric_drop_points": round(100 * (self.reference_score - score), 4)}

    def passes(self, parity: dict) -> bool:
        if self.metric:
            return parity["metric_drop_points"] <= self.max_drop
        return parity["label_agreement"] >= self.min_agreement

    def shortfall(self, parity: dict) -> str:
        if self.metric:
            return (f"validation {self.metric} falls from {parity[f'reference_{self.metric}']:.4f} to "
                    f"{parity[self.metric]:.4f} ({parity['metric_drop_points']:.2f} points, more than the "
                    f"{self.max_drop:g} allowed)")
        return (f"the labels differ on {_changed(parity)}: {parity['label_agreement']:.2%} agree, under the floor "
                f"of {self.min_agreement:.0%}")

    def first_try(self, first: dict | None) -> str:
        if first is None:
            return ""
        if self.metric:
            return f" (every matmul in int8: {first['metric_drop_points']:.2f} points)"
        return f" (every matmul in int8: {first['label_agreement']:.2%})"

    def accept(self, parity: dict) -> str:
        if self.metric:
            return f"--max-metric-drop {np.ceil(parity['metric_drop_points'] * 100) / 100:.2f}"
        return f"--min-agreement {max(0.0, np.floor(parity['label_agreement'] * 100) / 100):.2f}"


def _parity(reference, exported, texts: list[str], pairs: list[str] | None) -> dict:
    """How closely `exported` answers as `reference` does on these texts (the task compares their outputs)."""
    if not texts:
        return {"examples": 0, "label_agreement": 1.0, "disagreements": 0, "max_abs_prob_diff": 0.0}
    a, b = reference.probabilities(texts, pairs), exported.probabilities(texts, pairs)
    return {"examples": len(texts), **reference.task.agreement(a, b, reference.threshold)}


def _texts(parity: dict) -> str:
    """'1000 texts (90 validation, 910 training)'."""
    sources = parity.get("texts") or {}
    return f"{parity['examples']} texts (" + ", ".join(f"{n} {'training' if s == 'train' else s}"
                                                        for s, n in sources.items() if n) + ")"


def describe_parity(parity: dict) -> str:
    """The CLI's summary of parity.json."""
    text = (f"on {_texts(parity)}: {parity['disagreements']} answers differ from the torch model "
            f"({parity['label_agreement']:.2%} agree), max |prob diff| {parity['max_abs_prob_diff']:.2e}")
    if "metric_drop_points" in parity:
        metric = next(k.removeprefix("reference_") for k in parity if k.startswith("reference_"))
        text += (f"; validation {metric} {parity[f'reference_{metric}']:.4f} -> {parity[metric]:.4f} "
                 f"({parity['metric_drop_points']:.2f} points lost)")
    return text


def _changed(parity: dict) -> str:
    """'3 of 1000 texts (90 validation, 910 training)'."""
    return f"{parity['disagreements']} of {_texts(parity)}"
