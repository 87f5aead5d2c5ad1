# Grants: which sources may pass the gate, in which state, until when. The whole life cycle of a
# grant is in this file, as a table.
#
# Theory of operation
# -------------------
# A grant is the engine's record of one source being allowed through the guarded ports. The kernel
# holds the same fact as a set element with its own timeout: the dead-man's switch. If the daemon
# dies, access lapses by itself within one lease (or what is left of a window or a linger), while
# established sessions go on (the gate passes established connections whatever the grants).
#
# A source's connections (sessions.py) come in two kinds that matter here: sessions (sshd said
# "Accepted", or authentication is not required / not observable) and pending connections
# (awaiting authentication, within their login grace: after it sshd has dropped them). After any
# change to a source's connections the facade calls settle(), which fires SESSION_UP (it has a
# session), SESSION_DOWN (its last session ended) or PENDING (only its pending ones changed).
#
# Every source is in exactly one state; CLOSED is never stored. Each grant has one deadline in a
# DeadlineQueue; what it means depends on the state:
#     WINDOW      close = max(hold, latest grace end of its pending connections)
#     IN_SESSION  the next lease refresh, lease / 2 after the last (at most 2 wake-ups per lease)
#     LINGER      close = max(hold, latest grace end of its pending connections)
# hold is what the last OPEN promised (now + window, or the operator's duration). Entering
# IN_SESSION consumes it: the window was for a first session, and sessions rule from then on.
# Leaving IN_SESSION sets it to now + linger (or keeps a later promise of an OPEN made meanwhile).
# kernel is the element's timeout as last given: never before close in WINDOW and LINGER, and
# max(lease, hold) after each refresh in IN_SESSION. close can move before kernel (a pending
# connection closed early): the engine then revokes at close, it never waits for the kernel.
#
#  state       trigger       -> state       action out (notices aside)
#  ----------  ------------  -  ----------  -------------------------------------------------------
#  CLOSED      OPEN          -> WINDOW      OpenGrant(duration)  (a knock completed, the operator)
#  CLOSED      ADOPT         -> WINDOW      none, or RefreshGrant(window) if the kernel element had
#                                           no timeout (found in the kernel at start-up: adopted)
#  CLOSED      ADOPT_LIVE    -> IN_SESSION  RefreshGrant(lease)  (a start-up listing shows a live
#                                           session from an untrusted source without a grant)
#                            -> WINDOW      RefreshGrant(grace left)  (... only pending ones: they
#                                           hold it for their login grace, counted from adoption)
#  WINDOW      OPEN          -> WINDOW      RefreshGrant(close - now); the window restarts
#  WINDOW      ADOPT         -> WINDOW      the kernel's remaining time is the new hold (counted)
#  WINDOW      SESSION_UP    -> IN_SESSION  RefreshGrant(lease)
#  WINDOW      PENDING       -> WINDOW      RefreshGrant(close - now) if close moved past kernel
#  WINDOW      DEADLINE      -> CLOSED      RevokeGrant("window ended")  (no session ever came: a
#                                           connection that never authenticated gets no linger)
#  IN_SESSION  OPEN          -> IN_SESSION  RefreshGrant(max(lease, duration)); hold = now+duration
#  IN_SESSION  ADOPT         -> IN_SESSION  RefreshGrant(max(lease, hold - now))  (counted)
#  IN_SESSION  SESSION_UP    -> IN_SESSION  none  (one more session, or pending ones changed)
#  IN_SESSION  DEADLINE      -> IN_SESSION  RefreshGrant(max(lease, hold - now))  (lease refresh)
#  IN_SESSION  SESSION_DOWN  -> LINGER      hold = max(hold, now + linger); RefreshGrant(close-now)
#                                           (none when close is now: linger = 0)
#  LINGER      OPEN          -> LINGER      hold = max(hold, now + duration); RefreshGrant, never
#                                           shorter than the kernel's
#  LINGER      ADOPT         -> LINGER      RefreshGrant(max(kernel, close) - now)  (counted)
#  LINGER      SESSION_UP    -> IN_SESSION  RefreshGrant(lease)  (a reconnect within linger)
#  LINGER      PENDING       -> LINGER      RefreshGrant(close - now) if close moved past kernel
#  LINGER      DEADLINE      -> CLOSED      RevokeGrant("sessions ended")
#  any         REVOKE        -> CLOSED      RevokeGrant(reason)  (close sequence, operator, a ban
#                                           covering the source); the connections stay tracked,
#                                           established ones go on
#
# OPEN, ADOPT and REVOKE come from outside: one that makes no sense in the current state (the
# operator revokes a source that has no grant) is counted and changes nothing. SESSION_UP,
# SESSION_DOWN, PENDING and DEADLINE are derived here from the connections and the clock; one
# that the table has no row for, or a deadline without a grant, is a broken internal invariant
# and raises.
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from guardian.actions import Action, Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.addresses import IPAddress
from guardian.config import Access, format_duration
from guardian.engine.deadlines import DeadlineQueue
from guardian.engine.sessions import Tally

