"""Dynamic batching for the server: requests that wait together run as one cloud forward pass.

One consumer task per event loop takes the first waiting request, adds whatever else is already queued (it
arrived while the previous forward ran, so it costs no extra latency), waits up to ``window_ms`` for more only
when others were waiting (a lone request under low load goes straight through), runs ONE forward in a worker
thread and hands every caller exactly its own rows back. The queue is bounded: a full queue raises ``QueueFull``
at once, which the server turns into 503 + Retry-After, so latency stays bounded instead of growing with load.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)
Forward = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) float32 -> (N, K), row i depends on row i only


class QueueFull(Exception):
    """More requests are waiting than the queue limit allows: answer 503 and let the client retry."""


@dataclass
class _Item:
    z: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0  # answered through the batcher
    rows: int = 0
    rejected: int = 0  # refused because the queue was full
    failed: int = 0  # forwards that raised (every caller in the batch got the error)

    def __post_init__(self) -> None:
        self.histogram: Counter[int] = Counter()  # rows per forward -> number of forwards

    def as_dict(self, waiting: int = 0) -> dict:
        forwards = sum(self.histogram.values())
        return {"waiting": waiting, "requests": self.requests, "rows": self.rows, "rejected": self.rejected, "failed": self.failed,
                "forwards": forwards, "mean_batch_rows": round(self.rows / forwards, 3) if forwards else 0.0,
                "batch_rows_histogram": {str(k): v for k, v in sorted(self.histogram.items())}}


class MicroBatcher:
    """``await submit(z)`` returns ``forward(z)``, computed inside a batch with other callers' rows.

    Args:
        forward: the cloud model; must treat rows independently (eval mode: BatchNorm uses running stats).
        window_ms: how long to wait for more rows once a batch has more than one request (0 = never wait).
        max_rows: rows per forward; a request is never split, so one larger than this runs alone.
        max_queue: requests allowed to wait (the one in the forward pass not counted); beyond it QueueFull.
    """

    def __init__(self, forward: Forward, *, window_ms: float = 0.0, max_rows: int = 64, max_queue: int = 64) -> None:
        self.forward = forward
        self.window = window_ms / 1000.0
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()  # guards the per-loop state below (a TestClient and a server may share an app)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self._carry: Optional[_Item] = None  # taken from the queue but did not fit in the last batch
        self._queued_rows = 0  # rows in the queue (not the carry)
        self._want = max_rows  # queued rows that would fill the batch being collected
        self._enough = asyncio.Event()  # set when they are there: stop waiting early

    def _start(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._executor is None:
                # One thread: forwards run one at a time, in order; the event loop keeps parsing requests meanwhile.
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-forward")
            if self._loop is not loop or self._task is None or self._task.done():
                self._loop, self._queue, self._carry, self._queued_rows = loop, asyncio.Queue(), None, 0
                self._enough = asyncio.Event()
                self._task = loop.create_task(self._consume(), name="splitshield-batcher")
            return self._queue

    async def submit(self, z: np.ndarray) -> np.ndarray:
        queue = self._start()
        if queue.qsize() >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f"{queue.qsize()} requests are already waiting (limit {self.max_queue})")
        item = _Item(z, asyncio.get_running_loop().create_future())
        queue.put_nowait(item)
        self._queued_rows += len(z)
        if self._queued_rows >= self._want:
            self._enough.set()
        return await item.future

    def refuses(self) -> bool:
        """True, and counted as a rejection, when a submit now would raise QueueFull: the server asks before it
        routes the request or reads its body (shedding.py), so that under overload a 503 costs little."""
        if self.waiting >= self.max_queue:
            self.stats.rejected += 1
            return True
        return False

    @property
    def waiting(self) -> int:
        """Requests in the queue now (not the batch being computed)."""
        return self._queue.qsize() if self._queue is not None else 0

    def _take(self, queue: asyncio.Queue) -> _Item:
        item = queue.get_nowait()
        self._queued_rows -= len(item.z)
        return item

    async def _next_batch(self, queue: asyncio.Queue) -> list[_Item]:
        if self._carry is not None:
            items, self._carry = [self._carry], None
        else:
            items = [await queue.get()]
            self._queued_rows -= len(items[0].z)
        rows = len(items[0].z)
        waited = False
        while rows < self.max_rows:
            if queue.empty():
                # Wait for more only when others were already waiting (load): alone, go straight through.
                if waited or self.window <= 0 or len(items) == 1:
                    break
                waited = True
                self._want = self.max_rows - rows
                self._enough.clear()
                if self._queued_rows < self._want:
                    try:
                        await asyncio.wait_for(self._enough.wait(), self.window)
                    except asyncio.TimeoutError:
                        pass
                self._want = self.max_rows
                continue
            item = self._take(queue)
            if rows + len(item.z) > self.max_rows:
                self._carry = item  # first in the next batch: order is kept
                break
            items.append(item)
            rows += len(item.z)
        return items

    async def _consume(self) -> None:
        queue, executor = self._queue, self._executor
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch(queue)
            rows = sum(len(it.z) for it in items)
            try:
                z = items[0].z if len(items) == 1 else np.concatenate([it.z for it in items])
                out = await loop.run_in_executor(executor, self.forward, z)
            except Exception as exc:  # noqa: BLE001  (every caller of the batch gets the error, the loop lives on)
                log.exception("cloud forward failed on a batch of %d rows", rows)
                self.stats.failed += 1
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            self.stats.histogram[len(z)] += 1
            self.stats.rows += len(z)
            self.stats.requests += len(items)
            start = 0
            for it in items:
                n = len(it.z)
                if not it.future.done():  # done = the caller went away (cancelled)
                    it.future.set_result(out[start:start + n])
                start += n

    def close(self) -> None:
        """Stop the consumer and its thread (a later submit starts them again)."""
        with self._lock:
            if self._task is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._task.cancel)
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self._task = self._executor = None
