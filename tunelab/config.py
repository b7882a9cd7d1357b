"""The tunelab config: one pydantic model per pipeline stage, and `load_config` with clear errors.

Every field is typed, defaulted and described; `tunelab config schema` prints the JSON schema built
from these classes, so the schema and the code cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.settings import Section
from tunelab.tasks import TASKS


class DataConfig(Section):
    """Where the labelled data is and how the data stage loads, checks, cleans and splits it."""

    train: Path = Field(description="Training file: .csv, .tsv, .jsonl, .json or .parquet (token classification: CoNLL "
                        "or JSONL).")
    validation: Path | None = Field(None, description="Validation file; split from train when absent.")
    test: Path | None = Field(None, description="Test file; split from train when absent.")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "conll", "token_jsonl", "entity_jsonl"] = Field(
        "auto", description="File format; 'auto' picks it from the file extension (token classification: .conll/"
        ".txt/.iob/.bio are CoNLL, .jsonl is token_jsonl or entity_jsonl by the keys of its first line).")
    encoding: str = Field("utf-8", description="Text encoding of CSV/TSV/JSON files (e.g. 'latin-1').")
    text_column: str = Field("text", description="Column holding the text (token classification, entity_jsonl: "
                             "the key of the text the entity offsets point into).")
    text_pair_column: str | None = Field(
        None, description="Column holding the second text of a sentence pair (NLI, paraphrase); none for single texts.")
    label_column: str = Field("label", description="Column holding the label (or labels, for multi-label).")
    id_column: str | None = Field(None, description="Optional column of unique row ids; duplicates are reported.")
    labels: list[str] | None = Field(
        None, description="The allowed labels, in order (token classification: the entity types, e.g. [PER, ORG]); "
        "inferred from the training file when absent.")
    tokens_column: str = Field("tokens", description="Token classification, token_jsonl: the key of the list of words.")
    tags_column: str = Field("tags", description="Token classification, token_jsonl: the key of the list of tags, one per word.")
    entities_column: str = Field(
        "entities", description="Token classification, entity_jsonl: the key of the entities, [{start, end, label}] "
        "with character offsets into the text (end exclusive), as annotation tools export them.")
    messages_column: str = Field(
        "messages", description="Causal LM, JSONL/JSON/Parquet: the key of a conversation, a list of {role, content} "
        "(roles system, user, assistant; the OpenAI/ShareGPT shape) ending with the assistant's answer.")
    prompt_column: str = Field("prompt", description="Causal LM, files without conversations: the column of the user's prompt.")
    response_column: str = Field("response", description="Causal LM, files without conversations: the column of the answer to learn.")
    system_column: str | None = Field(
        None, description="Causal LM, prompt/response files: an optional column of a per-row system prompt.")
    too_long: Literal["error", "truncate"] = Field(
        "error", description="Causal LM: a conversation longer than model.max_length tokens is an error naming its line, "
        "or is cut at max_length (what is cut is not learned); either way the data report counts them.")
    tag_scheme: Literal["auto", "IOB1", "IOB2", "IOBES", "BILOU"] = Field(
        "auto", description="Token classification: how the tags mark entities ('auto': detected from the training "
        "file). Every file is checked in it and converted to IOB2, which the model predicts.")
    multi_label: bool = Field(False, description="Each row has a list of labels (JSON list, or separated in CSV).")
    label_separator: str = Field("|", description="Separator of several labels in one CSV/TSV cell (multi-label).")
    on_bad_rows: Literal["error", "drop"] = Field(
        "error", description="'error': stop and list every bad row; 'drop': remove bad rows and list them in the report.")
    unicode_normalization: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normal form of texts.")
    fold_whitespace: bool = Field(True, description="Turn every run of whitespace into one space and strip the ends.")
    lowercase: bool = Field(False, description="Lowercase texts (only for uncased models; most tokenizers do it).")
    deduplicate: bool = Field(True, description="Remove exact duplicate rows (same text, same label).")
    conflicting_duplicates: Literal["drop", "keep_first", "error"] = Field(
        "drop", description="Same text with different labels: drop all copies, keep the first, or stop with an error.")
    min_chars: int = Field(1, ge=1, description="Texts shorter than this (after cleaning) are removed and reported.")
    max_chars: int | None = Field(
        None, ge=1, description="Texts longer than this (after cleaning) are removed and reported; none for no limit.")
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train split off as validation when no validation file is given.")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train split off as test when no test file is given.")
    min_examples_per_class: int = Field(3, ge=1, description="Fewest examples of a label allowed in the data to be split.")
    seed: int = Field(42, description="Seed of the stratified split.")
    output_format: Literal["parquet", "jsonl"] = Field("parquet", description="File format of the prepared splits.")
    imbalance_warning_ratio: float = Field(
        10.0, gt=1.0, description="Warn when the most common label is this many times the least common.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        taken = (self.validation_fraction if self.validation is None else 0) + (
            self.test_fraction if self.test is None else 0)
        if taken >= 0.9:
            raise ValueError(f"validation_fraction + test_fraction = {taken:g} leaves almost nothing to train on; keep it under 0.9")
        return self


class ModelConfig(Section):
    """Which pretrained model to start from."""

    name: str = Field("default", description="A local folder, a Hugging Face hub id, or 'default' (the bundled MiniLM-L6).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `name` is a hub id.")
    max_length: int = Field(256, ge=8, le=8192, description="Longest input in tokens; longer texts are truncated.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: only transformers' own code runs).")
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="Attention kernel. 'auto': eager on CPU (its bf16 backward measured ~1.8x faster than SDPA's there), SDPA on GPU.")
    layers: int | None = Field(
        None, ge=1, description="Keep only the checkpoint's first N transformer layers (the rest are left out before "
        "fine-tuning): a shallower model that trains and predicts faster in proportion, at some accuracy. "
        "none: every layer.")


class TaskConfig(Section):
    """What the model learns to do; the head, inputs and metrics follow from it."""

    name: Literal[tuple(TASKS)] = Field(
        "classification", description="Task type. 'classification': single-label, multi-label (data.multi_label) or "
        "sentence pairs (data.text_pair_column); 'token_classification': a tag per word, answered as entities "
        "(named-entity recognition); 'causal_lm': a generative (GPT-style) model fine-tuned on conversations or "
        "prompt/response pairs, learning the assistant's words only.")
    system_prompt: str | None = Field(
        None, description="Causal LM: the system prompt put first in every conversation that has none (training, "
        "evaluation and generation alike); none: the chat template's own default, if it has one.")
    chat_template: str | None = Field(
        None, description="Causal LM: a Jinja chat template (the text, or the path of a .jinja file) used instead of the "
        "tokenizer's own; required when the tokenizer has none.")
    label_answers: bool = Field(
        False, description="Causal LM: the answers are class labels (a classification file read with data.prompt_column: "
        "text, data.response_column: label): validation and test splits are stratified by label, and evaluation "
        "generates answers constrained to the training labels and reports accuracy and macro-F1, before and after "
        "fine-tuning, as a classifier's evaluation does.")
    multi_label_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Multi-label decision threshold; none: chosen on validation to maximise micro-F1.")
    calibrate: bool = Field(
        True, description="Single-label: after training, fit a temperature on validation (softmax(logits / T), "
        "minimum log-loss) and fold it into the saved head, so every score the model gives is calibrated; labels "
        "never change. Multi-label models keep their validation-chosen threshold instead.")


class DistillConfig(Section):
    """Knowledge distillation (Hinton et al., 2015): learn a trained teacher's softened probabilities too.

    Besides the labels, the model learns to give the teacher's probabilities at a temperature: the way to keep a
    deeper model's accuracy in a shallower, faster one (model.layers)."""

    teacher: str = Field(description="The teacher: a trained run or model folder of the same task and labels, with the "
                         "same tokenizer (e.g. the full-depth model the student replaces).")
    weight: float = Field(0.5, ge=0, le=1, description="The share of the loss that matches the teacher's probabilities; "
                          "the rest is the labels' cross-entropy.")
    temperature: float = Field(2.0, gt=0, description="Both models' logits are divided by this before they are matched "
                               "(the matching loss is scaled by its square): softer probabilities carry more of what "
                               "the teacher ranks below its first choice.")


