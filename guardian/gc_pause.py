# CPython's cyclic garbage collector paused around a burst of allocations that cannot form cycles
# (records, tuples, address objects made from a bulk read): while it runs, every 700 new tracked
# objects start a collection that walks the young ones again, and the survivors are walked again
# in the older generations. Reference counting still frees everything meanwhile; only cycles wait,
# and a burst of such objects makes none. Used by the bulk parsers and by adopting bans at start.
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """The collector off meanwhile, and after as it was (a caller that had it off keeps it off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
