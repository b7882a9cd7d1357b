"""train.fsdp: weights, gradients and optimizer state sharded over the processes (accelerate's FSDP2) instead of a
whole copy of each in every process (DDP). For models that do not fit one device's memory.

accelerate turns FSDP on for GPU-class process groups only: with several CPU processes (gloo) it would silently
train with DDP instead. torch's FSDP2 itself runs on gloo, and every step of accelerate's FSDP path (wrapping each
transformer layer, clipping, sharded checkpoints, resume, gathering the whole model) is device-independent, so on
CPU processes tunelab sets accelerate's FSDP mode itself: the same code path a GPU cluster takes, which is how it
is tested here (tests/test_causal_lm.py and tests/test_ddp.py, two CPU processes).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError


def fsdp_plugin(enabled: bool):
    """accelerate's FSDP2 settings, or None. Each of the model's transformer layers is a unit (unit_per_layer),
    resharded after its forward pass; checkpoints are saved sharded (each process its part,
    torch.distributed.checkpoint), the model folder whole."""
    if not enabled:
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT")


def unit_per_layer(accelerator, model) -> None:
    """Each transformer layer one FSDP unit, named by the layers' own class. accelerate's default, the model's
    `_no_split_modules`, can name the embeddings too (BERT's lists BertEmbeddings), which accelerate then shards a
    second time as the input embeddings, and fails."""
    from tunelab.methods.parts import transformer_layers

    if sharded(accelerator):
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = sorted({type(layer).__name__
                                                                           for layer in transformer_layers(model)})


def shard_cpu_processes(accelerator, plugin) -> None:
    """Put several CPU processes in accelerate's FSDP mode (see the module's note); nothing otherwise."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if plugin is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    # both of accelerate's shared states: some of its code asks the process group's (PartialState), some the
    # accelerator's, which reads it again from the former when prepare() builds the model's wrapper
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def forget_cpu_sharding() -> None:
    """Undo shard_cpu_processes for a later training in the same process, which may not ask for FSDP."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState._shared_state
    if state.get("distributed_type") == DistributedType.FSDP and state.get("backend") == "gloo":
        state["distributed_type"] = DistributedType.MULTI_CPU


def sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def whole_state(accelerator, model) -> dict | None:
    """The whole model's weights on the main process when they are sharded (every process must call this: it
    gathers them), None when the model holds them itself."""
    if not sharded(accelerator):
        return None
    state = accelerator.get_state_dict(model)
    # a tied weight (a causal LM's head and input embeddings) once, under its first name, as save_pretrained
    # stores it from the model itself: gathered, the two names hold two tensors
    once = {name for name, _ in model.named_parameters()}
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - once
    return {k: v for k, v in state.items() if k not in tied} if state else state


def check_resumable(accelerator, checkpoint: Path) -> None:
    """A sharded checkpoint is read back by as many sharded processes as wrote it, a whole one by a run that is
    not sharded: said plainly, before accelerate fails on a missing file."""
    saved_sharded = (checkpoint / "pytorch_model_fsdp_0").is_dir()
    writers = len(list(checkpoint.glob("random_states_*.pkl")))
    now = accelerator.num_processes
    if saved_sharded and (not sharded(accelerator) or writers != now):
        raise TunelabError(f"{checkpoint} was saved sharded over {writers} processes (train.fsdp); resume it the same "
                           f"way (accelerate launch --multi_gpu --num_processes {writers} -m tunelab train CONFIG "
                           f"--resume), not with {now} process{'es' if now > 1 else ''}"
                           + ("" if sharded(accelerator) or now == 1 else " without FSDP"))
    if not saved_sharded and sharded(accelerator):
        raise TunelabError(f"{checkpoint} was saved by a run without FSDP; resume it with the process count it "
                           "was started with (train.fsdp shards only over several processes)")