class TrainConfig(Section):
    """The training loop: optimisation, schedule, regularisation, evaluation, checkpoints."""

    epochs: float = Field(
        1.0, gt=0, description="Passes over the training data (ignored when max_steps is set); small data gets more "
        "through min_steps. One pass, not three: on SST-2 (67k) validation peaked after the first pass at every "
        "setting tried, and one epoch with its full decay scored 0.9014 against 0.8888 for three, in a third of the time.")
    min_steps: int = Field(
        1000, ge=0, description="Small data: train at least this many steps (more epochs), but at most max_epochs. 0 turns it off.")
    min_steps_per_label: int = Field(
        25, ge=0, description="Many labels: train at least this many steps per label (77 intents -> 1925 steps), same cap; "
        "measured on Banking77 (1000 steps: 0.907 test accuracy, 2000: 0.927).")
    max_epochs: float = Field(20.0, gt=0, description="Cap on the epochs that min_steps and min_steps_per_label may add.")
    max_steps: int | None = Field(None, ge=1, description="Train exactly this many optimizer steps (overrides the three above).")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step and process group (global batch, split over processes).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches summed per optimizer step (memory: batch_size / this per micro-batch).")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; none: the method's measured default (full 1e-4, lora 1e-3, ...; see `tunelab methods`).")
    head_learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate of the newly initialised task head (e.g. the classifier); none: "
        "the method's default, which is the body's rate except where a method measured better.")
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="Layer-wise learning-rate decay: each transformer layer learns at this times the rate "
        "of the layer above (embeddings below the bottom layer); 1: one rate for the whole body. 0.8 lifted full SST-2 "
        "but lowered Banking77 and FPB 50Agree (BENCHMARKS.md), hence not the default.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    lazy_embeddings: bool = Field(
        True, description="On CPU with AdamW, compute only the word-embedding rows of each batch's tokens (sparse "
        "gradient): the dense update of the whole matrix was ~10% of a MiniLM step. A row a batch skips gets the "
        "skipped steps' momentum and weight decay when it is next read, so the result is dense AdamW's (to float "
        "rounding and eps). false: the dense update.")
    ema_steps: int | None = Field(
        None, ge=1, description="Evaluate and save a moving average of the weights instead of the last ones: an "
        "exponential moving average with a time constant of this many steps (at most a tenth of the run's), e.g. "
        "500; none: the last weights. Steadier mid-run checkpoints, level on held-out data at the end of the "
        "benchmark runs for ~8% more memory, hence off by default (BENCHMARKS.md, benchmarks/weight_average.py).")
    ema_every: int = Field(4, ge=1, description="Update the average every N steps, with the decay of N steps: its "
                           "cost is one pass over the weights per update.")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay; never applied to biases and LayerNorm weights.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    sgd_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate decay after warmup.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of the steps spent warming the learning rate up from 0.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; none: no clipping.")
    dropout: float | None = Field(
        0.0, ge=0, lt=1, description="Override the model's dropout (hidden and attention); none keeps the checkpoint's. 0 is faster on CPU and measured as accurate for short fine-tuning.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none", description="Loss weights per class: 'balanced' (inverse frequency) or one weight per label.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'bf16': autocast matmuls to bfloat16; 'auto': bf16 where the CPU has AMX/AVX512-BF16 or the GPU supports it.")
    activation_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them: less "
        "memory, about a third more compute. On CPU activations dominate training memory, so this, not the method, "
        "is what cuts it (see BENCHMARKS.md).")
    fsdp: bool = Field(
        False, description="With several processes (accelerate launch / torchrun), shard the weights, gradients and "
        "optimizer state over them (FSDP2, each transformer layer a unit) instead of a whole copy in each (DDP): "
        "for models larger than one device's memory. Checkpoints are saved sharded, the model folder whole. One "
        "process: no effect.")
    packing: bool = Field(
        False, description="Causal LM: pack several short conversations into each training row of up to "
        "model.max_length tokens, none attending to another (positions restart at each; transformers masks across "
        "them): fewer padded tokens on short data. batch_size then counts packed rows. On a 2-core CPU it trained "
        "Banking77 slower per token than length-grouped padded batches (about 105 against 190 tokens/s).")
    group_by_length: bool | None = Field(
        None, description="Batch texts of similar length together (less padding), order still shuffled; none: the "
        "task's default, on for encoders, off for causal LMs, whose like-length conversations are often alike (the "
        "demo's one-epoch LoRA SFT: validation loss 0.26 grouped, 0.054 not; BENCHMARKS.md, SFT against TRL).")
    pad_to_multiple_of: int = Field(
        1, ge=1, description="Pad each training batch's length up to a multiple of this. 8 cut the training memory by a "
        "third on SST-2 (fewer batch shapes: oneDNN keeps kernels and buffers per shape) for 8-22% of the speed, same "
        "accuracy over three seeds (BENCHMARKS.md, methods). 1: pad to the longest text.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate on validation every N optimizer steps; none: once per epoch.")
    checkpoint_every: int | None = Field(None, ge=1, description="Save a resumable checkpoint every N steps; none: at every evaluation, and at least every 500 steps.")
    keep_checkpoints: int = Field(1, ge=1, description="How many recent checkpoints to keep.")
    metric: str | None = Field(
        None, description="Validation metric that picks the best model and drives early stopping; none: accuracy (micro_f1 for multi-label).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement; none: never.")
    log_every: int = Field(10, ge=1, description="Log the training loss every N steps.")
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        ["tensorboard"], description="Experiment trackers (via accelerate). W&B runs offline unless WANDB_MODE says otherwise.")
    seed: int = Field(42, description="Seed of initialisation, dropout and data order.")
    distill: DistillConfig | None = Field(None, description="Learn from a trained teacher model's probabilities as well "
                                          "as from the labels (single-label classification); none: the labels only.")


