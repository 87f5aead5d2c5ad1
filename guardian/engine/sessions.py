# Connections to the guarded ports and the sshd logins on them: which exist, which are
# authenticated, which watcher vouches for each. Pure bookkeeping, no policy about grants: every
# method returns the Changes it made, and the facade (core.py) turns them into notices and lets
# the grant table (grants.py) settle the sources involved.
#
# Sources of truth and how they are joined:
#   * Connection watchers ("conntrack" events and dumps, the "sockets" table) name a connection by
#     (source, sport, dport). Each record remembers which of them currently vouch for it
#     (seen_by). A close from any of them ends the connection (a FIN is a FIN). A listing speaks
#     for its own origin: it closes what that origin reported before and no longer lists, it never
#     closes what only another origin reported (conntrack may not track a connection the socket
#     table has, e.g. one that predates conntrack and has been idle since; a forwarded connection
#     has no local socket). Records no live origin vouches for (created from the journal, or their
#     watcher went away: see forget_origins) are "unconfirmed" and any listing confirms or closes
#     them, so nothing stays open on the word of a watcher that is gone.
#   * The journal ("Accepted ... from HOST port N") names only (source, sport): it authenticates
#     every connection with that pair; if none is known yet (the journal beat conntrack, or no
#     connection watcher runs) it creates one with dport 0, which the first watcher report of
#     that (source, sport) fills in.
#
# Authentication states of a connection:
#   PENDING   no evidence yet; it counts for its source until since + login grace, when sshd
#             would have dropped it (a deadline here, so the counter and the view are exact)
#   ACCEPTED  sshd logged "Accepted" for it (even after its grace: evidence beats our clock)
#   ASSUMED   authentication is not required, or could not be observed (no journal) when it
#             opened or while it was pending; it counts as a session from then on
#   EXPIRED   its grace passed without evidence: it counts for nothing, but stays tracked (and
#             shown) until a close or a listing ends it
# A "session" is an ACCEPTED or ASSUMED connection: sessions keep a grant in IN_SESSION; PENDING
# connections only hold a grant open until their grace ends (see grants.py).
#
# Memory is bounded: at most `cap` connections. Beyond it the oldest record of a source without a
# grant goes first (looking at a bounded number of the oldest), else the oldest of all; evicting a
# session is reported like its close (counted apart), so a grant it held can linger and end.
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from guardian.addresses import IPAddress, normalize
from guardian.engine.deadlines import DeadlineQueue
from guardian.events import ConnectionId

JOURNAL_ORIGIN = "journal"  # origin recorded for a connection first known from an "Accepted" line
UNKNOWN_DPORT = 0  # dport of a journal-only connection (the journal does not say the local port)
EVICTION_SCAN = 64  # oldest records looked at for one whose source has no grant, per eviction
# conntrack reports a close in well under a millisecond, the journal's "Accepted" line can take
# tens of milliseconds: a short login (`ssh host true`) may be closed before its Accepted is read.
# A connection closed while still unauthenticated is remembered this long (and at most
# RECENT_CLOSES of them), so its late Accepted counts as a session that has already ended
# instead of creating a journal-only record that nothing would ever close.
RECENT_CLOSE_WINDOW = 10.0
RECENT_CLOSES = 4096

Peer = tuple[IPAddress, int]  # (source, sport): what the journal names


class AuthState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    ASSUMED = "assumed"
    EXPIRED = "expired"


SESSION_STATES = frozenset({AuthState.ACCEPTED, AuthState.ASSUMED})


class ChangeKind(StrEnum):
    OPENED = "opened"  # a new connection, not (yet) a session
    CLOSED = "closed"  # a connection that was no session ended
    SESSION_OPENED = "session_opened"  # a connection became a session (new or existing)
    SESSION_CLOSED = "session_closed"  # a session ended
    EXPIRED = "expired"  # a pending connection's login grace passed


@dataclass(slots=True)
class Connection:
    """The live record of one connection (internal and mutable; see SessionView)."""

    source: IPAddress
    sport: int
    dport: int
    since: float
    grace_end: float
    auth: AuthState
    origin: str  # who reported it first
    seen_by: set[str] = field(default_factory=set)  # connection origins vouching for it now
    user: str | None = None
    pid: int | None = None

    @property
    def key(self) -> ConnectionId:
        return (self.source, self.sport, self.dport)

    @property
    def is_session(self) -> bool:
        return self.auth in SESSION_STATES

    def counts(self, now: float) -> bool:
        """Does it hold its source's access at `now` (a session, or pending within grace)?"""
        return self.is_session or (self.auth is AuthState.PENDING and now < self.grace_end)


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    connection: Connection
    created: bool = False  # the record is new (for OPENED / SESSION_OPENED)
    detail: str = ""  # why, when it is not the plain event (eviction, listing)


