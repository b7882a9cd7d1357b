"""The decoding engine's KV cache: transformers' DynamicCache with room to grow, the row surgery of continuous
batching, and a store of recent prompts' keys and values.

Room to grow: DynamicCache copies every layer's whole cache (torch.cat) to add each token; here a layer writes its
new columns into spare room reserved after the cached ones and copies only when the room runs out. Joining,
dropping or trimming rows makes new tensors; the next token then reserves room again.

Prompt prefixes: requests to one server mostly begin alike (the chat template, the system prompt, few-shot
examples, a conversation's earlier turns). A prompt's keys and values at its first n positions depend only on its
first n tokens, so a new prompt that begins as a stored one takes those from the store and reads only the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

SPARE_COLUMNS = 64  # room reserved per row and layer: a copy every 64 tokens instead of at every token
MAX_ENTRIES = 128  # prompts in the prefix store at most: each join compares its prompts with every one


class _RoomyLayer(DynamicLayer):
    """DynamicLayer whose keys and values are views of larger buffers, filled in place."""

    _room: tuple | None = None  # (key buffer, value buffer, the keys and values views last handed out)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        used = self.get_seq_length()
        end = used + key_states.shape[-2]
        room = self._room
        # anything that replaced keys/values (the engine's row surgery) or a full buffer: new buffers, copied once
        if room is None or room[2] is not self.keys or room[3] is not self.values or end > room[0].shape[-2]:
            buffers = []
            for old, new in ((self.keys, key_states), (self.values, value_states)):
                shape = list(new.shape)
                shape[-2] = end + SPARE_COLUMNS
                buffer = new.new_empty(shape)
                if used:
                    buffer[..., :used, :] = old
                buffers.append(buffer)
            room = (*buffers, None, None)
        room[0][..., used:end, :] = key_states
        room[1][..., used:end, :] = value_states
        self.keys, self.values = room[0][..., :end, :], room[1][..., :end, :]
        self._room = (room[0], room[1], self.keys, self.values)
        return self.keys, self.values


def new_cache() -> DynamicCache:
    """An empty cache of plain full-attention layers with room to grow, whatever the model: a sliding-window layer
    keeps counters that the engine's row surgery would not update (transformers' mask still applies the window)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = _RoomyLayer
    return cache


def filled_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache holding the given (keys, values) of each layer."""
    cache = new_cache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


def select_rows(cache: DynamicCache, index: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[index], layer.values[index]


def drop_columns(cache: DynamicCache, count: int) -> None:
    """Forget the first `count` columns (padding no row needs any more)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, count:], layer.values[:, :, count:]


def concat(cache_a: DynamicCache, mask_a: torch.Tensor, cache_b: DynamicCache, mask_b: torch.Tensor):
    """Two batches' caches and masks as one: the shorter left-padded to the longer."""
    width = max(mask_a.shape[1], mask_b.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim)
    for a, b in zip(cache_a.layers, cache_b.layers):
        a.keys = torch.cat([pad(a.keys, 2), pad(b.keys, 2)])
        a.values = torch.cat([pad(a.values, 2), pad(b.values, 2)])
    return cache_a, torch.cat([pad(mask_a, 1), pad(mask_b, 1)])


@dataclass
class _Stored:
    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [heads, columns, head_dim]
    nbytes: int


class PrefixStore:
    """The keys and values of recent prompts, the least recently used dropped past `budget_mb` (one model's) or
    MAX_ENTRIES. Keyed by the prompt's tokens and the adapter that read it (another adapter gives other keys and
    values). Columns are positions of the row: `virtual` learned tokens first (a prompt-tuned model), then the
    prompt."""

    def __init__(self, budget_mb: float, virtual: int = 0):
        self.budget = int(budget_mb * 2**20)
        self.virtual = virtual
        self.entries: OrderedDict[tuple, _Stored] = OrderedDict()
        self.nbytes = 0
        self.hits = self.reused_tokens = 0  # prompts that began as a stored one; tokens not read again

    def longest(self, prompt: list[int], adapter: str | None) -> tuple[int, _Stored | None]:
        """(columns to take, the entry) for the stored prompt sharing the longest beginning with `prompt`; at least
        one token is left to read (its logits give the first answer token)."""
        best, found = 0, None
        for (name, tokens), entry in self.entries.items():
            if name != adapter:
                continue
            common = 0
            for a, b in zip(tokens, prompt):
                if a != b:
                    break
                common += 1
            common = min(common, len(prompt) - 1)
            if common > best:
                best, found = common, entry
        if found is None:
            return 0, None
        self.entries.move_to_end((adapter, found.tokens))
        self.hits += 1
        self.reused_tokens += best
        return self.virtual + best, found

    def holds(self, prompt: list[int], adapter: str | None) -> bool:
        """Whether this very prompt is stored (then used again: the least recently used go first)."""
        key = (adapter, tuple(prompt))
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        return False

    def add(self, prompt: list[int], adapter: str | None, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.holds(prompt, adapter):
            return
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if nbytes > self.budget:
            return
        self.entries[(adapter, tuple(prompt))] = _Stored(tuple(prompt), layers, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.budget or len(self.entries) > MAX_ENTRIES:
            _, dropped = self.entries.popitem(last=False)
            self.nbytes -= dropped.nbytes


def cache_from_store(stored: list[tuple[int, _Stored | None]], past: int) -> DynamicCache:
    """The cache a join starts from: each row's (columns taken, store entry) laid right-aligned in `past` columns."""
    if not past:
        return new_cache()
    entry = next(e for _, e in stored if e is not None)
    layers = []
    for layer, (keys, values) in enumerate(entry.layers):
        batch_keys = keys.new_zeros((len(stored), keys.shape[0], past, keys.shape[2]))
        batch_values = values.new_zeros((len(stored), values.shape[0], past, values.shape[2]))
        for i, (taken, e) in enumerate(stored):
            if taken:
                batch_keys[i, :, past - taken:] = e.layers[layer][0][:, :taken]
                batch_values[i, :, past - taken:] = e.layers[layer][1][:, :taken]
        layers.append((batch_keys, batch_values))
    return filled_cache(layers)