class EvaluateConfig(Section):
    """Evaluation after training and by `tunelab evaluate`."""

    batch_size: int = Field(128, ge=1, description="Examples per forward pass.")
    calibration_bins: int = Field(15, ge=2, description="Bins of the reliability diagram and expected calibration error.")
    generate_examples: int = Field(
        32, ge=0, description="Causal LM: answers generated (greedy) for this many conversations of the split, scored "
        "against the references (exact match, token F1, ROUGE-L) and shown beside the base model's.")
    max_new_tokens: int = Field(128, ge=1, description="Causal LM: the longest answer generated in an evaluation, in tokens.")


class TuneConfig(Section):
    """Hyperparameter search (`tunelab tune`): each trial is a normal training run in <runs_dir>/<name>/trial-<n>/."""

    space: dict[str, list | dict] = Field(
        default_factory=dict, description="Dotted config key -> a list of choices, or a range {uniform|log_uniform|int|log_int: "
        "[low, high], step: s}. Keys under method.<name>. apply only to trials of that method.")
    sampler: Literal["grid", "random", "tpe"] = Field(
        "tpe", description="'grid': every distinct combination (lists only); 'random'; 'tpe': Bayesian (optuna's TPE).")
    pruner: Literal["none", "median", "hyperband"] = Field(
        "median", description="Stop a trial early when its validation score (reported at each evaluation; set "
        "train.eval_every) trails: 'median' of earlier trials at the same step, or 'hyperband'.")
    n_trials: int | None = Field(
        20, ge=1, description="Trials in the study, over all workers (grid: at most the grid's size; none: the whole grid).")
    timeout_minutes: float | None = Field(None, gt=0, description="A worker starts no new trial after this long; none: no limit.")
    metric: str | None = Field(None, description="Validation metric to optimise; none: train.metric (accuracy, micro_f1 for multi-label).")
    direction: Literal["auto", "maximize", "minimize"] = Field("auto", description="'auto': minimize loss and ece, maximize the rest.")
    startup_trials: int | None = Field(
        None, ge=0, description="Trials sampled at random before TPE models the results, and finished before pruning "
        "starts; none: n_trials // 4, between 2 and 10.")
    storage: str | None = Field(
        None, description="Where the study lives: none: a journal file <runs_dir>/<name>/tune/study.journal; a file path "
        "(journal, shared by workers on one machine or a shared disk); or a database URL (postgresql://..., mysql://...) "
        "for workers on several machines.")
    seed: int = Field(42, description="Seed of the sampler.")

    @field_validator("space")
    @classmethod
    def _space_entries_parse(cls, value: dict) -> dict:
        from tunelab.search_space import parse_param

        for key, spec in value.items():
            try:
                parse_param(key, spec)
            except ValueError as exc:
                raise ValueError(f"space key {key!r}: {exc}") from None
        return value


