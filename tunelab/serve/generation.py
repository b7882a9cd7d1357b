"""Continuous batching for a causal LM: one thread decodes every running request together, one token per step;
a new request joins at the next step (after its prompt is read), a finished one leaves at once.

Why our own loop: it decodes rows of several LoRA adapters in one batch (peft's mixed batches) and prompt-tuned
models, on linear layers packed for oneDNN (packed_linear.py). Against transformers' own continuous batching
(`transformers serve --continuous-batching`, 5.25: paged attention, chunked prefill): BENCHMARKS.md,
benchmarks/llm.py. The running requests share one KV cache (kv_cache.py: transformers' `DynamicCache` with room to
grow), each row left-padded to the longest: joining pads the shorter side on the left, leaving drops rows, and
columns that became padding for every row are trimmed. Each row keeps its own positions (passed as position_ids),
so padding never shifts what a row sees; a greedy answer is the one `generate()` gives alone (tested). A prompt that
begins as a recent one takes that beginning's keys and values from the prefix store and reads only the rest.
A prompt-tuned model's learned virtual tokens are read in front of every prompt, as embeddings, when it joins.
The model is loaded on a passing thread, so that this thread has the cores' OpenMP workers to itself
(tunelab/threads.py).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

import torch

from tunelab.serve import kv_cache

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class EngineStopped(RuntimeError):
    pass


@dataclass
class Request:
    """One answer being generated. Tokens are handed to `emit(token_id | None)` (None: finished) from the
    decoding thread."""

    prompt: list[int]
    max_new_tokens: int
    emit: object  # callable(int | None, reason: str | None)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    eos: tuple[int, ...] = ()
    adapter: str | None = None  # several LoRA adapters over one base: this request's (None: the base itself)
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    generator: torch.Generator | None = None

    def sample(self, logits: torch.Tensor) -> int:
        if self.temperature <= 0:
            return int(logits.argmax())
        logits = logits.float()
        probs = torch.softmax((logits - logits.max()) / self.temperature, -1)  # no inf / NaN at tiny temperatures
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < self.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        if self.generator is None:
            self.generator = torch.Generator()
            self.generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return int(torch.multinomial(probs, 1, generator=self.generator))


class Engine:
    """The decoding thread of one causal LM. `submit` is thread-safe; `stop` finishes the running requests first."""

    def __init__(self, model, max_batch: int = 16, adapters: bool = False, virtual: torch.Tensor | None = None,
                 prefix_cache_mb: float = 64.0):
        self.model = model.eval()
        self.adapters = adapters  # a peft model with several LoRA adapters: each row runs with its own (mixed batch)
        self.virtual = virtual  # [tokens, hidden]: a prompt-tuned model's virtual tokens, put before every prompt
        self.prefixes = kv_cache.PrefixStore(prefix_cache_mb, 0 if virtual is None else len(virtual)) \
            if prefix_cache_mb > 0 else None  # recent prompts' keys and values, for prompts that begin alike
        self.max_batch = max_batch
        self.pending: queue.Queue[Request] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="tunelab-generate", daemon=True)
        self.stopping = False
        self.rows: list[Request] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 where a real token is cached
        self.positions: torch.Tensor | None = None  # [rows]: the next position of each row

    def start(self) -> None:
        if not self.thread.is_alive():  # several served names may share one engine (LoRA adapters over one base)
            self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping = True
        self.pending.put(None)  # wake the thread
        self.thread.join(timeout)

    def submit(self, request: Request) -> None:
        if self.stopping or not self.thread.is_alive():
            raise EngineStopped("the decoder is not running (the server is stopping)")
        self.pending.put(request)

    @property
    def running(self) -> int:
        return len(self.rows)

    # ---------------------------------------------------------------- the decoding thread
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                new = self._take(block=not self.rows)
                if self.stopping and not self.rows and not new:
                    self._fail(list(self._drain()), "error: the server stopped")
                    return
                try:
                    if new:
                        self._join(new)
                    if self.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 -- those requests fail; the decoder goes on for the next
                    self._fail(self.rows + [r for r in new if r not in self.rows], f"error: {type(exc).__name__}: {exc}")
                    self.rows, self.cache, self.mask, self.positions = [], None, None, None

    def _drain(self):
        while True:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                yield item

    @staticmethod
    def _fail(requests: list[Request], reason: str) -> None:
        for r in requests:
            try:
                r.emit(None, reason)
            except Exception:  # noqa: BLE001 -- a closed event loop: nobody is waiting any more
                pass

    def _take(self, block: bool) -> list[Request]:
        room = self.max_batch - len(self.rows)
        if room <= 0:
            return []
        taken = []
        try:
            item = self.pending.get(block=block and not self.stopping, timeout=0.5 if block else None)
            while True:
                if item is not None:
                    taken.append(item)
                if len(taken) >= room:
                    break
                item = self.pending.get_nowait()
        except queue.Empty:
            pass
        return [r for r in taken if not r.cancelled]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, rows: list[Request],
                 embeds: torch.Tensor | None = None):
        per_row = {"adapter_names": [r.adapter or BASE for r in rows]} if self.adapters else {}
        inputs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids}
        out = self.model(**inputs, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1, **per_row)  # the next token's logits only (a prompt's would be [width, vocab])
        return out.logits[:, -1], cache

    def _join(self, new: list[Request]) -> None:
        """Read the new prompts (together, left-padded; what begins as a stored prompt taken from the store), emit
        their first tokens, and add them to the batch."""
        virtual = 0 if self.virtual is None else len(self.virtual)
        found = [self.prefixes.longest(r.prompt, r.adapter) if self.prefixes else (0, None) for r in new]
        totals = [virtual + len(r.prompt) for r in new]  # each row's columns: virtual tokens, then the prompt
        # as few columns read as the store allows, and every row contiguous (a sliding window counts columns): a row
        # takes from the store what lies before its last `width` columns, the shorter rows are left-padded
        width = max(total - taken for total, (taken, _) in zip(totals, found))
        stored = [(max(0, total - width), entry) for total, (_, entry) in zip(totals, found)]
        past = max(taken for taken, _ in stored)
        ids = torch.zeros((len(new), width), dtype=torch.long)
        mask = torch.zeros((len(new), past + width), dtype=torch.long)
        starts = [width - (total - taken) for total, (taken, _) in zip(totals, stored)]  # each row's first column read
        for i, (r, start, (taken, _)) in enumerate(zip(new, starts, stored)):
            read = r.prompt[max(0, taken - virtual):]
            ids[i, width - len(read):] = torch.tensor(read, dtype=torch.long)
            mask[i, past + start - taken:] = 1
        embeds = None
        if any(taken < virtual for taken, _ in stored):  # learned virtual tokens to read, as embeddings, first
            embeds = self.model.get_input_embeddings()(ids)
            for i, (start, (taken, _)) in enumerate(zip(starts, stored)):
                if taken < virtual:
                    embeds[i, start:start + virtual - taken] = self.virtual[taken:]
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, past:]
        try:
            logits, cache = self._forward(ids, mask, positions, kv_cache.cache_from_store(stored, past), new, embeds)
        except Exception as exc:  # noqa: BLE001 -- only the new requests fail; the running ones go on
            self._fail(new, f"error: {type(exc).__name__}: {exc}")
            return
        if self.prefixes is not None:
            for i, r in enumerate(new):
                if self.prefixes.holds(r.prompt, r.adapter):
                    continue
                columns = mask[i].nonzero()[:, 0]
                self.prefixes.add(r.prompt, r.adapter, [(layer.keys[i][:, columns], layer.values[i][:, columns])
                                                        for layer in cache.layers])
        lengths = mask.sum(1)
        if self.rows:
            self.cache, self.mask = kv_cache.concat(self.cache, self.mask, cache, mask)
            self.positions = torch.cat([self.positions, lengths])
        else:
            self.cache, self.mask, self.positions = cache, mask, lengths
        self.rows += new
        self._advance(logits, range(len(self.rows) - len(new), len(self.rows)))

    def _step(self) -> None:
        """One token for every running row."""
        last = torch.tensor([[r.generated[-1]] for r in self.rows])
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], 1)
        logits, self.cache = self._forward(last, self.mask, self.positions[:, None], self.cache, self.rows)
        self.positions = self.positions + 1
        self._advance(logits, range(len(self.rows)))

    def _advance(self, logits: torch.Tensor, indices) -> None:
        """Sample the next token of the given rows, hand it out, and drop the rows that are done."""
        done = []
        offset = len(self.rows) - len(logits)  # a join's logits are its new rows', at the end of the batch
        for i in indices:
            r = self.rows[i]
            if r.cancelled:
                done.append(i)
                continue
            token = r.sample(logits[i - offset])
            r.generated.append(token)
            reason = "stop" if token in r.eos else ("length" if len(r.generated) >= r.max_new_tokens else None)
            if token not in r.eos:
                r.emit(token, None)
            if reason:
                r.emit(None, reason)
                done.append(i)
        if done:
            keep = [i for i in range(len(self.rows)) if i not in set(done)]
            self.rows = [self.rows[i] for i in keep]
            if not keep:
                self.cache, self.mask, self.positions = None, None, None
                return
            index = torch.tensor(keep)
            kv_cache.select_rows(self.cache, index)
            self.mask, self.positions = self.mask[index], self.positions[index]
            unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns no row needs any more
            if unused:
                self.mask = self.mask[:, unused:]
                kv_cache.drop_columns(self.cache, unused)


async def stream_tokens(engine: Engine, request_args: dict):
    """An async iterator of (token_id | None, finish_reason | None) for one request; cancelled when left early."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()
    request = Request(emit=lambda token, reason: loop.call_soon_threadsafe(out.put_nowait, (token, reason)), **request_args)
    engine.submit(request)
    try:
        while True:
            token, reason = await out.get()
            yield token, reason
            if token is None:
                return
    finally:
        request.cancelled = True
