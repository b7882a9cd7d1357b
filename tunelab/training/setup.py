"""Everything a training builds before its first step, in one object the loop's parts share (`Run`)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab import allocator
from tunelab.config import Config, dump_config
from tunelab.data.clean import cleaning_settings
from tunelab.errors import TunelabError
from tunelab.hub import load_tokenizer, resolve_model
from tunelab.methods import METHODS
from tunelab.methods.parts import count_parameters, enable_activation_checkpointing
from tunelab.methods.store import apply_method
from tunelab.models.card import ModelCard
from tunelab.tasks import task_for
from tunelab.tasks.encoding import Encoded, cached_encode
from tunelab.training.checkpoint import LoopState
from tunelab.training.lazy_rows import LazyRows, lazy_word_embeddings
from tunelab.training.optim import build_optimizer, build_scheduler
from tunelab.training.sharding import forget_cpu_sharding, fsdp_plugin, shard_cpu_processes, sharded, unit_per_layer
from tunelab.training.weight_average import WeightAverage

CHECKPOINT_AT_LEAST_EVERY = 500  # steps, when train.checkpoint_every is unset (~1 s per checkpoint of a MiniLM)


@dataclass
class Run:
    """One training: its config, accelerator, data, model, optimizer and where the loop is."""

    config: Config
    accelerator: object
    task: object  # tasks/base.py
    tokenizer: object
    train_enc: Encoded
    val_enc: Encoded
    model: torch.nn.Module  # as accelerate prepared it (DDP-wrapped with several processes, or sharded: train.fsdp)
    unwrapped: torch.nn.Module  # the model itself: evaluated and saved
    optimizer: torch.optim.Optimizer
    scheduler: object
    card: ModelCard  # what each saved model folder's tunelab.json says (validation figures filled in later)
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    checkpoint_every: int
    weights: torch.Tensor | None = None  # class weights of the loss
    lazy: LazyRows | None = None
    average: WeightAverage | None = None
    teacher: torch.Tensor | None = None  # train.distill: the teacher's logits for every training row
    state: LoopState = field(default_factory=LoopState)
    body_group: int = 0  # the optimizer group whose rate is logged
    say: object = print

    @property
    def cfg(self):
        return self.config.train

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def with_types(self) -> bool:
        return getattr(self.task, "pair", False) and "token_type_ids" in self.tokenizer.model_input_names


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:
        return False


def precision(setting: str) -> str:
    if setting == "bf16" or (setting == "auto" and bf16_available()):
        return "bf16"
    return "no"


def planned_steps(cfg, steps_per_epoch: int, num_labels: int = 2) -> int:
    """epochs, stretched on small data (or many labels) to min_steps or min_steps_per_label x labels, but
    never past max_epochs."""
    steps = math.ceil(cfg.epochs * steps_per_epoch)
    wanted = max(cfg.min_steps, cfg.min_steps_per_label * num_labels)
    stretched = min(wanted, math.ceil(cfg.max_epochs * steps_per_epoch))
    return max(1, steps, stretched)


def _fresh_accelerator_state() -> None:
    """accelerate keeps one global state per process and refuses a second Accelerator with other settings
    (precision, trackers). Several trainings in one process (tests, searches, notebooks) each get a fresh one;
    the process group (PartialState), if any, is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    forget_cpu_sharding()


