"""Micro-batching: concurrent requests to one model share a forward pass.

A request puts its prepared image on an asyncio queue and awaits a future. One worker per
model takes the first waiting item, then whatever else arrives within a short window (or
until `max_batch` items), and runs the batch in its own thread, so the event loop keeps
accepting and decoding requests while the model computes. Under load the queue fills while a
batch runs, so the next batch is large without waiting: throughput grows with the number of
clients, and a lone request pays at most the window in extra latency.

The queue is bounded: when it is full, `submit` raises `QueueFull` at once (the API answers
503) instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """More requests are waiting for this model than the queue holds."""


@dataclass
class BatchStats:
    """What the worker did (GET /v1/models shows it): batches run, images, the largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_s: float = 0.0

    def add(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.busy_s += seconds

    def to_dict(self) -> dict[str, Any]:
        mean = self.items / self.batches if self.batches else 0.0
        return {"batches": self.batches, "items": self.items, "mean_batch": round(mean, 2), "largest_batch": self.largest, "busy_s": round(self.busy_s, 3)}


class MicroBatcher:
    """Collects items for `run_batch(items, options) -> results` (one result per item, same order).

    `max_batch` bounds a batch; `window_s` is how long the first item of a batch waits for
    company; `max_queue` bounds the items waiting. Call `start()` inside the running loop
    (the app's lifespan) and `stop()` at shutdown.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any], Sequence[Any]], list[Any]],
        max_batch: int = 32,
        window_s: float = 0.005,
        max_queue: int = 1024,
        name: str = "model",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.window_s = max(0.0, float(window_s))
        self.max_queue = int(max_queue)
        self.name = name
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[Any, Any, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        # one thread: batches of a model never overlap (CAM hooks, one torch graph at a time)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vislab-infer-{name}")

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"vislab-batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _, _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, item: Any, options: Any) -> Any:
        """The result of `item` once its batch has run; the batch's exception if it failed."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called (run the app with its lifespan)")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, options, fut))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} images are already waiting for model {self.name!r}; retry in a moment") from None
        return await fut

    async def _collect(self) -> list[tuple[Any, Any, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [entry for entry in batch if not entry[2].done()]  # a client that left no longer waits
            if not live:
                continue
            items = [entry[0] for entry in live]
            options = [entry[1] for entry in live]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, items, options)
                if len(results) != len(live):
                    raise RuntimeError(f"predict_batch returned {len(results)} results for {len(live)} items")
            except Exception as err:  # noqa: BLE001 - every waiting request gets the batch's failure
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            finally:
                self.stats.add(len(live), time.perf_counter() - start)
            for (_, _, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