class AlertRule(Section):
    """One alert: fires when a monitored figure crosses its limit at a check, resolves when it is back."""

    name: str = Field(description="Name shown in events, the dashboard and the Prometheus gauge.")
    metric: Literal["label_psi", "label_chi2_p", "length_psi", "length_ks_p", "confidence_psi", "confidence_ks_p",
                    "unknown_rate_increase", "embedding_auc", "live_accuracy", "live_macro_f1", "accuracy_drop",
                    "p95_latency_ms", "error_rate", "ttft_p50_ms", "ttft_p95_ms", "tokens_per_s_p50",
                    "length_stop_rate", "generation_error_rate", "live_approval"] = Field(
        description="What is watched: drift of the live window against the training profile (psi, p-values, the "
        "domain classifier's AUC on embeddings, unknown-token rate minus training's), live accuracy from feedback "
        "(accuracy_drop: validation accuracy minus live accuracy), p95 latency or 5xx rate over the window; for a causal "
        "LM, over its last answers: time to first token, decoding tokens/s, the share cut by max_tokens, the share "
        "that failed, and live approval (the share of rated answers rated good).")
    above: float | None = Field(None, description="Fire when the figure is above this.")
    below: float | None = Field(None, description="Fire when the figure is below this (p-values, accuracy).")
    p_value_below: float | None = Field(
        None, gt=0, lt=1, description="For label_psi, length_psi and confidence_psi: fire only when the paired test "
        "(chi-square, Kolmogorov-Smirnov) is also significant at this level. PSI alone over 100 predictions crossed 0.2 "
        "in 27 of 100 same-distribution windows; with p < 0.01 as well, in 2 (benchmarks/drift_psi_replay.py).")

    @model_validator(mode="after")
    def _one_limit(self):
        if (self.above is None) == (self.below is None):
            raise ValueError(f"alert '{self.name}': give exactly one of above / below")
        if self.p_value_below is not None and self.metric not in PAIRED_TESTS:
            raise ValueError(f"alert '{self.name}': p_value_below applies to {', '.join(PAIRED_TESTS)} only")
        return self


