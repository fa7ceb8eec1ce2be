"""DynamicBatcher: a lone request runs at once; requests that arrive while the engine is busy form
the next batch; an optional delay gathers a batch; batch in = batch out; errors reach every caller
of the batch and the batcher goes on."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.inference.batcher import DynamicBatcher


class Engine:
    """A runner that records its batches and can be held busy."""

    def __init__(self, replies=None) -> None:
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()
        self.replies = replies

    def __call__(self, items):
        self.batches.append(list(items))
        self.release.wait(5)
        return self.replies(items) if self.replies else [item * 10 for item in items]


def run(coro):
    return asyncio.run(coro)


def test_a_lone_request_does_not_wait_for_the_delay_it_is_not_given():
    engine = Engine()

    async def main():
        batcher = DynamicBatcher(engine, max_batch_size=16)
        start = time.perf_counter()
        reply = await batcher.submit(1)
        return reply, time.perf_counter() - start

    reply, elapsed = run(main())
    assert reply == 10 and engine.batches == [[1]]
    assert elapsed < 0.5  # the engine call in a thread, no batch timer (Ray's waited 10 ms every time)


def test_requests_that_arrive_while_the_engine_is_busy_form_the_next_batch():
    engine = Engine()
    engine.release.clear()

    async def main():
        batcher = DynamicBatcher(engine, max_batch_size=4)
        first = asyncio.ensure_future(batcher.submit(0))
        while not engine.batches:  # the first batch is running, alone
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        assert batcher.queued == 6
        engine.release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert first == 0 and rest == [10, 20, 30, 40, 50, 60]
    assert engine.batches == [[0], [1, 2, 3, 4], [5, 6]]  # at most max_batch_size, in arrival order


def test_a_delay_gathers_requests_into_one_batch():
    engine = Engine()

    async def main():
        batcher = DynamicBatcher(engine, max_batch_size=8, max_delay_s=0.2)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(2))
        return await asyncio.gather(first, second)

    assert run(main()) == [10, 20]
    assert engine.batches == [[1, 2]]


def test_a_full_batch_does_not_wait_for_the_delay():
    engine = Engine()

    async def main():
        batcher = DynamicBatcher(engine, max_batch_size=2, max_delay_s=30.0)
        start = time.perf_counter()
        replies = await asyncio.gather(batcher.submit(1), batcher.submit(2))
        return replies, time.perf_counter() - start

    replies, elapsed = run(main())
    assert replies == [10, 20] and elapsed < 5


def test_batch_in_must_equal_batch_out_and_the_batcher_goes_on():
    calls = []

    def runner(items):
        calls.append(list(items))
        return items[:-1] if len(calls) == 1 else items

    async def main():
        batcher = DynamicBatcher(runner, max_batch_size=4)
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        return failed, await batcher.submit(3)

    failed, later = run(main())
    assert calls[0] == [1, 2]  # both queued before the first batch started
    assert all(isinstance(f, RuntimeError) and "1 replies for a batch of 2" in str(f) for f in failed)
    assert later == 3


def test_an_engine_error_reaches_every_caller_of_its_batch_only():
    engine = Engine(replies=lambda items: (_ for _ in ()).throw(ValueError("bad input")) if 0 in items
                    else [i for i in items])

    async def main():
        batcher = DynamicBatcher(engine, max_batch_size=1)
        return await asyncio.gather(batcher.submit(0), batcher.submit(5), return_exceptions=True)

    bad, good = run(main())
    assert isinstance(bad, ValueError) and good == 5


def test_a_cancelled_caller_is_left_out_of_the_next_batch():
    engine = Engine()
    engine.release.clear()

    async def main():
        batcher = DynamicBatcher(engine, max_batch_size=8)
        first = asyncio.ensure_future(batcher.submit(0))
        while not engine.batches:
            await asyncio.sleep(0.001)
        gone, kept = asyncio.ensure_future(batcher.submit(1)), asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        engine.release.set()
        return await first, await kept

    assert run(main()) == (0, 20)
    assert engine.batches == [[0], [2]]


@pytest.mark.parametrize("size, delay", [(0, 0.0), (4, -1.0)])
def test_limits_are_checked(size, delay):
    with pytest.raises(ValueError, match="is given"):
        DynamicBatcher(lambda items: items, max_batch_size=size, max_delay_s=delay)