def setup(config: Config, quiet: bool, clear_run) -> Run:
    """The accelerator, the prepared and encoded data, the model with its method, the optimizer and schedule.
    `clear_run(run_dir)` is called on the main process when the run starts again (--overwrite)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    from tunelab.data import prepare

    cfg, run_dir = config.train, config.run_dir
    onednn_cache = allocator.bound_onednn_cache()
    # the model before the data: a model that cannot be had (offline, wrong id) fails in seconds, not after them
    source = resolve_model(config.model.name, config.model.revision)
    tokenizer = load_tokenizer(source, config.model.revision, config.model.trust_remote_code)
    if config.model.layers is not None:  # likewise more layers than the checkpoint has
        from tunelab.tasks.base import pretrained_config

        pretrained_config(source, config.model.revision, config.model.trust_remote_code, layers=config.model.layers)
    if cfg.distill is not None:  # and a teacher that is not there, before --overwrite clears anything
        from tunelab.models.predictor import find_model_dir

        find_model_dir(cfg.distill.teacher)
    _fresh_accelerator_state()
    no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    plugin = fsdp_plugin(cfg.fsdp)
    accelerator = Accelerator(
        cpu=no_accelerator,  # on CPU, accelerate picks multi-process DDP (gloo) only when told it is CPU
        # our batches are global and split over processes: the scheduler must step once per optimizer step
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        mixed_precision=precision(cfg.precision), log_with=list(cfg.trackers) or None, fsdp_plugin=plugin,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tb")))
    shard_cpu_processes(accelerator, plugin)
    main = accelerator.is_main_process
    say = (lambda m: None) if (quiet or not main) else (lambda m: print(m, file=sys.stderr, flush=True))
    if clear_run is not None and main:
        clear_run(run_dir)
    accelerator.wait_for_everyone()

    with accelerator.main_process_first():
        prepared = prepare(config, quiet=quiet or not main, tokenizer=tokenizer)
    if main:
        (run_dir / "config.yaml").write_text(dump_config(config))

    task = task_for(config, prepared)
    cache = run_dir / "data" / "tokens"
    tokenizer_id = f"{config.model.name}@{config.model.revision}"
    with accelerator.main_process_first():
        train_enc, val_enc = (cached_encode(prepared.files[s], cache, tokenizer, task, config.model.max_length, tokenizer_id)
                              for s in ("train", "validation"))
    if len(train_enc) == 0:
        raise TunelabError(f"{prepared.files['train']}: the training split is empty")
    if cfg.packing:  # a causal LM's (config.py refuses it elsewhere)
        examples = len(train_enc)
        train_enc = task.pack(train_enc, config.model.max_length)
        say(f"train: packed {examples} conversations into {len(train_enc)} rows of up to {config.model.max_length} "
            f"tokens ({train_enc.lengths.sum() / (len(train_enc) * config.model.max_length):.0%} full)")

    set_seed(cfg.seed)
    attention = config.model.attention
    if attention == "auto":
        attention = "eager" if accelerator.device.type == "cpu" else "sdpa"
    model = task.build_model(source, cfg.dropout, config.model.revision, config.model.trust_remote_code, attention,
                             config.model.layers)
    model = apply_method(model, config.method)
    if cfg.activation_checkpointing:
        if config.method.name == "prefix":  # the prefix rides in the attention cache, which a recompute would extend twice
            raise TunelabError("train.activation_checkpointing does not work with method 'prefix'; turn one off")
        enable_activation_checkpointing(model)
    parameters = count_parameters(model)
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = cfg.max_steps or planned_steps(cfg, steps_per_epoch, task.num_labels)
    optimizer = build_optimizer(model, cfg, config.learning_rate, config.head_learning_rate, cfg.layer_lr_decay)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    # (a sharded embedding matrix has no rows of its own to update lazily)
    lazy = (lazy_word_embeddings(model, optimizer)
            if cfg.lazy_embeddings and accelerator.device.type == "cpu" and not sharded(accelerator) else None)
    average = None
    if cfg.ema_steps:
        # every trained weight but the lazily updated word embedding (averaging it would read every row at every
        # update, the cost the lazy update avoids); time constant ema_steps, at most a tenth of the run, or a
        # short run would average in its start
        averaged = [p for p in model.parameters() if p.requires_grad and (lazy is None or p is not lazy.param)]
        average = WeightAverage(averaged, 1 - 1 / max(1.0, min(cfg.ema_steps, total_steps / 10)), cfg.ema_every)
    unit_per_layer(accelerator, model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    weights = task.class_weights(train_enc, cfg.class_weights)
    eval_every = cfg.eval_every or steps_per_epoch
    card = ModelCard(**{"task_options": dict(prepared.task_options), **task.card_fields()},
                     max_length=config.model.max_length, base_model=_portable_base(config.model.name),
                     method=_method_meta(config.method), threshold=config.task.multi_label_threshold or 0.5,
                     base_revision=config.model.revision, layers=config.model.layers,
                     trust_remote_code=config.model.trust_remote_code, clean=cleaning_settings(config.data),
                     parameters=parameters, run=config.name)
    run = Run(config, accelerator, task, tokenizer, train_enc, val_enc, model, accelerator.unwrap_model(model), optimizer,
              scheduler, card, total_steps, steps_per_epoch, eval_every,
              # at every evaluation, and on large data more often: one epoch of it is a single evaluation, and a
              # kill before its end would otherwise leave nothing to resume from
              cfg.checkpoint_every or min(eval_every, CHECKPOINT_AT_LEAST_EVERY),
              weights.to(accelerator.device) if weights is not None else None, lazy, average, say=say)
    if cfg.distill is not None:
        from tunelab.training.distill import teacher_logits

        run.teacher, teacher_dir = teacher_logits(cfg.distill.teacher, task, tokenizer, train_enc, run.pad_id,
                                                  run.with_types)
        run.card.distilled_from = str(teacher_dir.resolve())
        say(f"train: distilling from {run.card.distilled_from} (weight {cfg.distill.weight}, temperature "
            f"{cfg.distill.temperature})")
    # the rate logged: the body's top rate (with layer-wise decay the lower layers' are smaller, the head's may differ)
    run.body_group = min(range(len(optimizer.param_groups)),
                         key=lambda i: abs(optimizer.param_groups[i]["initial_lr"] - config.learning_rate))
    say(f"train: {len(train_enc)} examples, {total_steps} steps of {cfg.batch_size}, "
        f"method {config.method.name}, {parameters['trainable']:,} of {parameters['total']:,} parameters trainable "
        f"({parameters['trainable_percent']:.2f}%), learning rate {config.learning_rate:g}"
        + (f" (set in the config; {config.method.name}'s default is {METHODS[config.method.name].LEARNING_RATE:g})"
           if cfg.learning_rate and cfg.learning_rate != METHODS[config.method.name].LEARNING_RATE else "")
        + (f" (x{cfg.layer_lr_decay:g} per layer down)" if cfg.layer_lr_decay != 1 else "")
        + f", precision {accelerator.mixed_precision}, allocator {allocator.in_use()}"
        + (f" (oneDNN kernel cache {onednn_cache})" if accelerator.device.type == "cpu" else "") + ", "
        f"{accelerator.num_processes} process(es)" + (" (FSDP: weights, gradients and optimizer state sharded)"
                                                        if sharded(accelerator) else
                                                        " (train.fsdp: one process, nothing to shard)" if cfg.fsdp else ""))
    return run


def _portable_base(name: str) -> str:
    """How tunelab.json names the base: 'default' or a hub id as given, a local folder as an absolute path
    (an adapter run is loaded over its base later, from wherever the user then is)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name != "default" and path.is_dir() else name


def _method_meta(method_config) -> dict:
    """The method's name and settings, as stored in tunelab.json (enough to rebuild the model)."""
    settings = getattr(method_config, method_config.name, None)
    return {"name": method_config.name, **({method_config.name: settings.model_dump()} if settings else {})}