PAIRED_TESTS = {"label_psi": "label_chi2_p", "length_psi": "length_ks_p", "confidence_psi": "confidence_ks_p"}


DEFAULT_ALERTS = [
    {"name": "label_drift", "metric": "label_psi", "above": 0.2, "p_value_below": 0.01},
    {"name": "length_drift", "metric": "length_psi", "above": 0.2, "p_value_below": 0.01},
    {"name": "confidence_drift", "metric": "confidence_psi", "above": 0.2, "p_value_below": 0.01},
    {"name": "unknown_tokens", "metric": "unknown_rate_increase", "above": 0.02},
    {"name": "embedding_drift", "metric": "embedding_auc", "above": 0.75},
    {"name": "accuracy", "metric": "accuracy_drop", "above": 0.05},
    {"name": "latency", "metric": "p95_latency_ms", "above": 500.0},
    {"name": "errors", "metric": "error_rate", "above": 0.05},
    {"name": "time_to_first_token", "metric": "ttft_p95_ms", "above": 2000.0},
    {"name": "generation_errors", "metric": "generation_error_rate", "above": 0.05},
]


class MonitorConfig(Section):
    """What `tunelab serve` records and watches: prediction log, feedback, drift, alerts (serve.monitor)."""

    enabled: bool = Field(True, description="Log predictions and watch drift; off: the server keeps no log.")
    database: str | None = Field(
        None, description="SQLAlchemy URL of the prediction log (sqlite:///path.db, postgresql+psycopg://user@host/db); "
        "none: monitor.db (SQLite) in the first model's run folder.")
    store_text: bool = Field(True, description="Store each text in the log; off: only its SHA-256 (privacy).")
    flush_interval_s: float = Field(
        1.0, gt=0, description="With durability async, predictions are written in batches this often, off the request "
        "path; a crash (SIGKILL) can lose at most about this much of the answered predictions.")
    durability: Literal["async", "sync"] = Field(
        "async", description="async: answer first, write within flush_interval_s. sync: answer only once the "
        "request's predictions are committed (concurrent requests share one transaction), so a crash loses no "
        "answered prediction, at a cost in latency and throughput (measured: benchmarks/serve_durability.py).")
    retention_days: float | None = Field(30.0, gt=0, description="Delete log rows older than this; none: keep all.")
    window: int = Field(500, ge=10, description="Drift compares the last this many predictions (per model) with the profile.")
    min_window: int = Field(100, ge=10, description="No drift figure before the window holds this many predictions.")
    check_every_s: float = Field(10.0, gt=0, description="How often drift, accuracy and alerts are evaluated (a check costs ~0.2 s of CPU).")
    accuracy_window: int = Field(200, ge=1, description="Live accuracy over the last this many predictions with feedback.")
    min_feedback: int = Field(
        100, ge=1, description="No live accuracy before this many predictions have feedback (at 0.9 accuracy, 100 answers "
        "still vary by +-3 points: fewer would make the accuracy alert fire on chance).")
    alerts: list[AlertRule] = Field(default_factory=lambda: [AlertRule(**a) for a in DEFAULT_ALERTS],
                                    description="Alert rules; the defaults cover every drift statistic, accuracy, latency and errors, and a causal "
                                    "LM's time to first token and failed answers.")
    webhook_url: str | None = Field(None, pattern=r"^https?://\S+$",
                                    description="POST each firing/resolved event here as JSON (never blocks serving).")
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook call.")
    webhook_retries: int = Field(3, ge=0, description="Retries of a failed webhook call (1 s, 2 s, 4 s ... apart).")

    @model_validator(mode="after")
    def _windows(self):
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) is larger than window ({self.window}): drift would never be computed")
        if self.min_feedback > self.accuracy_window:
            raise ValueError(f"min_feedback ({self.min_feedback}) is larger than accuracy_window ({self.accuracy_window})")
        return self


