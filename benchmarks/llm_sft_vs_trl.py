"""Supervised fine-tuning speed and quality against TRL's SFTTrainer, side by side in one run.

The same data (the demo conversations, data/demo/llm_*.jsonl, as tunelab's data stage prepares them: 253 support
answers to train on once the prompts of validation and test are left out, 35 to validate on), the same model (the default LLM, SmolLM2-135M-Instruct), the same LoRA (r 8, alpha 32, no dropout,
every linear layer), optimizer and schedule (AdamW, tunelab's defaults: learning rate 1e-3, linear decay after 6%
warm-up, weight decay 0.01, gradient clipping 1.0), batch 8, one epoch, sequence length 192, precision as tunelab
picks it on this CPU, the loss on the assistant's tokens only (TRL: prompt-completion rows, completion-only
loss), no packing, no gradient checkpointing (TRL's GPU default, off here as in tunelab). Throughput is each
trainer's own training time (no evaluation, no checkpoint) over the tokens of the epoch; the validation loss of
both trained models is computed by one function here (mean cross-entropy over the answers' tokens).

Figures (results/llm_sft_vs_trl.json): sft_tokens_per_second_ratio_vs_trl (target >= 1.3),
sft_val_loss_delta_vs_trl (tunelab minus TRL, target <= 0.01), and each side's tokens/s and validation loss.

    .venv/bin/pip install -e ".[bench]"                 # TRL is a benchmark dependency only
    .venv/bin/python benchmarks/llm_sft_vs_trl.py       # about 8 minutes on 2 cores
"""

from __future__ import annotations

import json
import math
import time

from _common import REPO, WORK, write_results

NAME, EPOCHS, BATCH, MAX_LENGTH = "sft-vs-trl", 1, 8, 192


def rows(run_dir, split: str) -> list[dict]:
    """The conversations of a split as tunelab's data stage prepared them (a prompt of validation or test is not
    trained on), which both trainers read."""
    import pyarrow.parquet as pq

    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    table = pq.read_table(run_dir / "data" / manifest["files"][split], columns=["messages"]).to_pydict()
    return [{"messages": json.loads(m)} for m in table["messages"]]


def prompt_and_answer(row: dict, system: str) -> tuple[list[dict], list[dict]]:
    messages = [{"role": "system", "content": system}, *row["messages"]]
    return messages[:-1], messages[-1:]


def encode(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], int]:
    """Token ids of prompt + answer through the chat template, and where the answer starts."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    assert full.startswith(prompt_text)
    first = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    rest = tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return (first + rest)[:MAX_LENGTH], len(first)


def answer_loss(model, tokenizer, examples: list[tuple[list[dict], list[dict]]]) -> float:
    """Mean cross-entropy over the answers' tokens (every token counted once), in fp32."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for prompt, answer in examples:
            ids, start = encode(tokenizer, prompt, answer)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(ids[1:])
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")[start - 1:]
            total, count = total + float(losses.sum()), count + len(losses)
    return total / count


def train_tunelab(system: str):
    from tunelab.config import load_config
    from tunelab.models.generate import Generator
    from tunelab.training import train

    config = load_config(REPO / "examples" / "demo_llm.yaml", [
        f"runs_dir={WORK / 'runs'}", f"name={NAME}", "train.max_steps=null", f"train.epochs={EPOCHS}",
        "train.min_steps=0", f"train.batch_size={BATCH}", "train.eval_every=100000", "train.trackers=[]"])
    assert config.task.system_prompt == system and config.model.max_length == MAX_LENGTH
    result = train(config, overwrite=True, quiet=True)
    generator = Generator(result.run_dir)
    return result, generator.model, generator.tokenizer, config


def train_trl(config, train_rows: list[dict], base_dir: str, system: str, precision: str):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelab.methods import METHODS

    t = config.train
    lora = config.method.lora
    data = [dict(zip(("prompt", "completion"), prompt_and_answer(r, system))) for r in train_rows]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(WORK / "trl-sft"), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
        learning_rate=t.learning_rate or METHODS["lora"].LEARNING_RATE, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,  # a float below 1: a share of the steps
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, adam_beta1=t.adam_betas[0],
        adam_beta2=t.adam_betas[1], adam_epsilon=t.adam_epsilon, max_length=MAX_LENGTH, packing=False,
        completion_only_loss=True, gradient_checkpointing=False, bf16=precision == "bf16", use_cpu=True,
        eval_strategy="no", save_strategy="no", logging_steps=1000, report_to="none", seed=t.seed,
        dataloader_num_workers=0)
    peft = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                         peft_config=peft)
    started = time.perf_counter()
    metrics = trainer.train().metrics
    seconds = time.perf_counter() - started
    return len(data) * EPOCHS / metrics.get("train_runtime", seconds), trainer.model, tokenizer


def main() -> None:
    from tunelab.models.default_llm import default_llm_dir
    from tunelab.training.setup import bf16_available

    system = "You are the support assistant of Northwind Books. Answer in one or two short sentences."
    base_dir = str(default_llm_dir())
    precision = "bf16" if bf16_available() else "fp32"  # what tunelab's precision: auto picks here
    print("tunelab: training", flush=True)
    result, ours_model, tokenizer, config = train_tunelab(system)
    ours_rate, train_rows = result.samples_per_second, rows(result.run_dir, "train")
    train_examples = [prompt_and_answer(r, system) for r in train_rows]
    tokens_per_example = sum(len(encode(tokenizer, p, a)[0]) for p, a in train_examples) / len(train_examples)
    validation = [prompt_and_answer(r, system) for r in rows(result.run_dir, "validation")]
    ours_loss = answer_loss(ours_model.float(), tokenizer, validation)
    del ours_model
    print("trl: training", flush=True)
    trl_rate, trl_model, trl_tokenizer = train_trl(config, train_rows, base_dir, system, precision)
    trl_loss = answer_loss(trl_model.float(), trl_tokenizer, validation)
    figures = {
        "precision": precision, "train_examples": len(train_examples), "validation_examples": len(validation),
        "tunelab_steps": result.steps, "epochs": EPOCHS, "batch_size": BATCH,
        "tokens_per_example": round(tokens_per_example, 1),
        "tunelab_sft_tokens_per_second": round(ours_rate * tokens_per_example, 1),
        "trl_sft_tokens_per_second": round(trl_rate * tokens_per_example, 1),
        "tunelab_sft_val_loss": round(ours_loss, 4), "trl_sft_val_loss": round(trl_loss, 4),
    }
    figures["sft_tokens_per_second_ratio_vs_trl"] = round(ours_rate / trl_rate, 3)
    figures["sft_val_loss_delta_vs_trl"] = round(ours_loss - trl_loss, 4)
    figures["targets_met"] = figures["sft_tokens_per_second_ratio_vs_trl"] >= 1.3 and \
        figures["sft_val_loss_delta_vs_trl"] <= 0.01 and not math.isnan(ours_loss)
    print(json.dumps(figures, indent=1), flush=True)
    write_results("llm_sft_vs_trl", figures)


if __name__ == "__main__":
    main()
