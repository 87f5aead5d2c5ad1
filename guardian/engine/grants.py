# Grants: which sources may pass the gate, in which state, until when. The whole life cycle of a
# grant is in this file, as a table.
#
# Theory of operation
# -------------------
# A grant is the engine's record of one source being allowed through the guarded ports. The kernel
# holds the same fact as a set element with its own timeout (fail safe: if the daemon dies, access
# lapses by itself); the engine decides when that element is added, refreshed and removed.
#
# Every source is in exactly one state. A source without a record is CLOSED; CLOSED is never stored.
# Each state has at most one deadline, kept in a DeadlineQueue; what the deadline means depends on
# the state (WINDOW: the end of the window for a first connection).
#
#     state    trigger    -> state    action out
#     -------  ---------  -  -------  -------------------------------------------------------------
#     CLOSED   OPEN       -> WINDOW   OpenGrant(timeout)  (a knock completed, the operator asked)
#     CLOSED   ADOPT      -> WINDOW   none, or RefreshGrant(window) if the kernel element had no
#                                     timeout (found in the kernel at start: adopted, not added)
#     WINDOW   OPEN       -> WINDOW   RefreshGrant(timeout); the window restarts
#     WINDOW   ADOPT      -> WINDOW   the kernel's remaining time wins (a second report; counted)
#     WINDOW   DEADLINE   -> CLOSED   RevokeGrant("window ended")
#     WINDOW   REVOKE     -> CLOSED   RevokeGrant(reason)  (close sequence, operator)
#
# Anything not in the table is unexpected but normal (watchers race, the operator revokes a source
# that has no grant): it is counted and changes nothing. A DEADLINE for a source without a record
# would be a broken internal invariant, and raises.
#
# Later states slot in as rows, not as a rewrite (planned, not implemented):
#     WINDOW     SESSION_OPENED -> IN_SESSION  (the lease is refreshed while sessions live)
#     IN_SESSION DEADLINE       -> IN_SESSION  RefreshGrant(lease)
#     IN_SESSION SESSION_CLOSED -> LINGER      (the last session ended; deadline = linger end)
#     LINGER     SESSION_OPENED -> IN_SESSION
#     LINGER     DEADLINE       -> CLOSED      RevokeGrant("linger ended")
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from guardian.actions import Action, Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.addresses import IPAddress
from guardian.engine.deadlines import DeadlineQueue

ADOPTED_DOOR = "adopted"  # door name recorded for grants found in the kernel at start
REASON_WINDOW_ENDED = "window ended"


class GrantState(StrEnum):
    CLOSED = "closed"
    WINDOW = "window"


class Trigger(StrEnum):
    OPEN = "open"
    ADOPT = "adopt"
    DEADLINE = "deadline"
    REVOKE = "revoke"


TRANSITIONS: Final[Mapping[GrantState, Mapping[Trigger, GrantState]]] = {
    GrantState.CLOSED: {
        Trigger.OPEN: GrantState.WINDOW,
        Trigger.ADOPT: GrantState.WINDOW,
    },
    GrantState.WINDOW: {
        Trigger.OPEN: GrantState.WINDOW,
        Trigger.ADOPT: GrantState.WINDOW,
        Trigger.DEADLINE: GrantState.CLOSED,
        Trigger.REVOKE: GrantState.CLOSED,
    },
}


@dataclass(slots=True)
class Grant:
    """The engine's live record of one source's grant (internal and mutable; see GrantView)."""

    source: IPAddress
    door: str
    state: GrantState
    opened_at: float
    deadline: float


@dataclass(frozen=True, slots=True)
class GrantView:
    """A grant as the outside world sees it at one instant (for status, the control socket)."""

    source: IPAddress
    door: str
    state: GrantState
    opened_at: float
    expires_at: float
    time_left: float