@dataclass(frozen=True, slots=True)
class Tally:
    """One source's connections as the grant table sees them."""

    sessions: int = 0  # ACCEPTED or ASSUMED
    pending: int = 0  # PENDING (within grace by construction: expiry is a deadline)
    pending_until: float | None = None  # the latest grace end among the pending ones


@dataclass(frozen=True, slots=True)
class SessionView:
    """A connection as the outside world sees it at one instant (status, control socket).

    since is an instant on the engine's clock (like GrantView.opened_at): when it was first seen.
    dport is 0 while only the journal knows it. origin is the first reporter ("conntrack",
    "sockets", "journal"); seen_by the connection watchers vouching for it now."""

    source: IPAddress
    sport: int
    dport: int
    user: str | None
    since: float
    authenticated: bool  # ACCEPTED or ASSUMED: a session
    origin: str
    auth: AuthState
    counting: bool  # holds its source's access at this instant (a session, or pending in grace)
    grace_end: float | None  # PENDING only: when it stops counting
    seen_by: tuple[str, ...]
    pid: int | None  # sshd's process for the login (from the journal), None until then


def _order(key: ConnectionId) -> tuple[int, int, int, int]:
    source, sport, dport = key
    return (source.version, int(source), sport, dport)


class ConnectionTable:
    """All tracked connections. Attributes grace and assume_auth are set by the facade from the
    config and the signals; protected(source) says whether a source holds a grant (eviction)."""

    def __init__(
        self,
        counters: Counter[str],
        *,
        cap: int,
        grace: float,
        assume_auth: bool,
        protected: Callable[[IPAddress], bool],
    ) -> None:
        if cap < 1:
            raise ValueError("the connection cap must be at least 1")
        self._counters = counters
        self.cap = cap
        self.grace = grace
        self.assume_auth = assume_auth
        self._protected = protected
        self._conns: OrderedDict[ConnectionId, Connection] = OrderedDict()  # oldest first
        self._by_peer: dict[Peer, set[int]] = {}
        self._sessions: Counter[IPAddress] = Counter()
        self._pending: dict[IPAddress, dict[ConnectionId, float]] = {}
        self._graces: DeadlineQueue[ConnectionId] = DeadlineQueue()
        self._recent_closes: OrderedDict[Peer, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def timer_entries(self) -> int:
        return self._graces.entries

    def next_deadline(self) -> float | None:
        return self._graces.earliest()

    def tally(self, source: IPAddress) -> Tally:
        pending = self._pending.get(source)
        if not pending:
            return Tally(self._sessions[source], 0, None)
        return Tally(self._sessions[source], len(pending), max(pending.values()))

    # -- connection watchers -------------------------------------------------------------------

    def opened(
        self, source: IPAddress, sport: int, dport: int, origin: str, now: float
    ) -> list[Change]:
        """A watcher reports the connection established (an event, not a listing)."""
        key = (normalize(source), sport, dport)
        conn = self._conns.get(key)
        if conn is not None and origin in conn.seen_by:
            self._counters["connections_duplicate"] += 1
            return []
        return self._confirm(key, origin, now)

    def closed(
        self, source: IPAddress, sport: int, dport: int, now: float | None = None
    ) -> list[Change]:
        """A watcher reports the connection closing or gone: whoever reported it, it ends."""
        source = normalize(source)
        conn = self._conns.get((source, sport, dport)) or self._conns.get(
            (source, sport, UNKNOWN_DPORT)
        )
        if conn is None:
            # Usual when another watcher (or the journal) closed it first: counted, not told.
            self._counters["closes_unknown"] += 1
            return []
        self._note_unauthenticated_close(conn, now)
        return self._remove(conn)

    def _note_unauthenticated_close(self, conn: Connection, now: float | None) -> None:
        if now is None or conn.is_session:
            return
        peer = (conn.source, conn.sport)
        recent = self._recent_closes
        recent[peer] = now
        recent.move_to_end(peer)
        # Oldest first (time only moves forward): those past the window can no longer be
        # joined, so they go now. Kept until the cap, each stayed behind for 4,096 more closes:
        # a slow growth on a port that granted clients often fail to log in to.
        horizon = now - RECENT_CLOSE_WINDOW
        while len(recent) > RECENT_CLOSES or next(iter(recent.values())) < horizon:
            recent.popitem(last=False)

    def listed(self, connections: Iterable[ConnectionId], origin: str, now: float) -> list[Change]:
        """A full listing from `origin`: see the header for what it closes and confirms."""
        self._counters["listings"] += 1
        listed = {(normalize(s), sport, dport) for s, sport, dport in connections}
        peers = {(s, sport) for s, sport, _ in listed}
        changes: list[Change] = []
        for key, conn in list(self._conns.items()):
            if key in listed:
                continue
            if origin in conn.seen_by:
                self._note_unauthenticated_close(conn, now)
                changes += self._remove(conn, f"gone from the {origin} listing")
            elif not conn.seen_by:
                unknown_port = conn.dport == UNKNOWN_DPORT
                if not (unknown_port and (conn.source, conn.sport) in peers):
                    changes += self._remove(conn, f"not in the {origin} listing")
        for key in sorted(listed, key=_order):
            changes += self._confirm(key, origin, now)
        return changes

    def forget_origins(self, up: frozenset[str]) -> None:
        """Only the origins in `up` can still report: the others no longer vouch for anything."""
        for conn in self._conns.values():
            conn.seen_by.intersection_update(up)

    # -- the journal ---------------------------------------------------------------------------

    def session_opened(
        self, source: IPAddress, sport: int, user: str, pid: int, now: float
    ) -> list[Change]:
        """sshd accepted a login from source:sport: every connection of that pair is a session."""
        source = normalize(source)
        dports = self._by_peer.get((source, sport))
        if not dports:
            conn = Connection(
                source, sport, UNKNOWN_DPORT, now, now, AuthState.ACCEPTED, JOURNAL_ORIGIN
            )
            conn.user, conn.pid = user, pid
            closed_at = self._recent_closes.pop((source, sport), None)
            if closed_at is not None and now - closed_at <= RECENT_CLOSE_WINDOW:
                # Its connection already closed (the Accepted line was read late): a session
                # that has opened and ended, so a grant lingers from now rather than waiting.
                self._counters["sessions_accepted_after_close"] += 1
                return self._add(conn) + self._remove(conn, "closed before its Accepted was read")
            return self._add(conn)
        changes: list[Change] = []
        for dport in sorted(dports):
            conn = self._conns[(source, sport, dport)]
            was = conn.auth
            conn.user, conn.pid = user, pid
            if was is AuthState.ACCEPTED:
                self._counters["sessions_duplicate"] += 1
            elif was is AuthState.ASSUMED:
                conn.auth = AuthState.ACCEPTED  # now with a user name; it was a session already
            else:
                self._set_auth(conn, AuthState.ACCEPTED)
                changes.append(Change(ChangeKind.SESSION_OPENED, conn))
        return changes

    def session_closed(self, source: IPAddress, sport: int) -> list[Change]:
        """sshd says the login from source:sport ended: its connection(s) end with it."""
        source = normalize(source)
        dports = self._by_peer.get((source, sport))
        if not dports:
            self._counters["closes_unknown"] += 1
            return []
        changes: list[Change] = []
        for dport in sorted(dports):
            changes += self._remove(self._conns[(source, sport, dport)])
        return changes

    # -- authentication policy -----------------------------------------------------------------

    def assume_pending(self) -> list[Change]:
        """Authentication can no longer be observed (or is no longer required): every pending
        connection becomes a session. Expired ones stay expired (sshd has dropped them)."""
        changes: list[Change] = []
        for conn in self._conns.values():
            if conn.auth is AuthState.PENDING:
                self._set_auth(conn, AuthState.ASSUMED)
                changes.append(Change(ChangeKind.SESSION_OPENED, conn))
        return changes

    def expire_next(self, now: float) -> list[Change] | None:
        """The earliest due login grace, or None when none has come."""
        key = self._graces.pop_due(now)
        if key is None:
            return None
        conn = self._conns.get(key)
        if conn is None or conn.auth is not AuthState.PENDING:
            raise AssertionError(f"grace deadline without a pending connection: {key}")
        self._set_auth(conn, AuthState.EXPIRED, cancel=False)
        self._counters["unauthenticated_expired"] += 1
        return [Change(ChangeKind.EXPIRED, conn)]

    # -- views ---------------------------------------------------------------------------------

    def views(self, now: float) -> tuple[SessionView, ...]:
        return tuple(
            SessionView(
                source=c.source,
                sport=c.sport,
                dport=c.dport,
                user=c.user,
                since=c.since,
                authenticated=c.is_session,
                origin=c.origin,
                auth=c.auth,
                counting=c.counts(now),
                grace_end=c.grace_end if c.auth is AuthState.PENDING else None,
                seen_by=tuple(sorted(c.seen_by)),
                pid=c.pid,
            )
            for c in sorted(self._conns.values(), key=lambda c: _order(c.key))
        )

    # -- internals -----------------------------------------------------------------------------

    def _confirm(self, key: ConnectionId, origin: str, now: float) -> list[Change]:
        """`origin` vouches for the connection: known (add the voucher), journal-only (fill in
        its port), or new."""
        conn = self._conns.get(key)
        if conn is not None:
            conn.seen_by.add(origin)
            return []
        source, sport, dport = key
        journal_only = self._conns.get((source, sport, UNKNOWN_DPORT))
        if journal_only is not None and dport != UNKNOWN_DPORT:
            self._rekey(journal_only, dport)
            journal_only.seen_by.add(origin)
            return []
        auth = AuthState.ASSUMED if self.assume_auth else AuthState.PENDING
        conn = Connection(source, sport, dport, now, now + self.grace, auth, origin, {origin})
        return self._add(conn)

    def _add(self, conn: Connection) -> list[Change]:
        self._conns[conn.key] = conn
        self._by_peer.setdefault((conn.source, conn.sport), set()).add(conn.dport)
        self._counters["connections_opened"] += 1
        if conn.is_session:
            self._counters["sessions_opened"] += 1
        self._count_auth(conn, +1)
        if conn.auth is AuthState.PENDING:
            self._graces.schedule(conn.key, conn.grace_end)
        kind = ChangeKind.SESSION_OPENED if conn.is_session else ChangeKind.OPENED
        changes = [Change(kind, conn, created=True)]
        while len(self._conns) > self.cap:
            changes += self._evict_one()
        return changes

    def _remove(self, conn: Connection, detail: str = "", *, evicted: bool = False) -> list[Change]:
        key = conn.key
        del self._conns[key]
        dports = self._by_peer[(conn.source, conn.sport)]
        dports.discard(conn.dport)
        if not dports:
            del self._by_peer[(conn.source, conn.sport)]
        self._count_auth(conn, -1)
        self._graces.cancel(key)
        self._counters["connections_evicted" if evicted else "connections_closed"] += 1
        if conn.is_session:
            self._counters["sessions_closed"] += 1
        kind = ChangeKind.SESSION_CLOSED if conn.is_session else ChangeKind.CLOSED
        return [Change(kind, conn, detail=detail)]

    def _evict_one(self) -> list[Change]:
        victim: Connection | None = None
        for index, conn in enumerate(self._conns.values()):
            if index >= EVICTION_SCAN:
                break
            if not self._protected(conn.source):
                victim = conn
                break
        if victim is None:
            victim = next(iter(self._conns.values()))
        return self._remove(victim, "evicted: too many connections tracked", evicted=True)

    def _rekey(self, conn: Connection, dport: int) -> None:
        old = conn.key
        del self._conns[old]
        self._by_peer[(conn.source, conn.sport)].discard(conn.dport)
        self._count_auth(conn, -1)
        self._graces.cancel(old)
        conn.dport = dport
        self._conns[conn.key] = conn
        self._by_peer[(conn.source, conn.sport)].add(dport)
        self._count_auth(conn, +1)
        if conn.auth is AuthState.PENDING:
            self._graces.schedule(conn.key, conn.grace_end)

    def _set_auth(self, conn: Connection, auth: AuthState, *, cancel: bool = True) -> None:
        was_session = conn.is_session
        self._count_auth(conn, -1)
        if cancel:
            self._graces.cancel(conn.key)
        conn.auth = auth
        self._count_auth(conn, +1)
        if conn.is_session and not was_session:
            self._counters["sessions_opened"] += 1

    def _count_auth(self, conn: Connection, delta: int) -> None:
        """Keep the per-source tallies in step with one record entering (+1) or leaving (-1)."""
        if conn.is_session:
            self._sessions[conn.source] += delta
            if self._sessions[conn.source] <= 0:
                del self._sessions[conn.source]
        elif conn.auth is AuthState.PENDING:
            pending = self._pending.setdefault(conn.source, {})
            if delta > 0:
                pending[conn.key] = conn.grace_end
            else:
                pending.pop(conn.key, None)
            if not pending:
                del self._pending[conn.source]
