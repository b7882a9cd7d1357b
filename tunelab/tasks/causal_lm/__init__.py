"""Causal language modelling: instruction fine-tuning of GPT-style models on conversations (task.name: causal_lm)."""