class GrantTable:
    """All grants, their states and deadlines; methods return what their transition calls for."""

    def __init__(self, counters: Counter[str]) -> None:
        self._counters = counters
        self._grants: dict[IPAddress, Grant] = {}
        self._deadlines: DeadlineQueue[IPAddress] = DeadlineQueue()

    def __len__(self) -> int:
        return len(self._grants)

    def __contains__(self, source: IPAddress) -> bool:
        return source in self._grants

    def get(self, source: IPAddress) -> Grant | None:
        return self._grants.get(source)

    @property
    def timer_entries(self) -> int:
        return self._deadlines.entries

    def next_deadline(self) -> float | None:
        return self._deadlines.earliest()

    def _state(self, source: IPAddress) -> GrantState:
        grant = self._grants.get(source)
        return GrantState.CLOSED if grant is None else grant.state

    def _target(self, source: IPAddress, trigger: Trigger) -> GrantState | None:
        """The state the table sends this source to, or None (counted) if the table has no row."""
        target = TRANSITIONS[self._state(source)].get(trigger)
        if target is None:
            self._counters["unexpected_events"] += 1
        return target

    # -- triggers ------------------------------------------------------------------------------

    def open(
        self, source: IPAddress, door: str, duration: float, now: float, detail: str = ""
    ) -> list[Action]:
        """OPEN: a completed knock or an operator request. New grant or refreshed window."""
        if self._target(source, Trigger.OPEN) is None:
            return []
        grant = self._grants.get(source)
        if grant is None:
            self._set(Grant(source, door, GrantState.WINDOW, now, now + duration))
            self._counters["grants_opened"] += 1
            return [
                OpenGrant(source, duration, door),
                Notice("grant_opened", source, door, detail),
            ]
        grant.deadline = now + duration
        self._set(grant)
        self._counters["grants_refreshed"] += 1
        return [
            RefreshGrant(source, duration),
            Notice("grant_refreshed", source, grant.door, detail),
        ]

    def adopt(
        self, source: IPAddress, expires_in: float | None, window: float, now: float
    ) -> list[Action]:
        """ADOPT: the kernel already holds this grant. Track it; touch the kernel only to put a
        timeout back on an element that has none (never fail open)."""
        if self._target(source, Trigger.ADOPT) is None:
            return []
        grant = self._grants.get(source)
        if grant is not None:
            self._counters["unexpected_events"] += 1  # reported twice: the kernel's word wins below
        else:
            grant = Grant(source, ADOPTED_DOOR, GrantState.WINDOW, now, now)
        self._counters["grants_adopted"] += 1
        if expires_in is None:
            grant.deadline = now + window
            self._set(grant)
            return [
                RefreshGrant(source, window),
                Notice("grant_adopted", source, grant.door, "permanent element: timeout restored"),
            ]
        grant.deadline = now + max(expires_in, 0.0)
        self._set(grant)
        return []

    def revoke(self, source: IPAddress, reason: str) -> list[Action]:
        """REVOKE: close sequence or operator. Nothing to do (counted) without a grant."""
        if self._target(source, Trigger.REVOKE) is None:
            return []
        grant = self._grants.pop(source)
        self._deadlines.cancel(source)
        self._counters["grants_closed"] += 1
        return [RevokeGrant(source, reason), Notice("grant_closed", source, grant.door, reason)]

    def expire_next(self, now: float) -> list[Action] | None:
        """DEADLINE for the earliest due grant; None when no deadline has come."""
        source = self._deadlines.pop_due(now)
        if source is None:
            return None
        grant = self._grants.get(source)
        if grant is None or TRANSITIONS[grant.state].get(Trigger.DEADLINE) is not GrantState.CLOSED:
            raise AssertionError(f"grant deadline without a grant that ends on it: {source}")
        del self._grants[source]
        self._counters["grants_closed"] += 1
        return [
            RevokeGrant(source, REASON_WINDOW_ENDED),
            Notice("grant_closed", source, grant.door, REASON_WINDOW_ENDED),
        ]

    # -- views ---------------------------------------------------------------------------------

    def views(self, now: float) -> tuple[GrantView, ...]:
        """Every grant as seen at `now`, in a stable order (IPv4 first, then by address)."""
        ordered = sorted(self._grants.values(), key=lambda g: (g.source.version, int(g.source)))
        return tuple(
            GrantView(
                g.source, g.door, g.state, g.opened_at, g.deadline, max(0.0, g.deadline - now)
            )
            for g in ordered
        )

    def _set(self, grant: Grant) -> None:
        self._grants[grant.source] = grant
        self._deadlines.schedule(grant.source, grant.deadline)
