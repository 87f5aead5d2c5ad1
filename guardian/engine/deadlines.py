# A bounded deadline queue for the engine: one deadline per key, the earliest one found in O(log n).
#
# A binary heap with lazy deletion: rescheduling or cancelling a key only updates `_live`, and
# the heap entry it leaves behind turns stale. Stale entries are skipped when they reach the top,
# and the heap is rebuilt from `_live` whenever they outnumber the live ones (plus some slack), so
# a flood of short-lived keys (spoofed knock sources being evicted) cannot grow the heap without
# bound: its size stays below 2 x live + slack, and a rebuild costs O(live) once per O(live) pushes.
from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Stale heap entries tolerated on top of the live ones before a rebuild (keeps tiny queues cheap).
COMPACT_SLACK = 64


class DeadlineQueue(Generic[K]):
    """Keys with one absolute deadline each; pop the due ones in deadline order."""

    def __init__(self) -> None:
        # (deadline, sequence number, key): the unique sequence number breaks ties, so keys (which
        # may be addresses of mixed families) are never compared with each other.
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, tuple[float, int]] = {}
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._live)

    @property
    def entries(self) -> int:
        """Heap entries held, stale ones included: what the queue costs in memory."""
        return len(self._heap)

    def schedule(self, key: K, deadline: float) -> None:
        """Set (or move) the key's deadline."""
        self._sequence += 1
        self._live[key] = (deadline, self._sequence)
        heapq.heappush(self._heap, (deadline, self._sequence, key))
        self._compact_if_mostly_stale()

    def cancel(self, key: K) -> None:
        """Forget the key's deadline; a key that has none is fine."""
        if self._live.pop(key, None) is not None:
            self._compact_if_mostly_stale()

    def earliest(self) -> float | None:
        """The earliest live deadline, or None when nothing is scheduled."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> K | None:
        """Remove and return the key with the earliest deadline if it is due (deadline <= now)."""
        self._drop_stale_top()
        if not self._heap or self._heap[0][0] > now:
            return None
        _, _, key = heapq.heappop(self._heap)
        del self._live[key]
        return key

    def _is_live(self, entry: tuple[float, int, K]) -> bool:
        deadline, sequence, key = entry
        return self._live.get(key) == (deadline, sequence)

    def _drop_stale_top(self) -> None:
        while self._heap and not self._is_live(self._heap[0]):
            heapq.heappop(self._heap)

    def _compact_if_mostly_stale(self) -> None:
        if len(self._heap) > 2 * len(self._live) + COMPACT_SLACK:
            self._heap = [(d, s, k) for k, (d, s) in self._live.items()]
            heapq.heapify(self._heap)
