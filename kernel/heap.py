"""Garbage collection tuned for the server's long-running, latency-bound processes.

CPython's cyclic collector runs a young collection every 700 container allocations and, now and
then, a full one over every live container of the process. The vitals path allocates ~40
containers a message and frees them by reference counting (it makes no cycles), so at 10,000
messages a second the defaults run hundreds of collections a second, and a full collection over
a server's heap (its modules, the bridge's unacknowledged messages) stalls every thread of the
process for tens of milliseconds: 89 ms, measured in the benchmark's bridge process at 10,000
msg/s (with the benchmark's callback of then, which kept every payload in lists).

:func:`settle` is called once a process has started: what it allocated so far is moved out of
the collector's sight for good (``gc.freeze``; modules and configuration are never garbage),
and young collections run every ``YOUNG_ALLOCATIONS`` allocations. Cycles are still collected.
"""
from __future__ import annotations

import gc

#: Container allocations between young collections (CPython's default: 700).
YOUNG_ALLOCATIONS = 100_000


def settle() -> None:
    """See the module docstring."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_ALLOCATIONS, 50, 10)
