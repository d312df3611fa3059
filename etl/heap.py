"""The cyclic garbage collector, for a process that polls thousands of sources at once.

CPython collects its youngest generation every 700 net allocations, and each collection
walks every young object still alive; a full collection walks every object of the oldest
generation, and one runs whenever those promoted since the last reach a quarter of it.
With 10,000 sources in flight most young objects are alive (each poll holds its request,
response and records), so the collector walked the same objects again and again: a run
of `bench/poll.py --sources 10000` (its start and three slots) made 6,466 young, 588
middle and 31 full collections, which took 33 s of CPU, while the three slots took the
poller 66 s in all. The garbage of a poll is freed by reference counting anyway; the
collector is only needed for cycles (a traceback, a finished task), and those are found
as well by rarer collections. With `settled()`: 255, 21 and 2 collections, 7 s (most of
them in the start, before it).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# young: every 100,000 net allocations (a slot of 10,000 sources makes ~1 million); the
# middle generation every 20 of those; the oldest every 10 of those (and the quarter rule)
THRESHOLDS = (100_000, 20, 10)


_depth = 0  # blocks open (tests run several daemons in one process): the outermost decides


@contextmanager
def settled() -> Iterator[None]:
    """Until the block ends: what exists now (the config's sources, pools, limiters) sits
    in the collector's permanent generation, which no collection walks (cyclic garbage
    among it waits for the end), and the collections are THRESHOLDS apart. Measured (same
    benchmark): poller CPU per source 2.2 -> 1.5 ms, peak RSS unchanged."""
    global _depth
    before = gc.get_threshold()
    if _depth == 0:
        gc.freeze()  # no collection first: it would walk the whole heap for the little garbage of a start
        gc.set_threshold(*THRESHOLDS)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.set_threshold(*before)
            gc.unfreeze()
