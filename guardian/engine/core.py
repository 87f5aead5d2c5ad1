# The Engine facade: the one object the daemon talks to. Events in, actions out, time as an argument
# (sans-IO, like h11 and aioquic). It ties the knock tracker (knock.py) and the connection table
# (sessions.py) to the grant table (grants.py), decides what is worth telling the operator, and
# merges the three deadline queues into the single timer the event loop waits on. It never
# performs I/O and never reads a clock.
#
# Session events, in short (the rules are in sessions.py and grants.py):
#   ConnectionOpened / ConnectionClosed / ConnectionsListed  conntrack and the socket table
#   SessionOpened / SessionClosed                            the journal (Accepted, Disconnected)
#   SignalsChanged                                           which of those watchers are up
# After each, every source whose connections changed is settled by the grant table. Sources that
# are trusted, or have no grant, are tracked and shown but get none, except that a listing marked
# initial (start-up) adopts live connections of untrusted sources (door "adopted").
# Feed SignalsChanged before the first listing at start-up; until told, the engine assumes the
# journal is up (authentication needs evidence) and every connection origin is.
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from guardian.actions import Action, Notice
from guardian.addresses import IPAddress, in_any, normalize
from guardian.config import MAX_ATTEMPTS, MAX_CONNECTIONS, Config
from guardian.engine.grants import GrantTable, GrantView
from guardian.engine.knock import KnockCompleted, KnockFailed, KnockOutcome, KnockTracker
from guardian.engine.sessions import AuthState, Change, ChangeKind, ConnectionTable, SessionView
from guardian.events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsListed,
    Event,
    GrantFound,
    GrantRequested,
    KnockSeen,
    RevokeRequested,
    SessionClosed,
    SessionOpened,
    SignalsChanged,
)

OPERATOR_DOOR = "operator"
REASON_CLOSE_SEQUENCE = "close sequence"

# Every counter the engine keeps; all start at 0 so a snapshot always carries the same keys.
COUNTER_NAMES: tuple[str, ...] = (
    "knocks_seen",  # every KnockSeen event
    "knocks_ignored",  # matched no door (unknown port, or TCP flags no door accepts)
    "knocks_duplicate",  # a retransmission of the step just taken (tolerated)
    "decoy_hits",  # scan probes on decoy ports (each resets the source's attempts)
    "attempts_started",  # first steps taken
    "attempts_evicted",  # sources dropped to keep attempts under the cap (LRU)
    "attempts_diverged",  # attempts left because the same knock advanced another sequence
    "attempts_dropped",  # attempts of doors that changed at a reconfigure
    "knocks_completed",  # sequences completed (open and close)
    "knocks_failed",  # attempts ended by a wrong port, a decoy or their timeout
    "grants_opened",
    "grants_refreshed",
    "grants_closed",
    "grants_adopted",  # grants found in the kernel at start-up (GrantFound)
    "grants_adopted_live",  # grants created for live connections of a start-up listing
    "grants_in_session",  # entries into IN_SESSION
    "grants_lingering",  # entries into LINGER (the last session ended)
    "grants_closed_by_linger",  # of grants_closed: linger ended with no session back
    "lease_refreshes",  # kernel timeouts renewed while sessions live (every lease / 2)
    "connections_opened",  # connections first seen (from any watcher, or the journal)
    "connections_closed",  # connections ended (a close, a listing, the journal)
    "connections_evicted",  # connections dropped to keep the table under its cap
    "connections_ungranted",  # new connections from untrusted sources without a grant
    "connections_duplicate",  # an open its origin had reported already
    "closes_unknown",  # a close for a connection not tracked (usual: another watcher was first)
    "listings",  # ConnectionsListed handled
    "sessions_opened",  # connections that became sessions (Accepted, or assumed)
    "sessions_closed",  # sessions ended (evictions included)
    "sessions_duplicate",  # an "Accepted" for a connection that had one already
    "sessions_accepted_after_close",  # an "Accepted" read after its connection had closed
    "unauthenticated_expired",  # connections whose login grace passed without an "Accepted"
    "signals_changed",  # SignalsChanged handled
    "unexpected_events",  # events that made no sense in the current state (counted, not raised)
)


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """The engine's state at one instant, for `guardian status` and the control socket."""

    now: float
    grants: tuple[GrantView, ...]
    attempts: int  # sources with a knock attempt in progress (never above the cap)
    attempt_records: int  # (source, sequence) progress records behind those attempts
    timer_entries: int  # entries in the internal deadline heaps (bounded; a memory gauge)
    next_deadline: float | None
    counters: Mapping[str, int]  # a copy; COUNTER_NAMES are always present
    sessions: tuple[SessionView, ...] = ()  # every tracked connection (never above the cap)
    auth_signal: bool = True  # the journal is up: authentication needs evidence
    connection_origins: tuple[str, ...] | None = None  # origins up; None: never told