class ServeConfig(Section):
    """`tunelab serve`: the HTTP server, its batching, limits and keys (a `serve:` section, or --config FILE)."""

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="torch backend: fp32, or bf16 (an encoder: bf16 autocast; a causal LM: its weights in "
        "bf16: 1.35x the tokens/s on a CPU with bf16 instructions, and greedy answers that differ from fp32's). ONNX "
        "folders run as exported.")
    threads: int | None = Field(None, ge=1, description="Threads for the model (torch: threads of each call; ONNX: one-thread calls run at once, and a lone call on this many threads while that measures faster, timed on the lone calls themselves and again after every 1000); none: the cores.")
    max_batch_size: int = Field(
        256, ge=1, description="Most texts handed to the model at once, from one or several requests (the model cuts "
        "them into calls by length and cores). As many as max_texts_per_request: every hand-off costs a pause of "
        "the model, so requests of many texts go through faster in large ones.")
    max_wait_ms: float = Field(
        0.0, ge=0, description="How long a batch waits for more texts after its first one. 0: no wait -- a batch is "
        "whatever queued up while the model was busy, so a lone request never waits and a busy server still batches.")
    max_queue: int = Field(1024, ge=1, description="Most texts waiting per model; beyond it requests get 503 + Retry-After.")
    prefix_cache_mb: float = Field(
        64.0, ge=0, description="Causal LMs: memory for the keys and values of recent prompts (per model), so that a prompt "
        "beginning as an earlier one (the chat template and system prompt, few-shot examples, a conversation's earlier "
        "turns) reads only the rest; least recently used dropped first. 0: off.")
    max_texts_per_request: int = Field(256, ge=1, description="More texts in one request -> 413.")
    max_chars_per_text: int = Field(20000, ge=1, description="A longer text -> 422.")
    max_body_bytes: int = Field(2_000_000, ge=1, description="A larger request body -> 413.")
    too_long: Literal["truncate", "reject"] = Field(
        "truncate", description="Texts over the model's max_length tokens: cut (as in training) or refuse with 422.")
    api_keys_env: str = Field("TUNELAB_API_KEYS", description="Environment variable with accepted API keys (comma-separated); unset: no keys from env.")
    api_keys_file: Path | None = Field(None, description="File with one accepted API key per line. With any key set, /v1/* needs 'Authorization: Bearer KEY'.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty: CORS off.")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM/Ctrl-C: stop accepting, finish accepted requests for up to this long.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Prediction log, drift, alerts, dashboard.")