ADOPTED_DOOR = "adopted"  # door name recorded for grants found at start (kernel or live session)
REASON_WINDOW_ENDED = "window ended"
REASON_SESSIONS_ENDED = "sessions ended"


class GrantState(StrEnum):
    CLOSED = "closed"
    WINDOW = "window"
    IN_SESSION = "in_session"
    LINGER = "linger"


class Trigger(StrEnum):
    OPEN = "open"  # a knock completed, or the operator asked
    ADOPT = "adopt"  # the kernel held the grant at start-up (GrantFound)
    ADOPT_LIVE = "adopt_live"  # a start-up listing shows a live connection and no grant
    SESSION_UP = "session_up"  # the source has a session (a first one, or one more)
    SESSION_DOWN = "session_down"  # its last session ended
    PENDING = "pending"  # only its connections awaiting authentication changed
    DEADLINE = "deadline"
    REVOKE = "revoke"  # close sequence, operator, a ban covering the source


TRANSITIONS: Final[Mapping[GrantState, Mapping[Trigger, GrantState]]] = {
    GrantState.CLOSED: {
        Trigger.OPEN: GrantState.WINDOW,
        Trigger.ADOPT: GrantState.WINDOW,
        # or WINDOW when the live connections all await authentication (see the table above)
        Trigger.ADOPT_LIVE: GrantState.IN_SESSION,
    },
    GrantState.WINDOW: {
        Trigger.OPEN: GrantState.WINDOW,
        Trigger.ADOPT: GrantState.WINDOW,
        Trigger.SESSION_UP: GrantState.IN_SESSION,
        Trigger.PENDING: GrantState.WINDOW,
        Trigger.DEADLINE: GrantState.CLOSED,
        Trigger.REVOKE: GrantState.CLOSED,
    },
    GrantState.IN_SESSION: {
        Trigger.OPEN: GrantState.IN_SESSION,
        Trigger.ADOPT: GrantState.IN_SESSION,
        Trigger.SESSION_UP: GrantState.IN_SESSION,
        Trigger.SESSION_DOWN: GrantState.LINGER,
        Trigger.DEADLINE: GrantState.IN_SESSION,
        Trigger.REVOKE: GrantState.CLOSED,
    },
    GrantState.LINGER: {
        Trigger.OPEN: GrantState.LINGER,
        Trigger.ADOPT: GrantState.LINGER,
        Trigger.SESSION_UP: GrantState.IN_SESSION,
        Trigger.PENDING: GrantState.LINGER,
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
    deadline: float  # the state's next decision (see the header)
    kernel_expires: float  # when the kernel drops the element unless it is refreshed
    hold: float  # what the last OPEN promised, or the linger's end (see the header)


@dataclass(frozen=True, slots=True)
class GrantView:
    """A grant as the outside world sees it at one instant (for status, the control socket).

    expires_at is when it ends if nothing changes: the close time in WINDOW and LINGER, the end of
    the lease in IN_SESSION (renewed while sessions live). kernel_expires_at is the timeout the
    kernel holds; next_change is the engine's next decision about it (a close, a lease refresh)."""

    source: IPAddress
    door: str
    state: GrantState
    opened_at: float
    expires_at: float
    time_left: float
    kernel_expires_at: float
    next_change: float
    sessions: int  # authenticated (or assumed) connections from the source
    pending: int  # connections from the source awaiting authentication, within their grace


class GrantTable:
    """All grants, their states and deadlines; methods return what their transition calls for.

    access is the [access] config in force (the facade replaces it on reconfigure); tally(source)
    tells what the source's connections are."""

    def __init__(
        self, counters: Counter[str], access: Access, tally: Callable[[IPAddress], Tally]
    ) -> None:
        self._counters = counters
        self.access = access
        self._tally = tally
        self._grants: dict[IPAddress, Grant] = {}
        self._deadlines: DeadlineQueue[IPAddress] = DeadlineQueue()

    def __len__(self) -> int:
        return len(self._grants)

    def __contains__(self, source: IPAddress) -> bool:
        return source in self._grants

    def get(self, source: IPAddress) -> Grant | None:
        return self._grants.get(source)

    def sources(self) -> list[IPAddress]:
        return list(self._grants)

    @property
    def timer_entries(self) -> int:
        return self._deadlines.entries

    def next_deadline(self) -> float | None:
        return self._deadlines.earliest()

    # -- triggers from outside -----------------------------------------------------------------

    def open(
        self, source: IPAddress, door: str, duration: float, now: float, detail: str = ""
    ) -> list[Action]:
        """OPEN: a completed knock or an operator request. New grant or refreshed one."""
        if self._target(source, Trigger.OPEN) is None:
            return []
        grant = self._grants.get(source)
        if grant is None:
            end = now + duration
            self._put(Grant(source, door, GrantState.WINDOW, now, end, end, end))
            self._counters["grants_opened"] += 1
            # Connections the source already has (left from before a revoke) count at once.
            return [
                OpenGrant(source, duration, door),
                Notice("grant_opened", source, door, detail),
                *self.settle(source, now),
            ]
        self._counters["grants_refreshed"] += 1
        lease = self.access.lease
        if grant.state is GrantState.IN_SESSION:
            grant.hold = max(grant.hold, now + duration)
            refresh = self._refresh(grant, max(lease, grant.hold - now), now)
            self._schedule(grant, now + lease / 2)
        elif grant.state is GrantState.LINGER:
            grant.hold = max(grant.hold, now + duration)
            close = self._close_time(grant, now)
            refresh = self._refresh(grant, max(close, grant.kernel_expires) - now, now)
            self._schedule(grant, close)
        else:
            grant.hold = now + duration
            close = self._close_time(grant, now)
            refresh = self._refresh(grant, close - now, now)
            self._schedule(grant, close)
        return [refresh, Notice("grant_refreshed", source, grant.door, detail)]

    def adopt(self, source: IPAddress, expires_in: float | None, now: float) -> list[Action]:
        """ADOPT: the kernel already holds this grant. Track it; touch the kernel only to put a
        timeout back on an element that has none (never fail open)."""
        if self._target(source, Trigger.ADOPT) is None:
            return []
        self._counters["grants_adopted"] += 1
        grant = self._grants.get(source)
        if grant is not None:
            self._counters["unexpected_events"] += 1  # reported twice
            if grant.state is not GrantState.WINDOW:
                # A session holds it: keep our timing, and make sure the kernel has a timeout.
                return [self._reassert(grant, now)]
        else:
            grant = Grant(source, ADOPTED_DOOR, GrantState.WINDOW, now, now, now, now)
        if expires_in is None:
            grant.hold = now + self.access.window
            close = self._close_time(grant, now)
            self._schedule(grant, close)
            return [
                self._refresh(grant, close - now, now),
                Notice("grant_adopted", source, grant.door, "permanent element: timeout restored"),
                *self.settle(source, now),
            ]
        # The kernel's word wins (also over a second report of the same grant).
        grant.hold = grant.kernel_expires = now + max(expires_in, 0.0)
        self._schedule(grant, grant.hold)
        return self.settle(source, now)

    def adopt_live(self, source: IPAddress, now: float) -> list[Action]:
        """ADOPT_LIVE: a start-up listing shows live connections from a source without a grant
        (a restart must not cut a live session's access). Sessions make it IN_SESSION; pending
        connections alone hold it for their grace (from adoption); nothing counting, no grant."""
        if self._target(source, Trigger.ADOPT_LIVE) is None:
            return []
        tally = self._tally(source)
        if tally.sessions:
            lease = self.access.lease
            grant = Grant(source, ADOPTED_DOOR, GrantState.IN_SESSION, now, now, now + lease, now)
            self._schedule(grant, now + lease / 2)
            timeout, detail = lease, "live session at start-up"
        elif tally.pending_until is not None and tally.pending_until > now:
            close = tally.pending_until
            grant = Grant(source, ADOPTED_DOOR, GrantState.WINDOW, now, close, close, now)
            self._schedule(grant, close)
            timeout, detail = close - now, "live connection at start-up, awaiting authentication"
        else:
            return []
        self._counters["grants_adopted_live"] += 1
        return [
            RefreshGrant(source, timeout),  # the effector's refresh adds a missing element
            Notice("grant_adopted", source, ADOPTED_DOOR, detail),
        ]

    def revoke(self, source: IPAddress, reason: str) -> list[Action]:
        """REVOKE: close sequence, operator or ban. Nothing to do (counted) without a grant."""
        if self._target(source, Trigger.REVOKE) is None:
            return []
        grant = self._grants.pop(source)
        self._deadlines.cancel(source)
        self._counters["grants_closed"] += 1
        return [RevokeGrant(source, reason), Notice("grant_closed", source, grant.door, reason)]

    # -- triggers derived from the connections and the clock -----------------------------------

    def settle(self, source: IPAddress, now: float, *, session_ended: bool = False) -> list[Action]:
        """The source's connections changed: SESSION_UP, SESSION_DOWN or PENDING, as they say.

        session_ended: a session of this source ended in this very step. A grant still in WINDOW
        then saw a whole session come and go at once (a short login whose Accepted line was read
        after its connection closed): SESSION_UP then SESSION_DOWN, so it lingers from now."""
        grant = self._grants.get(source)
        if grant is None:
            return []
        tally = self._tally(source)
        if session_ended and tally.sessions == 0 and grant.state is GrantState.WINDOW:
            return self._session_up(grant, now) + self._session_down(grant, now)
        if tally.sessions > 0:
            if grant.state is GrantState.IN_SESSION:
                self._transition(grant, Trigger.SESSION_UP)
                return []
            return self._session_up(grant, now)
        if grant.state is GrantState.IN_SESSION:
            return self._session_down(grant, now)
        return self._pending_changed(grant, now)

    def expire_next(self, now: float) -> list[Action] | None:
        """DEADLINE for the earliest due grant; None when no deadline has come."""
        source = self._deadlines.pop_due(now)
        if source is None:
            return None
        grant = self._grants.get(source)
        if grant is None:
            raise AssertionError(f"grant deadline without a grant: {source}")
        sessions = self._tally(source).sessions
        if grant.state is GrantState.IN_SESSION:
            if not sessions:
                raise AssertionError(f"in session without a session: {source}")
            self._transition(grant, Trigger.DEADLINE)
            self._counters["lease_refreshes"] += 1
            lease = self.access.lease
            refresh = self._refresh(grant, max(lease, grant.hold - now), now)
            self._schedule(grant, now + lease / 2)
            return [refresh]
        if sessions:
            raise AssertionError(f"{grant.state} with a live session: {source}")
        if self._close_time(grant, now) > now:
            # Defensive: something still holds it (settle keeps the deadline in step, so this
            # should not happen); move the deadline rather than cut access early.
            return self._pending_changed(grant, now)
        self._transition(grant, Trigger.DEADLINE)
        del self._grants[source]
        self._counters["grants_closed"] += 1
        reason = REASON_WINDOW_ENDED
        if grant.state is GrantState.LINGER:
            reason = REASON_SESSIONS_ENDED
            self._counters["grants_closed_by_linger"] += 1
        return [RevokeGrant(source, reason), Notice("grant_closed", source, grant.door, reason)]

    def _session_up(self, grant: Grant, now: float) -> list[Action]:
        self._transition(grant, Trigger.SESSION_UP)
        self._counters["grants_in_session"] += 1
        grant.hold = now  # the window (or linger) has done its job
        lease = self.access.lease
        refresh = self._refresh(grant, lease, now)
        self._schedule(grant, now + lease / 2)
        return [refresh, Notice("grant_in_session", grant.source, grant.door)]

    def _session_down(self, grant: Grant, now: float) -> list[Action]:
        self._transition(grant, Trigger.SESSION_DOWN)
        self._counters["grants_lingering"] += 1
        grant.hold = max(grant.hold, now + self.access.linger)
        close = self._close_time(grant, now)
        self._schedule(grant, close)
        detail = "last session ended"
        if close <= now:
            # linger = 0: the grant ends right away (by its deadline); no timeout to give.
            return [Notice("grant_lingering", grant.source, grant.door, detail)]
        detail += f", closes in {format_duration(close - now)}"
        return [
            self._refresh(grant, close - now, now),
            Notice("grant_lingering", grant.source, grant.door, detail),
        ]

    def _pending_changed(self, grant: Grant, now: float) -> list[Action]:
        self._transition(grant, Trigger.PENDING)
        close = self._close_time(grant, now)
        self._schedule(grant, close)
        if close > grant.kernel_expires and close > now:  # (a late wake-up: nothing to extend)
            return [self._refresh(grant, close - now, now)]
        return []

    # -- views ---------------------------------------------------------------------------------

    def views(self, now: float) -> tuple[GrantView, ...]:
        """Every grant as seen at `now`, in a stable order (IPv4 first, then by address)."""
        ordered = sorted(self._grants.values(), key=lambda g: (g.source.version, int(g.source)))
        out: list[GrantView] = []
        for g in ordered:
            tally = self._tally(g.source)
            ends = g.kernel_expires if g.state is GrantState.IN_SESSION else g.deadline
            out.append(
                GrantView(
                    source=g.source,
                    door=g.door,
                    state=g.state,
                    opened_at=g.opened_at,
                    expires_at=ends,
                    time_left=max(0.0, ends - now),
                    kernel_expires_at=g.kernel_expires,
                    next_change=g.deadline,
                    sessions=tally.sessions,
                    pending=tally.pending,
                )
            )
        return tuple(out)

    # -- internals -----------------------------------------------------------------------------

    def _state(self, source: IPAddress) -> GrantState:
        grant = self._grants.get(source)
        return GrantState.CLOSED if grant is None else grant.state

    def _target(self, source: IPAddress, trigger: Trigger) -> GrantState | None:
        """The state the table sends this source to, or None (counted) if the table has no row."""
        target = TRANSITIONS[self._state(source)].get(trigger)
        if target is None:
            self._counters["unexpected_events"] += 1
        return target

    def _transition(self, grant: Grant, trigger: Trigger) -> None:
        """Apply a derived trigger; the table must have its row (else: a broken invariant)."""
        target = TRANSITIONS[grant.state].get(trigger)
        if target is None:
            raise AssertionError(f"no transition for {trigger} in {grant.state}: {grant.source}")
        if target is not GrantState.CLOSED:
            grant.state = target

    def _close_time(self, grant: Grant, now: float) -> float:
        """WINDOW and LINGER end at max(hold, the latest grace end of pending connections)."""
        pending_until = self._tally(grant.source).pending_until
        close = grant.hold if pending_until is None else max(grant.hold, pending_until)
        return max(close, now)

    def _reassert(self, grant: Grant, now: float) -> RefreshGrant:
        """Give the kernel the timeout the state stands for (after a surprising report)."""
        if grant.state is GrantState.IN_SESSION:
            return self._refresh(grant, max(self.access.lease, grant.hold - now), now)
        return self._refresh(grant, max(grant.kernel_expires, grant.deadline) - now, now)

    def _refresh(self, grant: Grant, timeout: float, now: float) -> RefreshGrant:
        if not timeout > 0:
            raise AssertionError(f"a kernel timeout must be positive: {timeout} for {grant}")
        grant.kernel_expires = now + timeout
        return RefreshGrant(grant.source, timeout)

    def _put(self, grant: Grant) -> None:
        self._grants[grant.source] = grant
        self._deadlines.schedule(grant.source, grant.deadline)

    def _schedule(self, grant: Grant, deadline: float) -> None:
        grant.deadline = deadline
        self._put(grant)
