"""Dynamic batching: texts of concurrent requests go through the model together.

Requests put their texts on one bounded queue per model; a worker takes up to max_batch_size of them,
waiting at most max_wait_ms after the first for others to arrive, runs the model in a thread (the event
loop keeps serving), and hands each request its own rows, in order. A full queue refuses new work (503)
instead of growing. When a model call fails, its batch is halved and each half tried again, down to single
texts: only the requests holding a text the model fails on fail, not the others that shared its batch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    pass


@dataclass
class Row:
    """One text's share of a model call."""

    probs: np.ndarray  # the task's output for this text (label probabilities; per word for token classification)
    embedding: np.ndarray | None
    tokens: int
    unknown: int
    context: object = None  # what the task needs besides `probs` to answer (token classification: word offsets)


@dataclass
class _Item:
    text: str
    pair: str | None
    future: asyncio.Future


class Batcher:
    def __init__(self, model, max_batch_size: int, max_wait_ms: float, max_queue: int, metrics=None,
                 embeddings: bool = True):
        self.model, self.max_batch_size, self.max_wait = model, max_batch_size, max_wait_ms / 1000
        self.embeddings = embeddings  # the monitor's drift needs them; without a monitor, skip the work
        self.max_queue, self.metrics = max_queue, metrics
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model.name}")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str], pairs: list[str] | None) -> list[Row]:
        """One Row per text, in order, computed with whatever else is queued."""
        if self.queue.qsize() + len(texts) > self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        items = [_Item(t, pairs[i] if pairs else None, loop.create_future()) for i, t in enumerate(texts)]
        for item in items:
            self.queue.put_nowait(item)
        self._gauge()
        # return_exceptions: a second failed text of the same request must not be left as an unread exception
        rows = await asyncio.gather(*(item.future for item in items), return_exceptions=True)
        failed = next((r for r in rows if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        return list(rows)

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.labels(self.model.name).set(self.queue.qsize())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self._gauge()
            await self._infer(batch)

    async def _infer(self, batch: list[_Item]) -> None:
        """Run the model on `batch` and settle its items. On failure, halve and retry (2n-1 calls at worst), so that
        only the texts the model fails on fail; the server and the next batches go on either way."""
        batch = [item for item in batch if not item.future.done()]  # a client that went away
        if not batch:
            return
        texts = [item.text for item in batch]
        pairs = [item.pair for item in batch] if batch[0].pair is not None else None
        started = time.perf_counter()
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.model.infer, texts, pairs,
                                                                   self.embeddings)
        except Exception as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                await self._infer(batch[:half])
                await self._infer(batch[half:])
            elif not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        if self.metrics:
            self.metrics.batch_size.labels(self.model.name).observe(len(batch))
            self.metrics.inference_seconds.labels(self.model.name).observe(time.perf_counter() - started)
        for i, item in enumerate(batch):
            if not item.future.done():
                # copies: a kept row must not keep the whole batch's arrays alive (the monitor's window)
                item.future.set_result(Row(out.probs[i].copy(),
                                           out.embeddings[i].copy() if out.embeddings is not None else None,
                                           int(out.lengths[i]), int(out.unknown[i]),
                                           out.contexts[i] if out.contexts is not None else None))
