"""`tunelab export RUN --format gguf`: a causal LM as one GGUF file (F16; Q8_0 with --quantize q8_0), the format
llama.cpp and Ollama run, written with the `gguf` package (llama.cpp's own Python writer).

What llama.cpp expects and transformers' checkpoints do not hold as such: its own tensor names (gguf's tensor name
map), the query and key projections permuted from the half-split rotary layout of Hugging Face Llama weights to
the interleaved pairs llama.cpp rotates, the vocabulary as a token list with a type per token, BPE merges, the
special tokens and chat template (gguf's SpecialVocab), and the name of the tokenizer's pre-tokenizer.

The file is checked before it is put in place: transformers' own GGUF reader (which undoes the permutation)
loads it back, and on the run's validation conversations its next-token argmax must agree with the run's model
at `min_agreement` of the answer positions; the greedy answers to the validation prompts are compared too.
Both figures are in parity.json beside the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.export.result import ExportResult
from tunelab.files import replace_folder
from tunelab.models.card import ModelCard
from tunelab.runlock import run_lock

ARCHITECTURES = {"LlamaForCausalLM": "llama"}  # HF class -> gguf architecture (Llama family: SmolLM, Llama 3, ...)
PARITY_CONVERSATIONS, PARITY_TOKENS, GREEDY_PROMPTS, GREEDY_TOKENS = 32, 256, 8, 24


def export_gguf(run: str | Path, out: str | Path | None = None, quantize: str | None = None,
                min_agreement: float = 0.97, limit: int | None = None, pre_tokenizer: str | None = None) -> ExportResult:
    """Write runs/<name>/export/gguf/<name>-<f16|q8_0>.gguf (or `out`/...) with its parity.json."""
    from tunelab.models.predictor import find_model_dir

    if quantize not in (None, "q8_0"):
        raise TunelabError(f"--quantize: a GGUF file is F16, or Q8_0 with --quantize q8_0 (not '{quantize}')")
    model_dir = find_model_dir(run)
    with run_lock(model_dir.parent, "export"):
        return _export(model_dir, out, quantize, min_agreement, limit, pre_tokenizer)


def _export(model_dir: Path, out, quantize, min_agreement: float, limit, pre_tokenizer) -> ExportResult:
    from transformers import AutoTokenizer

    from tunelab.export.merge import _validation_texts
    from tunelab.methods import METHODS
    from tunelab.models.load import load_model
    from tunelab.tasks import task_of

    card = ModelCard.read(model_dir)
    task = task_of(card)
    if not getattr(task, "generates", False):
        raise TunelabError(f"{model_dir} is a {card.task} model: GGUF is for causal LMs (llama.cpp); export it with "
                           "--format onnx")
    method = card.method_name
    if METHODS[method].SAVES == "peft" and not getattr(METHODS[method], "MERGEABLE", False):
        raise TunelabError(f"method '{method}' keeps virtual tokens outside the weights: llama.cpp cannot run them; "
                           "train with lora, ia3 or full to export a GGUF file")
    model = load_model(model_dir, card)
    if METHODS[method].SAVES == "peft":
        model = model.merge_and_unload()
    model = model.float().eval()
    architecture = (model.config.architectures or [type(model).__name__])[0]
    if architecture not in ARCHITECTURES:
        raise TunelabError(f"{model_dir}: GGUF export writes {', '.join(ARCHITECTURES)} models; this one is {architecture}")
    rope = _rope(model.config)
    if rope.get("rope_type", "default") != "default":
        raise TunelabError(f"{model_dir}: the model scales its rotary embeddings ({rope}); the GGUF writer does not "
                           "carry rope scaling yet")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pre = pre_tokenizer or _known_pre_tokenizer(card)
    if pre is None:
        raise TunelabError("llama.cpp tokenizes by the name of the model's pre-tokenizer, which a transformers folder does "
                           "not hold: give it with --pre-tokenizer NAME (what llama.cpp's convert_hf_to_gguf.py prints "
                           "for this tokenizer, e.g. llama-bpe for Llama 3, smollm for SmolLM2)")
    kind = quantize or "f16"
    out = Path(out) if out else model_dir.parent / "export" / "gguf"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        name = model_dir.parent.name
        path = tmp / f"{name}-{kind}.gguf"
        write_gguf(model, tokenizer, path, pre, quantize, name=name)
        texts, _ = _validation_texts(model_dir.parent, min(limit or PARITY_CONVERSATIONS, PARITY_CONVERSATIONS),
                                     task=task, tokenizer=tokenizer)
        parity = check_parity(model, tokenizer, task, path, texts, card.max_length)
        parity.update(file=path.name, bytes=path.stat().st_size, type=kind, pre_tokenizer=pre, min_agreement=min_agreement)
        if parity["argmax_agreement"] < min_agreement:
            raise TunelabError(f"the GGUF file's next-token argmax agrees with the model at {parity['argmax_agreement']:.4f} "
                               f"of {parity['positions']} answer positions (< {min_agreement}); nothing written")
        (tmp / "parity.json").write_text(json.dumps(parity, indent=1))
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, parity)


def _known_pre_tokenizer(card) -> str | None:
    """The default LLM's pre-tokenizer, from the GGUF file it was converted from."""
    from tunelab.hub import DEFAULT_LLM

    if card.base_model != DEFAULT_LLM:
        return None
    from gguf import GGUFReader

    from tunelab.models.default_llm import gguf_path

    return GGUFReader(gguf_path()).fields["tokenizer.ggml.pre"].contents()