MethodConfig = create_model(  # name + one sub-section per method that has settings, straight from the registry
    "MethodConfig", __base__=Section, __doc__="How the model is fine-tuned: which weights train, what is added.",
    name=(Literal[tuple(METHODS)], Field("full", description="Fine-tuning method: " + "; ".join(
        f"'{n}': {m.__doc__.strip().splitlines()[0]}" for n, m in METHODS.items()))),
    **{n: (m.Settings, Field(default_factory=m.Settings, description=f"Settings of method '{n}'."))
       for n, m in METHODS.items() if hasattr(m, "Settings")})


def _folder_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError("must be a folder name: letters, digits, '.', '_' and '-', starting with a letter or digit")
    return value


FolderName = Annotated[str, AfterValidator(_folder_name)]  # a run's (or an app's) name: it becomes a folder


class Config(Section):
    """A whole tunelab run. Sections map 1:1 onto the pipeline stages."""

    name: FolderName = Field(description="Run name; everything the run writes goes to <runs_dir>/<name>/.")
    runs_dir: Path = Field(Path("runs"), description="Folder holding the run directories.")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


    @model_validator(mode="after")
    def _settings_fit_the_task(self) -> Config:
        """Settings that cannot work together, refused when the config is read: before `--overwrite` clears a run."""
        causal = self.task.name == "causal_lm"
        if causal and self.method.name == "head":
            raise ValueError("method.name: 'head' trains a new task head, and a causal LM has none (its head is "
                             "pretrained); use lora, ia3, prompt, adapter, freeze or full")
        if causal and self.method.name == "prefix":
            raise ValueError("method.name: 'prefix' does not generate with a causal LM here; use prompt (virtual "
                             "tokens in front of the input), lora, ia3, adapter, freeze or full")
        if self.train.packing and not causal:
            raise ValueError(f"train.packing: only a causal LM's conversations are packed, not {self.task.name} rows")
        if self.train.fsdp and self.train.ema_steps:
            raise ValueError("train.ema_steps does not work with train.fsdp (the average would hold a whole copy of "
                             "the weights that FSDP shards); turn one off")
        if self.train.packing and self.method.name == "prompt":  # peft drops position_ids for prompt tuning
            raise ValueError("train.packing does not work with method 'prompt' (peft ignores the positions that keep "
                             "packed conversations apart); turn one off")
        return self

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def learning_rate(self) -> float:
        """train.learning_rate, or the method's default when it is not set."""
        return self.train.learning_rate or METHODS[self.method.name].LEARNING_RATE

    @property
    def head_learning_rate(self) -> float:
        """train.head_learning_rate, or the method's HEAD_LEARNING_RATE, or the body's rate."""
        return self.train.head_learning_rate or getattr(METHODS[self.method.name], "HEAD_LEARNING_RATE", None) \
            or self.learning_rate


