"""Load a trained model folder and predict labels and scores for texts: what `tunelab predict`,
`tunelab evaluate` and the server call."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
import threading
import time

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.models.card import ModelCard
from tunelab.models.inference import iter_outputs, row_scores
from tunelab.tasks import task_of
from tunelab.tasks.encoding import Encoded, collate, eval_batches


def find_model_dir(path: str | Path) -> Path:
    """A run folder (runs/<name>) or its model folder -> the model folder."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / "tunelab.json").is_file():
            return candidate
    if (path / "config.json").is_file():
        raise TunelabError(f"{path} is a transformers model folder but not one tunelab trained (no tunelab.json)")
    raise TunelabError(f"{path}: no trained model here (expected a run folder with model/ inside, "
                       "or a model folder with tunelab.json); train one with `tunelab train CONFIG`")


ONNX_FILE = "model.onnx"
# The fixed cost of one model call in tokens' worth of compute, for cutting batches by length (eval_batches),
# by backend. From a sweep on this 2-core CPU (BENCHMARKS.md, "Serving"): ONNX Runtime calls are cheap; an
# eager torch forward pays Python per module; bf16 matmuls (AMX) want big batches more than little padding.
CALL_TOKENS = {"onnx": 32, "fp32": 64, "bf16": 256}
# bf16 matmuls go to oneDNN, which compiles and keeps a kernel (and buffers) per shape: a server's batches, padded
# to their longest text, met a new shape at almost every call, and the server grew by 369 MB over 1000 requests
# and was still growing (the cache bound at 64 notwithstanding); with widths in steps of 16 tokens it grew by 140 MB
# and levelled off, no slower (BENCHMARKS.md, serve_memory.py). fp32 takes another kernel path: padding would only
# cost time there.
BF16_WIDTH_STEP = 16


WIDE = threading.Lock()  # held by the one lone ONNX call that runs on every core (OnnxModel.outputs)
SHARED_FOR_S = 10.0  # after two ONNX calls ran at once, lone calls stay on one thread this long
TRIAL_CALLS = 40  # lone calls timed on each session (one thread, every core) before lone calls keep the faster
RETRY_AFTER = 1000  # lone calls on the faster before both are tried again


class _Calls:
    """ONNX calls running in this process, and when two last ran at once."""

    lock = threading.Lock()
    running = 0
    overlapped_at = float("-inf")

    @classmethod
    def enter(cls) -> bool:
        """Count a call in -> whether the cores have been its alone for SHARED_FOR_S."""
        with cls.lock:
            cls.running += 1
            now = time.monotonic()
            if cls.running > 1:
                cls.overlapped_at = now
            return now - cls.overlapped_at > SHARED_FOR_S

    @classmethod
    def leave(cls) -> None:
        with cls.lock:
            cls.running -= 1


# onnxruntime's own graph rewrites left out: its CPU SkipLayerNormalization kernel (residual Add + LayerNorm in one)
# measured 4x slower than the two ops it replaces on a one-sentence MiniLM input, 7x on a batch of 25 (onnxruntime
# 1.32; the whole int8 demo model: 3.1 -> 2.5 ms a sentence, 200 -> 236 texts/s in batches of 25 on one thread)
SLOW_FUSIONS = ["SkipLayerNormFusion"]