class Engine:
    """Pure policy core. Call feed() for each event, handle_timer() when get_timer() has come."""

    def __init__(
        self,
        config: Config,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._config = config
        self._max_attempts = max_attempts
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))
        self._knocks = KnockTracker(config.doors, max_attempts, self._counters)
        self._auth_signal = True
        self._origins: frozenset[str] | None = None
        self._conns = ConnectionTable(
            self._counters,
            cap=max_connections,
            grace=config.access.login_grace,
            assume_auth=not config.access.require_auth,
            protected=self._has_grant,
        )
        self._grants = GrantTable(self._counters, config.access, self._conns.tally)
        self._last_now: float | None = None

    @property
    def config(self) -> Config:
        return self._config

    # -- the public API ------------------------------------------------------------------------

    def feed(self, event: Event, now: float) -> list[Action]:
        now = self._advance_clock(now)
        # Deadlines that have come are honoured before the event: expiry goes by time, whichever
        # of the timer and the packet the event loop happens to deliver first.
        actions = self._run_due(now)
        if isinstance(event, KnockSeen):
            actions += self._on_knock(event, now)
        elif isinstance(event, ConnectionOpened | ConnectionClosed | ConnectionsListed):
            actions += self._on_connections(event, now)
        elif isinstance(event, SessionOpened):
            changes = self._conns.session_opened(
                event.source, event.sport, event.user, event.pid, now
            )
            actions += self._after(changes, now)
        elif isinstance(event, SessionClosed):
            actions += self._after(self._conns.session_closed(event.source, event.sport), now)
        elif isinstance(event, SignalsChanged):
            actions += self._on_signals(event, now)
        elif isinstance(event, GrantFound):
            actions += self._grants.adopt(normalize(event.source), event.expires_in, now)
        elif isinstance(event, GrantRequested):
            actions += self._on_grant_requested(event, now)
        elif isinstance(event, RevokeRequested):
            actions += self._grants.revoke(normalize(event.source), event.reason)
        else:
            self._counters["unexpected_events"] += 1
        # A zero-length window, an adopted grant with no time left or a zero linger is due at
        # once: settle it now, so get_timer() never points before `now`.
        return actions + self._run_due(now)

    def handle_timer(self, now: float) -> list[Action]:
        return self._run_due(self._advance_clock(now))

    def get_timer(self) -> float | None:
        deadlines = [
            d
            for d in (
                self._knocks.next_deadline(),
                self._conns.next_deadline(),
                self._grants.next_deadline(),
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def reconfigure(self, config: Config, now: float) -> list[Action]:
        """SIGHUP: grants and connections stay as they are (new linger, lease and login grace
        apply from their next transition on); attempts of doors that changed are dropped; if
        authentication is no longer required, pending connections become sessions."""
        now = self._advance_clock(now)
        actions = self._run_due(now)
        self._knocks.reconfigure(config.doors)
        self._config = config
        self._grants.access = config.access
        self._conns.grace = config.access.login_grace
        actions += self._apply_auth_policy(now)
        return actions + self._run_due(now)

    def snapshot(self, now: float) -> EngineSnapshot:
        """A read-only view; it changes nothing, not even due deadlines."""
        return EngineSnapshot(
            now=now,
            grants=self._grants.views(now),
            attempts=self._knocks.sources_in_progress,
            attempt_records=self._knocks.attempt_records,
            timer_entries=(
                self._knocks.timer_entries + self._conns.timer_entries + self._grants.timer_entries
            ),
            next_deadline=self.get_timer(),
            counters=dict(self._counters),
            sessions=self._conns.views(now),
            auth_signal=self._auth_signal,
            connection_origins=None if self._origins is None else tuple(sorted(self._origins)),
        )

    # -- events --------------------------------------------------------------------------------

    def _on_knock(self, event: KnockSeen, now: float) -> list[Action]:
        actions: list[Action] = []
        for outcome in self._knocks.feed(normalize(event.source), event, now):
            actions += self._on_knock_outcome(outcome, now)
        return actions

    def _on_knock_outcome(self, outcome: KnockOutcome, now: float) -> list[Action]:
        if isinstance(outcome, KnockFailed):
            return self._failure_notice(outcome)
        return self._on_completed(outcome, now)

    def _on_completed(self, done: KnockCompleted, now: float) -> list[Action]:
        self._counters["knocks_completed"] += 1
        source, door = done.source, done.matcher.door.name
        if done.matcher.kind == "close":
            if source not in self._grants:
                return [
                    Notice("knock_completed", source, door, "close sequence, no grant to close")
                ]
            effects = self._grants.revoke(source, REASON_CLOSE_SEQUENCE)
            return _cause_first(effects, Notice("knock_completed", source, door, "close sequence"))
        if in_any(source, self._config.guard.trusted):
            return [Notice("knock_completed", source, door, "trusted, no grant needed")]
        effects = self._grants.open(source, door, self._config.access.window, now)
        return _cause_first(effects, Notice("knock_completed", source, door))

    def _on_connections(
        self, event: ConnectionOpened | ConnectionClosed | ConnectionsListed, now: float
    ) -> list[Action]:
        if isinstance(event, ConnectionOpened):
            changes = self._conns.opened(event.source, event.sport, event.dport, event.origin, now)
            return self._after(changes, now)
        if isinstance(event, ConnectionClosed):
            return self._after(self._conns.closed(event.source, event.sport, event.dport, now), now)
        changes = self._conns.listed(event.connections, event.origin, now)
        adopt = {normalize(s) for s, _, _ in event.connections} if event.initial else set()
        return self._after(changes, now, adopt)

    def _on_signals(self, event: SignalsChanged, now: float) -> list[Action]:
        self._counters["signals_changed"] += 1
        self._auth_signal = event.auth
        self._origins = frozenset(event.connections)
        self._conns.forget_origins(self._origins)
        return self._apply_auth_policy(now)

    def _apply_auth_policy(self, now: float) -> list[Action]:
        """Connections need evidence of authentication only when it is required and observable;
        otherwise new ones are sessions at once and pending ones become sessions now."""
        assume = not (self._config.access.require_auth and self._auth_signal)
        self._conns.assume_auth = assume
        return self._after(self._conns.assume_pending() if assume else [], now)

    def _after(
        self, changes: list[Change], now: float, adopt: set[IPAddress] | None = None
    ) -> list[Action]:
        """Let the grant table settle every source the changes touched (after adopting, for a
        start-up listing); then tell the operator about sessions, cause first."""
        effects: list[Action] = []
        for source in sorted(adopt or (), key=_address_order):
            if source not in self._grants and not self._trusted(source):
                effects += self._grants.adopt_live(source, now)
        touched = {change.connection.source for change in changes}
        ended = {c.connection.source for c in changes if c.kind is ChangeKind.SESSION_CLOSED}
        for source in sorted(touched, key=_address_order):
            effects += self._grants.settle(source, now, session_ended=source in ended)
        causes: list[Notice] = []
        for change in changes:
            source = change.connection.source
            if change.created and source not in self._grants and not self._trusted(source):
                self._counters["connections_ungranted"] += 1
            notice = self._session_notice(change)
            if notice is not None:
                causes.append(notice)
        return _cause_first(effects, *causes)

    def _session_notice(self, change: Change) -> Notice | None:
        conn = change.connection
        grant = self._grants.get(conn.source)
        door = "" if grant is None else grant.door
        if change.kind is ChangeKind.EXPIRED:
            if grant is None:
                return None  # counted; only a grant it held makes it worth telling
            return Notice("unauthenticated_expired", conn.source, door, f"port {conn.sport}")
        if change.kind is ChangeKind.SESSION_OPENED:
            kind = "session_opened"
        elif change.kind is ChangeKind.SESSION_CLOSED:
            kind = "session_closed"
        else:
            return None  # bare connections come and go without a word (counters show them)
        detail = f"port {conn.sport}" if conn.user is None else f"{conn.user} port {conn.sport}"
        if conn.auth is AuthState.ASSUMED:
            detail += " (authentication assumed)"
        if self._trusted(conn.source):
            detail += ", trusted"
        elif grant is None:
            detail += ", no grant"
        if change.detail:
            detail += f": {change.detail}"
        return Notice(kind, conn.source, door, detail)

    def _has_grant(self, source: IPAddress) -> bool:
        return source in self._grants

    def _trusted(self, source: IPAddress) -> bool:
        return in_any(source, self._config.guard.trusted)

    def _on_grant_requested(self, event: GrantRequested, now: float) -> list[Action]:
        if not (event.duration > 0 and math.isfinite(event.duration)):
            self._counters["unexpected_events"] += 1
            return []
        source = normalize(event.source)
        return self._grants.open(source, OPERATOR_DOOR, event.duration, now, event.reason)

    def _failure_notice(self, failed: KnockFailed) -> list[Action]:
        # A single stray hit (stage 1) is counted, not told: a flood of them would drown the log.
        if failed.stage < 2:
            return []
        detail = failed.reason
        if failed.matcher.kind == "close":
            detail = f"close sequence: {detail}"
        return [Notice("knock_failed", failed.source, failed.matcher.door.name, detail)]

    # -- time ----------------------------------------------------------------------------------

    def _advance_clock(self, now: float) -> float:
        """The caller's monotonic clock never goes back; if it seems to, keep the latest time."""
        if self._last_now is not None and now < self._last_now:
            self._counters["unexpected_events"] += 1
            return self._last_now
        self._last_now = now
        return now

    def _run_due(self, now: float) -> list[Action]:
        """Settle every deadline <= now, earliest first, across attempts, connections and grants
        (on a tie in that order: a login grace that ends with a window is settled first)."""
        actions: list[Action] = []
        while True:
            due = [
                (at, rank)
                for rank, at in enumerate(
                    (
                        self._knocks.next_deadline(),
                        self._conns.next_deadline(),
                        self._grants.next_deadline(),
                    )
                )
                if at is not None and at <= now
            ]
            if not due:
                return actions
            _, rank = min(due)
            if rank == 0:
                failed = self._knocks.expire_next(now)
                if failed is None:
                    raise AssertionError("a due attempt deadline did not expire")
                actions += self._failure_notice(failed)
            elif rank == 1:
                changes = self._conns.expire_next(now)
                if changes is None:
                    raise AssertionError("a due login grace did not expire")
                actions += self._after(changes, now)
            else:
                expired = self._grants.expire_next(now)
                if expired is None:
                    raise AssertionError("a due grant deadline did not expire")
                actions += expired


def _address_order(source: IPAddress) -> tuple[int, int]:
    return (source.version, int(source))


def _cause_first(effects: list[Action], *causes: Notice) -> list[Action]:
    """Order a step's actions: what to do to the world, then why (the causes), then the results."""
    return [
        *(a for a in effects if not isinstance(a, Notice)),
        *causes,
        *(a for a in effects if isinstance(a, Notice)),
    ]