# ---------------------------------------------------------------- loading

class _YamlLoader(yaml.SafeLoader):
    """YAML as people write it: PyYAML (YAML 1.1) reads 1e-5 or 3E4 as strings; here they are numbers, as in
    YAML 1.2 and JSON (a search range {log_uniform: [1e-5, 1e-3]} must not arrive as two strings)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of the YAML (paths to shared data, secrets)."""
    if isinstance(value, str):
        def repl(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}}); set it or write ${{{name}:-default}}")
        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def apply_override(raw: dict, override: str) -> None:
    """Set one dotted `key=value` override (value parsed as YAML) in the raw config dict."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.path=value (e.g. data.seed=7)")
    try:
        value = read_yaml(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc.problem})") from None
    set_key(raw, key.strip(), value, f"override {override!r}")


def set_key(raw: dict, key: str, value: Any, what: str = "key") -> None:
    """Set the dotted `key` (e.g. train.learning_rate) of a raw config dict, making sections on the way."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed in the section that `loc` (a pydantic error location) points into."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(exc: ValidationError, source: str, schema: type[BaseModel] | None = None) -> ConfigError:
    """One line per problem, naming the key (`schema`: the config class validated; default Config)."""
    schema = schema or Config
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; allowed here: {', '.join(_allowed_keys(schema, loc))}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif not loc:  # a check across sections: its message names the keys
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg} (got {err['input']!r})")
    return ConfigError(f"invalid config {source}:\n" + "\n".join(lines))


def load_config(path: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or a dict), apply dotted `key=value` overrides, validate it.

    Errors name the YAML key path, the bad value and what is allowed.
    """
    if isinstance(path, dict):
        raw, source = dict(path), "(dict)"
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {source}: {exc}") from None
        try:
            raw = read_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {source} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {source} must be a mapping of sections (name:, data:, model:, ...)")
    for override in overrides:
        apply_override(raw, override)
    raw = _expand_env(raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def dump_config(config: Config) -> str:
    """The fully resolved config as YAML (defaults filled in), loadable again by `load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """{"train": {"seed": 1}} -> {"train.seed": 1}: configs compared key by key (resume, search restarts)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def default_setting(config: Config, key: str):
    """The default of the dotted setting `key` ("train.fsdp") as dump_config writes it; a unique marker when the
    key names no setting with a default."""
    section, _, name = key.rpartition(".")
    owner = config
    for part in filter(None, section.split(".")):
        owner = getattr(owner, part, None)
    field = type(owner).model_fields.get(name) if isinstance(owner, BaseModel) else None
    if field is None or field.is_required():
        return _NO_DEFAULT
    value = field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else json.loads(json.dumps(value, default=str))


_NO_DEFAULT = object()


def config_schema() -> dict:
    return Config.model_json_schema()
