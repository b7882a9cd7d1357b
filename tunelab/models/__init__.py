"""Model sources and task models."""

from tunelab.models.source import DEFAULT, default_model_dir, load_tokenizer, resolve_model

__all__ = ["DEFAULT", "default_model_dir", "load_tokenizer", "resolve_model"]