# ---------------------------------------------------------------- writing


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face Llama rotates the first half of each head's dimensions with the second; llama.cpp rotates
    neighbouring pairs: reorder each head's output rows (0, d/2, 1, d/2+1, ...)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, tokenizer, path: Path, pre: str, quantize: str | None, name: str) -> None:
    import gguf

    config = model.config
    arch = ARCHITECTURES[config.architectures[0] if config.architectures else type(model).__name__]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    f16 = quantize is None
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocabulary(writer, tokenizer, config.vocab_size, pre, path.parent)
    for tensor_name, array in gguf_tensors(model):
        if array.ndim == 1:  # norms stay F32, as llama.cpp writes them
            writer.add_tensor(tensor_name, array)
        elif f16 or array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
            writer.add_tensor(tensor_name, array.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(model):
    """(llama.cpp's name, fp32 array in llama.cpp's layout) of each weight of a Llama-family model."""
    import gguf

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if (tied and hf_name == "lm_head.weight") or "rotary_emb" in hf_name:
            continue  # tied: llama.cpp reads token_embd for the output when there is no output tensor
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunelabError(f"GGUF export: no llama.cpp name for the weight {hf_name}")
        data = tensor.detach().float()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, kv_heads)
        yield name, data.numpy()


def _rope(config) -> dict:
    """The rotary settings (transformers 5: rope_parameters; before: rope_theta and rope_scaling)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def _add_vocabulary(writer, tokenizer, vocab_size: int, pre: str, folder: Path) -> None:
    """Byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen): tokens by id, a type each, merges, special tokens."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}
    if backend.get("model", {}).get("type") != "BPE" or backend["model"].get("byte_fallback"):
        raise TunelabError("GGUF export writes byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, Qwen); this "
                           f"model's is {backend.get('model', {}).get('type', type(tokenizer).__name__)}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_add_space_prefix(_byte_level_prefix_space(backend.get("pre_tokenizer")))
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    tokenizer.save_pretrained(folder / "tokenizer")  # what SpecialVocab reads: merges, special ids, chat template
    try:
        special = gguf.SpecialVocab(folder / "tokenizer", load_merges=True, n_vocab=vocab_size)
        special.add_special_token.pop("bos", None)  # written above, from what the tokenizer does
        special.add_to_gguf(writer, quiet=True)
    finally:
        shutil.rmtree(folder / "tokenizer", ignore_errors=True)


def _byte_level_prefix_space(node) -> bool:
    """Whether the ByteLevel pre-tokenizer (alone or in a Sequence) puts a space before the text."""
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            return bool(node.get("add_prefix_space", False))
        return any(_byte_level_prefix_space(child) for child in node.get("pretokenizers", []))
    return False


# ---------------------------------------------------------------- the parity gate


def check_parity(model, tokenizer, task, path: Path, texts: list[str], max_length: int) -> dict:
    """The file read back by transformers' GGUF loader against `model`: next-token argmax agreement at the answer
    positions of `texts` (conversations through the template), and identical greedy answers to their prompts."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    agree = positions = 0
    length = min(max_length, PARITY_TOKENS)
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=length, return_tensors="pt")["input_ids"]
            a, b = model(input_ids=ids).logits[0].argmax(-1), reloaded(input_ids=ids).logits[0].argmax(-1)
            agree += int((a == b).sum())
            positions += a.numel()
        same = 0
        prompts = [_prompt_of(task, tokenizer, text) for text in texts[:GREEDY_PROMPTS]]
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            args = dict(max_new_tokens=GREEDY_TOKENS, do_sample=False, temperature=None, top_p=None, top_k=None,
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            same += int(torch.equal(model.generate(ids, **args), reloaded.generate(ids, **args)))
    return {"conversations": len(texts), "positions": positions, "argmax_agreement": agree / max(positions, 1),
            "greedy_prompts": len(prompts), "greedy_identical": same, "greedy_new_tokens": GREEDY_TOKENS}


def _prompt_of(task, tokenizer, text: str) -> str:
    """A rendered conversation cut before its last answer: the prompt the model answers."""
    marker = task.prompt(tokenizer, [{"role": "user", "content": "\x00"}]).split("\x00")[-1]  # the template's tail
    head, found, _ = text.rpartition(marker)
    return head + marker if found else text
