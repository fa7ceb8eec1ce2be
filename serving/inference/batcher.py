"""Dynamic batching that does not wait when the engine is idle.

Ray Serve's ``@serve.batch`` holds every batch open for ``batch_wait_timeout_s`` unless it fills,
so a request that arrives alone pays the whole timeout.  :class:`DynamicBatcher` works the way
Triton Inference Server's dynamic batcher does with a zero ``max_queue_delay_microseconds``: a
request that finds the engine idle runs at once, as a batch of one; requests that arrive while the
engine is busy queue, and the next batch takes all of them (up to ``max_batch_size``) as soon as
the engine is free.  Under load batches therefore grow by themselves, and nothing waits for a
timer.  ``max_delay_s`` > 0 optionally holds a batch that is not full for at most that long, to
trade latency for larger batches (Triton's non-zero queue delay).

Batch in = batch out: a runner that returns a different number of replies fails every request of
the batch with that error (as does any exception the runner raises); the batcher goes on with the
next batch.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable

RunBatch = Callable[[list[Any]], list[Any]]


class DynamicBatcher:
    """Queue items and run them in batches on a worker thread, one batch at a time.

    Parameters
    ----------
    run_batch
        Blocking function from a list of items to a list of replies of the same length; it runs
        in a thread (``asyncio.to_thread``) so the event loop keeps accepting requests.
    max_batch_size
        Most items in one batch (>= 1).
    max_delay_s
        How long a batch that is not full may wait for more items before it runs (>= 0; 0 runs at once).
    """

    def __init__(self, run_batch: RunBatch, max_batch_size: int = 16, max_delay_s: float = 0.0) -> None:
        self.run_batch = run_batch
        self.configure(max_batch_size, max_delay_s)
        self._queue: collections.deque[tuple[Any, asyncio.Future]] = collections.deque()
        self._worker: asyncio.Task | None = None
        self._arrived: asyncio.Event | None = None

    def configure(self, max_batch_size: int, max_delay_s: float) -> None:
        """Change the limits; the next batch uses them."""
        if int(max_batch_size) < 1:
            raise ValueError(f"`max_batch_size` must be at least 1, {max_batch_size!r} is given.")
        if float(max_delay_s) < 0:
            raise ValueError(f"`max_delay_s` must not be negative, {max_delay_s!r} is given.")
        self.max_batch_size, self.max_delay_s = int(max_batch_size), float(max_delay_s)

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the one running)."""
        return len(self._queue)

    async def submit(self, item: Any) -> Any:
        """The reply to ``item``, from the batch it joined."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if self._arrived is not None:
            self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run batches until the queue is empty, then end (the next submit starts a new drain)."""
        while self._queue:
            if self.max_delay_s > 0 and len(self._queue) < self.max_batch_size:
                await self._gather_for(self.max_delay_s)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            batch = [(item, future) for item, future in batch if not future.done()]  # callers gone
            if batch:
                await self._run([item for item, _ in batch], [future for _, future in batch])

    async def _gather_for(self, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        self._arrived = asyncio.Event()
        try:
            while len(self._queue) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
        finally:
            self._arrived = None

    async def _run(self, items: list[Any], futures: list[asyncio.Future]) -> None:
        try:
            replies = await asyncio.to_thread(self.run_batch, items)
            if len(replies) != len(items):
                raise RuntimeError(f"the runner returned {len(replies)} replies for a batch of {len(items)}")
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, reply in zip(futures, replies):
            if not future.done():
                future.set_result(reply)
