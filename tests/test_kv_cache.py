"""The decoding engine's KV cache (tunelab/serve/kv_cache.py): room to grow, row surgery, the prefix store; and a
model loaded on a passing thread (tunelab/threads.py)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from transformers.cache_utils import DynamicCache

from tunelab.serve import kv_cache
from tunelab.threads import on_passing_thread


def kv(rows, columns, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, columns, 4, generator=generator), torch.randn(rows, 2, columns, 4, generator=generator)


def test_a_layer_with_room_writes_tokens_in_place_and_holds_what_dynamiccache_holds():
    roomy, plain = kv_cache.new_cache(), DynamicCache()
    for cache in (roomy, plain):
        cache.update(*kv(3, 5, 0), 0)
    storage = roomy.layers[0].keys.untyped_storage().data_ptr()
    for step in range(kv_cache.SPARE_COLUMNS):
        for cache in (roomy, plain):
            keys, values = cache.update(*kv(3, 1, step + 1), 0)
        assert torch.equal(keys, plain.layers[0].keys) and torch.equal(values, plain.layers[0].values)
    assert roomy.layers[0].keys.untyped_storage().data_ptr() == storage  # 64 tokens, not one copy
    roomy.update(*kv(3, 1, 99), 0)
    plain.update(*kv(3, 1, 99), 0)
    assert roomy.layers[0].keys.untyped_storage().data_ptr() != storage  # the room ran out: a larger buffer
    # the engine's surgery: rows dropped, leading columns trimmed, then tokens added again
    index = torch.tensor([0, 2])
    for cache in (roomy, plain):
        kv_cache.select_rows(cache, index)
        kv_cache.drop_columns(cache, 3)
        cache.update(*kv(2, 1, 100), 0)
        keys, values = cache.update(*kv(2, 2, 101), 0)
    assert keys.shape == (2, 2, 5 + kv_cache.SPARE_COLUMNS + 1 - 3 + 3, 4)
    assert torch.equal(roomy.layers[0].keys, plain.layers[0].keys)
    assert torch.equal(roomy.layers[0].values, plain.layers[0].values)


def test_the_prefix_store_finds_the_longest_beginning_per_adapter_and_drops_the_least_recently_used():
    layers = [(torch.zeros(2, 10, 4), torch.zeros(2, 10, 4))]  # 640 bytes
    store = kv_cache.PrefixStore(budget_mb=1500 / 2**20)  # two entries fit, not three
    store.add([1, 2, 3, 4], None, layers)
    store.add([1, 2, 9], None, layers)
    assert store.longest([1, 2, 3, 7, 7], None) == (3, store.entries[(None, (1, 2, 3, 4))])
    assert store.longest([1, 2, 3, 4], None)[0] == 3  # one token is always read: its logits give the answer
    assert store.longest([1, 2, 3], "other") == (0, None)  # another adapter's keys and values differ
    assert store.longest([5, 1, 2], None) == (0, None)
    store.add([1, 2, 9], None, layers)  # already there: used again, not added twice
    store.add([8, 8], None, layers)  # over budget: the least recently used, [1, 2, 3, 4], goes
    assert [tokens for _, tokens in store.entries] == [(1, 2, 9), (8, 8)] and store.nbytes == 1280
    store.add([7], None, [(torch.zeros(2, 1000, 4), torch.zeros(2, 1000, 4))])  # larger than the budget: not kept
    assert len(store.entries) == 2 and (store.hits, store.reused_tokens) == (2, 6)
    assert kv_cache.PrefixStore(1, virtual=5).virtual == 5
    with_virtual = kv_cache.PrefixStore(1, virtual=5)
    with_virtual.add([1, 2, 3], None, layers)
    assert with_virtual.longest([1, 2, 4], None)[0] == 5 + 2  # a prompt-tuned model's virtual tokens come first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process's threads in /proc")
def test_a_passing_thread_returns_raises_and_its_parallel_workers_end_with_it():
    from servers import wait_until

    x = torch.randn(600, 600)
    assert on_passing_thread(torch.mm, x, x).equal(torch.mm(x, x))
    with pytest.raises(ValueError, match="bad"):
        on_passing_thread(int, "bad")
    threads = lambda: set(os.listdir("/proc/self/task"))  # noqa: E731 -- the process's thread ids
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the tests run on one thread each (conftest): two here, so that workers start
    try:
        before = threads()  # after set_num_threads, which may start this thread's own worker
        big = torch.randn(4_000_000)  # torch's own parallel loop (a matmul's library may keep to the environment's 1)
        started = on_passing_thread(lambda: ((big * 2).sum(), threads() - before)[1])  # it and its OpenMP worker
    finally:
        torch.set_num_threads(previous)
    assert len(started) >= 2
    wait_until(lambda: not started & threads(), 10, "the passing thread's parallel workers to end")
