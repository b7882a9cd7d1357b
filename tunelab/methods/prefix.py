"""trained key/value vectors prepended to every attention layer (prefix tuning, P-tuning v2).

peft's prefix tuning hands the prefix over as `past_key_values`, which transformers 5 encoders renamed
to `cache`, so peft refuses them; this small module passes the prefix in a DynamicCache instead.
"""

from __future__ import annotations

import torch
from pydantic import Field

from tunelab.methods.parts import train_only
from tunelab.settings import Section

LEARNING_RATE = 1e-1  # measured: benchmarks/methods.py --sweep
SAVES = "state"


class Settings(Section):
    virtual_tokens: int = Field(20, ge=1, description="Prefix length: key/value vectors added in front, per layer.")


class PrefixModel(torch.nn.Module):
    """The model, with a trained prefix of keys and values in front of each layer's attention."""

    def __init__(self, model: torch.nn.Module, virtual_tokens: int):
        super().__init__()
        self.model = model
        self.config = model.config
        self.prefix = torch.nn.Parameter(self._keys_values_of_tokens(virtual_tokens))

    @torch.no_grad()
    def _keys_values_of_tokens(self, n: int) -> torch.Tensor:
        """Start from the keys and values real tokens produce in each layer (random vectors of the wrong
        scale train far slower): [layers, 2, heads, n, head_dim]."""
        from transformers.cache_utils import DynamicCache

        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, self.config.vocab_size, (1, n), generator=generator) \
            if self.config.vocab_size > 1000 else torch.randint(0, self.config.vocab_size, (1, n), generator=generator)
        cache = DynamicCache(config=self.config)
        was_training = self.model.training
        self.model.eval()
        self.model(input_ids=ids.to(self.model.device), cache=cache)
        self.model.train(was_training)
        layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]
        return torch.stack(layers).float().cpu()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        from transformers.cache_utils import DynamicCache

        batch, length = input_ids.shape
        cache = DynamicCache(config=self.config)
        for index, layer in enumerate(self.prefix.to(self.model.dtype)):
            cache.update(layer[0].expand(batch, -1, -1, -1), layer[1].expand(batch, -1, -1, -1), index)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = attention_mask.new_ones(batch, self.prefix.shape[3])
        positions = torch.arange(length, device=input_ids.device).expand(batch, -1)  # the prefix takes no positions
        return self.model(input_ids=input_ids, attention_mask=torch.cat([ones, attention_mask], 1),
                          token_type_ids=token_type_ids, position_ids=positions, cache=cache, **kwargs)


def apply(model, settings: Settings, head):
    if type(model).__name__.endswith("ForCausalLM"):
        from tunelab.errors import ConfigError

        # generate() takes a filled cache as tokens already read, at positions after them, which moves every real
        # token's rotary position away from where the prefix was trained with it
        raise ConfigError("method 'prefix' does not generate with a causal LM here; use prompt (virtual tokens in "
                          "front of the input), lora, ia3, adapter, freeze or full")
    train_only(model, [getattr(model, name) for name in head])
    return PrefixModel(model, settings.virtual_tokens)