def onnx_session(path: Path, threads: int, optimized_to: Path | None = None):
    """An onnxruntime CPU session of the file at `path` on `threads` threads, every graph rewrite on but
    SLOW_FUSIONS. `optimized_to`: also write the graph as the session runs it there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=SLOW_FUSIONS)


class OnnxModel:
    """An exported ONNX classifier behind the same call as the torch model: padded batch -> logits.

    Several batches: each call runs on one thread, and up to `calls` (the cores, or `threads`) calls run at once on
    one session (ONNX Runtime's run() is thread-safe): on a 2-core CPU with MiniLM int8 two one-thread calls at once
    did 1.3-1.5x the texts per second of one two-thread call at batches of 8-16 (BENCHMARKS.md, "Serving").
    A lone batch (one request at low load) may run faster on every core, or slower: one sentence took 2.2 ms on two
    threads against 3.1 ms on one on the AMD machine, 3.6 against 2.8 ms on the Intel one, whose per-operator
    hand-offs cost more than they split, and on a machine whose cores other work takes at times, one thread is
    the faster while it does. So 2 x TRIAL_CALLS lone calls run on the two sessions in turn, the faster (median time
    per token) runs the next RETRY_AFTER lone calls, and the trial runs again (the second session holds the weights
    a second time: 23 MB for MiniLM int8). Timed on served calls, not on a burst at start-up: a burst there met the
    start-up's own work and picked either session (8 bursts with one core busy: 5 chose two threads, 3 one thread),
    for the server's whole life (BENCHMARKS.md, "Serving"). A lone call
    takes every core only while no other ONNX call in the process has run beside one in the last SHARED_FOR_S
    seconds, and one at a time (WIDE): two models answering each request together (the support app's FAQ and
    intent models) would otherwise ask for more threads than there are cores, and a call split over threads waits
    at every operator for its slowest one (measured: the support app's answer at one client, 7.45 ms with both
    calls on one thread each, 15.66 ms with one of them on two).
    """

    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        self.session = self._session(1)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.calls = threads or torch.get_num_threads()
        self.pool = ThreadPoolExecutor(self.calls, thread_name_prefix="onnx") if self.calls > 1 else None
        self.has_embedding = len(self.session.get_outputs()) > 1  # exports before 0.4 give logits only
        # the session lone calls run on: None while lone calls try both (trial: seconds per token on each)
        self.lone_session = None if self.calls > 1 else self.session
        self.wide_session = None
        self.trial: tuple[list[float], list[float]] = ([], [])
        self.since_trial = 0  # lone calls since the last choice
        self.lone_lock = threading.Lock()

    def _session(self, threads: int):
        return onnx_session(self.path, threads)

    def _for_lone_call(self):
        """The session this lone call runs on: the chosen one, or while on trial the one with fewer calls timed."""
        with self.lone_lock:
            if self.lone_session is not None and self.calls > 1:
                self.since_trial += 1
                if self.since_trial > RETRY_AFTER:  # conditions change: try both again
                    self.lone_session, self.trial = None, ([], [])
            if self.lone_session is not None:
                return self.lone_session
            if self.wide_session is None:
                self.wide_session = self._session(self.calls)
            one, wide = self.trial
            return self.session if len(one) <= len(wide) else self.wide_session

    def _timed(self, session, seconds: float, tokens: int) -> None:
        """A trial call's time; after TRIAL_CALLS on each session, the faster is chosen."""
        with self.lone_lock:
            if self.lone_session is not None:
                return
            self.trial[session is self.wide_session].append(seconds / max(tokens, 1))
            if min(map(len, self.trial)) >= TRIAL_CALLS:
                wide_faster = np.median(self.trial[1]) < np.median(self.trial[0])
                self.lone_session = self.wide_session if wide_faster else self.session
                self.since_trial = 0

    def logits(self, batch: dict) -> torch.Tensor:
        return self.outputs(batch)[0]

    def outputs(self, batch: dict, lone: bool = False) -> tuple[torch.Tensor, np.ndarray | None]:
        """(logits, mean-pooled embeddings or None). `lone`: nothing else runs beside this call."""
        alone, session, wide, on_trial = _Calls.enter(), self.session, False, False
        try:
            if lone and alone:
                candidate = self._for_lone_call()
                on_trial = self.lone_session is None
                if candidate is not self.session:
                    # another model's lone call on every core: this one takes one thread, and is not timed
                    wide = WIDE.acquire(blocking=False)
                    session, on_trial = (candidate, on_trial) if wide else (session, False)
            started = time.perf_counter()
            out = session.run(None, {k: batch[k].numpy() for k in self.inputs})
            if on_trial:
                self._timed(session, time.perf_counter() - started, int(batch["input_ids"].shape[1]))
        finally:
            if wide:
                WIDE.release()
            _Calls.leave()
        return torch.from_numpy(out[0]), (out[1] if len(out) > 1 else None)

    def outputs_many(self, batches: Iterable[dict]) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
        """outputs() of each batch, in order, `calls` of them running at once (one more waiting: memory stays
        bounded however many batches come)."""
        if self.pool is None:
            yield from map(self.outputs, batches)
            return
        pending: deque = deque()
        for batch in batches:
            pending.append(self.pool.submit(self.outputs, batch))
            if len(pending) > self.calls:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class Inference:
    """What one model call gives per input: the task's outputs (probabilities per label; per word for token
    classification), and what monitoring compares with the training data."""

    probs: np.ndarray | list  # one entry per input: an array (n, labels), or one array per input
    embeddings: np.ndarray | None  # mean-pooled last layer per input; None for an ONNX export without it
    lengths: np.ndarray  # tokens per input (after truncation)
    unknown: np.ndarray  # unknown tokens per input
    contexts: list | None = None  # what a task needs besides the outputs to answer (token classification: word offsets)


class Predictor:
    """A trained model ready for inference: tokenizer, model (torch, or ONNX Runtime for an exported folder) and
    its task, which turns outputs into answers."""

    def __init__(self, model_dir: str | Path, precision: str = "fp32", batch_size: int = 64, model=None):
        """`model`: an already loaded model to use instead of loading the folder's (shared-base adapters).
        A folder holding model.onnx (from `tunelab export --format onnx`) runs on ONNX Runtime."""
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from tunelab.models.load import load_model

        hf_logging.disable_progress_bar()
        self.model_dir = find_model_dir(model_dir)
        self.card = ModelCard.read(self.model_dir)
        self.task = task_of(self.card)
        if getattr(self.task, "generates", False):
            raise TunelabError(f"{self.model_dir} is a causal LM: it answers with `tunelab generate`, or served by "
                               "`tunelab serve` on /v1/chat/completions (Python: tunelab.models.generate.Generator)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.onnx = OnnxModel(self.model_dir / ONNX_FILE) if model is None and (self.model_dir / ONNX_FILE).is_file() else None
        self.model = None if self.onnx else (model if model is not None else load_model(self.model_dir, self.card))
        self.max_length = int(self.card.max_length)
        self.threshold = float(self.card.threshold)
        self.bf16 = precision == "bf16"
        self.batch_size = batch_size
        self.call_tokens = CALL_TOKENS["onnx" if self.onnx else "bf16" if self.bf16 else "fp32"]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.with_types = getattr(self.task, "pair", False) and "token_type_ids" in self.tokenizer.model_input_names

    @property
    def labels(self) -> list[str]:
        return self.task.labels

    def probabilities(self, texts: list[str], pairs: list[str] | None = None):
        """The task's outputs per text, in input order (classification: an array, one row of label
        probabilities per text)."""
        return self.infer(texts, pairs, embeddings=False).probs

    def infer(self, texts: list[str], pairs: list[str] | None = None, embeddings: bool = True) -> Inference:
        """Outputs, and (with `embeddings`) each text's embedding, token count and unknown tokens."""
        if getattr(self.task, "pair", False) and pairs is None:
            raise TunelabError("this model classifies sentence pairs: give a second text for each input")
        enc = self.task.encode_inputs(self.tokenizer, texts, pairs, self.max_length, self.card.clean)
        return self.infer_encoded(enc, embeddings)

    def infer_encoded(self, enc: Encoded, embeddings: bool = True) -> Inference:
        """infer() of inputs the task already encoded (e.g. pre-split words)."""
        rows_out: list = [None] * len(enc)
        emb = None
        if self.onnx is not None:
            embeddings = embeddings and self.onnx.has_embedding
            # at least as many batches as parallel calls: 32 texts of one length run as 2 x 16, not 1 x 32
            most = max(1, min(self.batch_size, -(-len(enc) // self.onnx.calls)))
            batches = eval_batches(enc.lengths, most, self.call_tokens)
            padded = [collate(enc, rows, self.pad_id, self.with_types) for rows in batches]
            # one batch (a lone request) runs here: a hand-off to the pool would only add its latency
            results = self.onnx.outputs_many(padded) if len(batches) > 1 else [self.onnx.outputs(padded[0], lone=True)]
            for rows, batch, (logits, pooled) in zip(batches, padded, results):
                scores = row_scores(self.task.probabilities(logits).numpy(), enc.lengths[rows], batch["input_ids"].shape[1])
                for row, value in zip(rows, scores):
                    rows_out[row] = value
                if embeddings:
                    emb = np.zeros((len(enc), pooled.shape[1]), dtype=np.float32) if emb is None else emb
                    emb[rows] = pooled
        else:
            with torch.inference_mode():
                for rows, scores, *pooled in iter_outputs(self.model, enc, self.task, self.batch_size, self.pad_id,
                                                          self.with_types, autocast=self.bf16, embeddings=embeddings,
                                                          call_tokens=self.call_tokens,
                                                          pad_multiple=BF16_WIDTH_STEP if self.bf16 else 1):
                    for row, value in zip(rows, scores):
                        rows_out[row] = value
                    if embeddings:
                        emb = np.zeros((len(enc), pooled[0].shape[1]), dtype=np.float32) if emb is None else emb
                        emb[rows] = pooled[0]
        lengths = enc.lengths
        unk = self.tokenizer.unk_token_id
        unknown = (np.bincount(np.repeat(np.arange(len(enc)), lengths)[enc.ids == unk], minlength=len(enc))
                   if unk is not None else np.zeros(len(enc), dtype=np.int64))
        outputs = self.task.examples(enc, np.stack(rows_out) if rows_out and np.ndim(rows_out[0]) == 1 else rows_out)
        return Inference(outputs, *self.task.per_example(enc, emb, lengths, unknown.astype(np.int64)), enc.contexts)

    def decide(self, outputs, top_k: int | None = None, contexts=None) -> list[dict]:
        """Outputs -> one answer per input (classification: the label(s), the score and all scores by label)."""
        return self.task.decide(outputs, self.threshold, top_k, contexts)

    def predict(self, texts: list[str], pairs: list[str] | None = None, top_k: int | None = None) -> list[dict]:
        out = self.infer(texts, pairs, embeddings=False)
        return self.decide(out.probs, top_k, out.contexts)

