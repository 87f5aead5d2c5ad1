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
#
# Failures and bans (the rules are in bans.py):
#   AuthFailed                        the journal, btmp and auth.log watchers (one attempt may come
#                                     from all three: joined there)
#   BanRequested / UnbanRequested     the operator
#   OffencesLoaded, then BanFound     start-up: the state store's histories, the kernel's bans
# A banned source's knocks are dropped before the knock matcher (knocks_banned), and a ban closes
# the grants it covers (reason "banned": the ban's rule comes first, they were of no use). "A live
# session" for the ban rules means one sshd accepted (SessionOpened): connections merely assumed
# to be sessions (no journal, or require_auth = false) protect nobody from a ban, or an attacker's
# own connections would shield it whenever the journal is down.
#
# Everyone doors (open_to = "everyone"; the rules are in everyone.py): a completed knock opens the
# guarded ports to every source for the door's window, never extended; adopt_everyone() takes the
# kernel's remaining time at start-up.
#
# SPA (the rules are in spa.py): SpaSeen is judged by the SpaGate; an accepted packet opens a grant
# of door "spa:<stanza>" for its address, which then lives like a knock's (window, session, linger).
# Each refusal is one spa_refused notice "reason: detail" (the daemon's log rate limit keeps a
# flood of them short, saying how many it left out); refusals never ban (spoofable sources).
# SpaReplaysLoaded (start-up) restores the replay cache; RecordSpaReplay persists new entries.
#
# Clocks: `now` is the caller's monotonic clock. The ban rules also need the wall clock (log lines
# carry wall-clock times; offence histories are kept in epoch seconds): pass it as `wall`. When a
# call leaves it out, the engine assumes the wall clock moved as `now` did since the last call
# that gave it (before any, wall = now: tests may use one clock for both).
from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from guardian.actions import Action, Ban, Notice, RecordSpaReplay
from guardian.addresses import IPAddress, IPNetwork, in_any, normalize
from guardian.config import (
    MAX_ATTEMPTS,
    MAX_CONNECTIONS,
    MAX_FAILURE_JOINS,
    MAX_FAILURE_SOURCES,
    MAX_OFFENCES,
    Config,
    door_window,
)
from guardian.engine.bans import BanTable, BanView
from guardian.engine.everyone import EveryoneView, EveryoneWindow
from guardian.engine.grants import GrantTable, GrantView
from guardian.engine.knock import KnockCompleted, KnockFailed, KnockOutcome, KnockTracker
from guardian.engine.sessions import AuthState, Change, ChangeKind, ConnectionTable, SessionView
from guardian.engine.spa import SpaAccepted, SpaGate
from guardian.events import (
    AuthFailed,
    BanFound,
    BanRequested,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsListed,
    Event,
    GrantFound,
    GrantRequested,
    KnockSeen,
    OffencesLoaded,
    RevokeRequested,
    SessionClosed,
    SessionOpened,
    SignalsChanged,
    SpaReplaysLoaded,
    SpaSeen,
    UnbanRequested,
)

OPERATOR_DOOR = "operator"
ADOPTED_EVERYONE = "adopted-everyone"  # door name of an everyone window of unknown origin
REASON_CLOSE_SEQUENCE = "close sequence"
REASON_BANNED = "banned"  # a grant closed because a ban covers its source

# Every counter the engine keeps; all start at 0 so a snapshot always carries the same keys.
COUNTER_NAMES: tuple[str, ...] = (
    "knocks_seen",  # every KnockSeen event
    "knocks_ignored",  # matched no door (unknown port, or TCP flags no door accepts)
    "knocks_duplicate",  # a retransmission of the step just taken (tolerated)
    "decoy_hits",  # scan probes on decoy ports (each resets the source's attempts)
    "attempts_started",  # first steps taken
    "attempts_not_started",  # first steps not taken: the same knock completed a sequence
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
    "grants_refused",  # operator grants for a banned source (the ban would make them useless)
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
    # failures (AuthFailed) and bans; see engine/bans.py
    "failures_seen",  # attempts reported, by every origin (duplicates included)
    "failures_joined",  # reports of an attempt another origin had reported already
    "failures_counted",  # distinct attempts counted towards a ban
    "failures_trusted",  # from loopback or trusted networks: never counted
    "failures_in_session",  # from a source with a live accepted session: never counted
    "failures_while_banned",  # distinct attempts of a banned source (no escalation)
    "failures_stale",  # older than findtime when they arrived (replayed history)
    "failures_before_ban",  # older than their source's last ban (read again after a restart)
    "failures_ignored",  # distinct attempts while [ban] enabled = false
    "failure_sources_evicted",  # failure windows dropped to keep them under the cap (LRU)
    "failure_joins_evicted",  # join keys (source, sshd PID) dropped under the cap (LRU)
    "failure_joins_expired",  # join keys older than findtime dropped (nothing could join them)
    "knocks_banned",  # knocks from banned sources, ignored
    "bans",  # bans earned by failures
    "bans_narrowed",  # of those: one address instead of its IPv6 prefix (trusted/session there)
    "bans_spared",  # maxretry reached, but nothing could be banned without catching trusted
    "bans_operator",  # bans the operator asked for
    "bans_of_sessions",  # operator bans that cover a live accepted session
    "bans_refused",  # operator bans refused (loopback, trusted, overlap, bad duration)
    "bans_adopted",  # bans found in the kernel at start-up (BanFound)
    "bans_lifted",  # bans lifted because they cover trusted addresses (adopted or at a reload)
    "bans_expired",  # bans whose kernel timeout has run out (forgotten)
    "unbans",  # bans lifted by the operator
    "offences_loaded",  # offence histories taken from the state store at start-up
    "offences_restored",  # adopted bans the offence history missed (a crash): caught up
    "offences_forgotten",  # histories dropped (too old, over the cap, or by the operator)
    # everyone doors; see engine/everyone.py
    "everyone_opened",  # everyone windows opened by a knock
    "everyone_not_extended",  # knocks of an everyone door while a window was open (no effect)
    "everyone_closed",  # everyone windows closed (their end, or a close sequence)
    "everyone_adopted",  # everyone windows found in the kernel at start-up
    # SPA; see engine/spa.py (refusals per reason are in the snapshot's spa_refusals)
    "spa_seen",  # SpaSeen events (datagrams to the SPA port)
    "spa_accepted",  # authentic, fresh, within policy: a grant opened or refreshed
    "spa_refused",  # every refusal, whatever the reason
    "spa_banned",  # datagrams from banned sources, ignored unread
    "spa_replays_loaded",  # replay digests restored at start-up
    "spa_replays_evicted",  # digests dropped to keep the cache under its cap
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
    bans: tuple[BanView, ...] = ()  # every ban the engine tracks, in the order they were made
    failure_sources: int = 0  # sources (or IPv6 prefixes) with failures being counted
    failures_by_origin: Mapping[str, int] = field(default_factory=dict)  # reports per watcher
    failures_by_rule: Mapping[str, int] = field(default_factory=dict)  # reports per sshd rule
    everyone: EveryoneView | None = None  # the open everyone window, if any
    spa_refusals: Mapping[str, int] = field(default_factory=dict)  # refusals per reason
    spa_replays: int = 0  # replay digests held


class Engine:
    """Pure policy core. Call feed() for each event, handle_timer() when get_timer() has come."""

    def __init__(
        self,
        config: Config,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        max_connections: int = MAX_CONNECTIONS,
        rng: random.Random | None = None,
        max_failure_sources: int = MAX_FAILURE_SOURCES,
        max_failure_joins: int = MAX_FAILURE_JOINS,
        max_offences: int = MAX_OFFENCES,
    ) -> None:
        """rng draws the ban jitter; pass a seeded one for reproducible runs (tests)."""
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
        # Peers (source -> source ports) with a connection sshd accepted: what spares a source.
        self._accepted: dict[IPAddress, set[int]] = {}
        self._bans = BanTable(
            config.ban,
            config.guard.trusted,
            self._counters,
            rng if rng is not None else random.Random(),
            self._has_accepted_session,
            max_sources=max_failure_sources,
            max_joins=max_failure_joins,
            max_offences=max_offences,
        )
        self._everyone = EveryoneWindow(self._counters)
        self._spa = SpaGate(config.spa, config.guard.ports)
        self._last_now: float | None = None
        self._wall_offset = 0.0  # wall - now at the last call that gave the wall clock

    @property
    def config(self) -> Config:
        return self._config

    # -- the public API ------------------------------------------------------------------------

    def feed(self, event: Event, now: float, *, wall: float | None = None) -> list[Action]:
        """One event at `now` (monotonic); `wall` is the wall clock at the same instant (see
        the header: needed for the ban rules, optional elsewhere)."""
        now = self._advance_clock(now)
        wall_now = self._wall(now, wall)
        # Deadlines that have come are honoured before the event: expiry goes by time, whichever
        # of the timer and the packet the event loop happens to deliver first.
        actions = self._run_due(now)
        if isinstance(event, KnockSeen):
            actions += self._on_knock(event, now)
        elif isinstance(event, AuthFailed):
            actions += self._close_banned_grants(self._bans.failed(event, now, wall_now))
        elif isinstance(event, BanFound):
            found = self._bans.found((event,), now, wall_now)
            actions += self._close_banned_grants(found, adopting=True)
        elif isinstance(event, BanRequested):
            actions += self._close_banned_grants(self._bans.requested(event, now, wall_now))
        elif isinstance(event, UnbanRequested):
            actions += self._bans.unban_requested(event)
        elif isinstance(event, OffencesLoaded):
            actions += self._bans.loaded(event, wall_now)
        elif isinstance(event, ConnectionOpened | ConnectionClosed | ConnectionsListed):
            actions += self._on_connections(event, now)
        elif isinstance(event, SessionOpened):
            changes = self._conns.session_opened(
                event.source, event.sport, event.user, event.pid, now
            )
            self._accepted.setdefault(normalize(event.source), set()).add(event.sport)
            actions += self._after(changes, now)
        elif isinstance(event, SessionClosed):
            actions += self._after(self._conns.session_closed(event.source, event.sport), now)
        elif isinstance(event, SignalsChanged):
            actions += self._on_signals(event, now)
        elif isinstance(event, GrantFound):
            adopted = self._grants.adopt(normalize(event.source), event.expires_in, now)
            actions += self._close_banned_grants(adopted, adopting=True)
        elif isinstance(event, GrantRequested):
            actions += self._on_grant_requested(event, now)
        elif isinstance(event, RevokeRequested):
            actions += self._grants.revoke(normalize(event.source), event.reason)
        elif isinstance(event, SpaSeen):
            actions += self._on_spa(event, now, wall_now)
        elif isinstance(event, SpaReplaysLoaded):
            loaded = self._spa.load(event.entries, wall_now)
            self._counters["spa_replays_loaded"] += loaded
        else:
            self._counters["unexpected_events"] += 1
        # A zero-length window, an adopted grant with no time left or a zero linger is due at
        # once: settle it now, so get_timer() never points before `now`.
        return actions + self._run_due(now)

    def handle_timer(self, now: float, *, wall: float | None = None) -> list[Action]:
        now = self._advance_clock(now)
        self._wall(now, wall)
        return self._run_due(now)

    def get_timer(self) -> float | None:
        deadlines = [
            d
            for d in (
                self._knocks.next_deadline(),
                self._conns.next_deadline(),
                self._grants.next_deadline(),
                self._bans.next_deadline(),
                self._everyone.next_deadline(),
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def reconfigure(self, config: Config, now: float, *, wall: float | None = None) -> list[Action]:
        """SIGHUP: grants and connections stay as they are (new linger, lease and login grace
        apply from their next transition on); attempts of doors that changed are dropped; if
        authentication is no longer required, pending connections become sessions. Bans stay
        (the new [ban] applies to the next ones), except those that now cover trusted addresses,
        which are lifted; a new ipv6_prefix restarts the counting of failures."""
        now = self._advance_clock(now)
        self._wall(now, wall)
        actions = self._run_due(now)
        self._knocks.reconfigure(config.doors)
        self._config = config
        self._grants.access = config.access
        self._conns.grace = config.access.login_grace
        actions += self._bans.reconfigure(config.ban, config.guard.trusted)
        self._spa.reconfigure(config.spa, config.guard.ports)
        actions += self._apply_auth_policy(now)
        return actions + self._run_due(now)

    def adopt_bans(
        self, found: Iterable[BanFound], now: float, *, wall: float | None = None
    ) -> list[Action]:
        """Start-up: the bans listed from the kernel, fed as one step. The same as feeding each
        BanFound, without settling the deadlines around every one of them (100k bans at once)."""
        now = self._advance_clock(now)
        wall_now = self._wall(now, wall)
        actions = self._run_due(now)
        actions += self._close_banned_grants(self._bans.found(found, now, wall_now), adopting=True)
        return actions + self._run_due(now)

    def adopt_everyone(self, expires_in: float, now: float) -> list[Action]:
        """Start-up: the kernel still holds an everyone window with `expires_in` seconds left.
        It keeps exactly that time (a restart never extends it); the door is the config's only
        everyone door, else ADOPTED_EVERYONE."""
        now = self._advance_clock(now)
        everyone = [d.name for d in self._config.doors if d.open_to == "everyone"]
        door = everyone[0] if len(everyone) == 1 else ADOPTED_EVERYONE
        return self._everyone.adopt(door, expires_in, now) + self._run_due(now)

    def banned(self, address: IPAddress) -> IPNetwork | None:
        """The tracked ban covering this address, if any."""
        return self._bans.covering(address)

    def snapshot(self, now: float) -> EngineSnapshot:
        """A read-only view; it changes nothing, not even due deadlines."""
        return EngineSnapshot(
            now=now,
            grants=self._grants.views(now),
            attempts=self._knocks.sources_in_progress,
            attempt_records=self._knocks.attempt_records,
            timer_entries=(
                self._knocks.timer_entries
                + self._conns.timer_entries
                + self._grants.timer_entries
                + self._bans.timer_entries
            ),
            next_deadline=self.get_timer(),
            counters=dict(self._counters),
            sessions=self._conns.views(now),
            auth_signal=self._auth_signal,
            connection_origins=None if self._origins is None else tuple(sorted(self._origins)),
            bans=self._bans.views(),
            failure_sources=self._bans.failure_sources,
            failures_by_origin=dict(self._bans.by_origin),
            failures_by_rule=dict(self._bans.by_rule),
            everyone=self._everyone.view(),
            spa_refusals=dict(self._spa.refusals),
            spa_replays=len(self._spa.replays),
        )

    # -- events --------------------------------------------------------------------------------

    def _close_banned_grants(
        self, actions: list[Action], *, adopting: bool = False
    ) -> list[Action]:
        """`actions`, then a revoke for each grant a ban covers, checked when `actions` ban
        something or at start-up adoption (adopted bans and grants come with no Ban action). A ban
        outranks a grant: its rule is matched first, so the source could not use the grant
        anyway; closing it keeps the table, the status and the hooks from showing a door open to
        a banned source, and a short ban from ending into a grant still open."""
        if not len(self._grants) or not (adopting or any(isinstance(a, Ban) for a in actions)):
            return actions
        for source in self._grants.sources():
            if self._bans.covering(source) is not None:
                actions = actions + self._grants.revoke(source, REASON_BANNED)
        return actions

    def _on_knock(self, event: KnockSeen, now: float) -> list[Action]:
        source = normalize(event.source)
        if self._bans.covering(source) is not None:
            self._counters["knocks_seen"] += 1
            self._counters["knocks_banned"] += 1
            return []
        actions: list[Action] = []
        for outcome in self._knocks.feed(source, event, now):
            actions += self._on_knock_outcome(outcome, now)
        return actions

    def _on_knock_outcome(self, outcome: KnockOutcome, now: float) -> list[Action]:
        if isinstance(outcome, KnockFailed):
            return self._failure_notice(outcome)
        return self._on_completed(outcome, now)

    def _on_completed(self, done: KnockCompleted, now: float) -> list[Action]:
        self._counters["knocks_completed"] += 1
        source, door = done.source, done.matcher.door.name
        if done.matcher.door.open_to == "everyone":
            # Trusted sources too: opening for everyone is the point (a friend, a phone).
            if done.matcher.kind == "close":
                closed = self._everyone.close(REASON_CLOSE_SEQUENCE, source)
                detail = "close sequence" if closed else "close sequence, nothing open"
                return _cause_first(closed, Notice("knock_completed", source, door, detail))
            window = door_window(done.matcher.door, self._config.access)
            return self._everyone.open(door, window, now, source)
        if done.matcher.kind == "close":
            if source not in self._grants:
                return [
                    Notice("knock_completed", source, door, "close sequence, no grant to close")
                ]
            effects = self._grants.revoke(source, REASON_CLOSE_SEQUENCE)
            return _cause_first(effects, Notice("knock_completed", source, door, "close sequence"))
        if in_any(source, self._config.guard.trusted):
            return [Notice("knock_completed", source, door, "trusted, no grant needed")]
        window = door_window(done.matcher.door, self._config.access)
        effects = self._grants.open(source, door, window, now)
        return _cause_first(effects, Notice("knock_completed", source, door))

    def _on_spa(self, event: SpaSeen, now: float, wall: float) -> list[Action]:
        self._counters["spa_seen"] += 1
        source = normalize(event.source)
        if self._bans.covering(source) is not None:
            self._counters["spa_banned"] += 1
            return []
        evicted = self._spa.replays.evicted
        verdict, replay = self._spa.judge(source, event.payload, wall)
        self._counters["spa_replays_evicted"] += self._spa.replays.evicted - evicted
        actions: list[Action] = []
        if replay is not None:
            actions.append(RecordSpaReplay(*replay))
        if not isinstance(verdict, SpaAccepted):
            self._counters["spa_refused"] += 1
            reason = f"{verdict.reason}: {verdict.detail}"
            return actions + self._spa_refusal_notice(source, verdict.stanza, reason)
        return actions + self._on_spa_accepted(verdict, source, now)

    def _on_spa_accepted(
        self, accepted: SpaAccepted, source: IPAddress, now: float
    ) -> list[Action]:
        door = f"spa:{accepted.stanza}"
        address = accepted.address
        skew, side = abs(accepted.skew), "behind" if accepted.skew > 0 else "ahead of"
        detail = _join(
            f"for {address}" if address != source else "",
            f"client clock {skew:.0f}s {side} ours" if skew >= 1 else "",
        )
        if self._bans.covering(address) is not None:
            self._counters["spa_refused"] += 1
            self._spa.refusals["banned_address"] += 1
            detail = f"banned_address: {address} is banned"
            return self._spa_refusal_notice(source, accepted.stanza, detail)
        self._counters["spa_accepted"] += 1
        if in_any(address, self._config.guard.trusted):
            return [Notice("spa_accepted", source, door, _join(detail, "trusted, no grant needed"))]
        effects = self._grants.open(address, door, accepted.window, now)
        return _cause_first(effects, Notice("spa_accepted", source, door, detail))

    def _spa_refusal_notice(self, source: IPAddress, stanza: str, detail: str) -> list[Action]:
        # One notice per refusal; the daemon's log rate limit (notices.py) keeps a flood short.
        return [Notice("spa_refused", source, f"spa:{stanza}" if stanza else "spa", detail)]

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
        for change in changes:
            if change.kind is ChangeKind.SESSION_CLOSED:
                self._forget_accepted(change.connection.source, change.connection.sport)
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

    def _has_accepted_session(self, where: IPAddress | IPNetwork) -> bool:
        """Does a connection sshd accepted come from this address (or network)?"""
        if isinstance(where, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return where in self._accepted
        return any(s.version == where.version and s in where for s in self._accepted)

    def _forget_accepted(self, source: IPAddress, sport: int) -> None:
        sports = self._accepted.get(source)
        if sports is not None:
            sports.discard(sport)
            if not sports:
                del self._accepted[source]

    def _trusted(self, source: IPAddress) -> bool:
        return in_any(source, self._config.guard.trusted)

    def _on_grant_requested(self, event: GrantRequested, now: float) -> list[Action]:
        if not (event.duration > 0 and math.isfinite(event.duration)):
            self._counters["unexpected_events"] += 1
            return []
        source = normalize(event.source)
        banned = self._bans.covering(source)
        if banned is not None:  # the ban's rule comes first: such a grant would open nothing
            self._counters["grants_refused"] += 1
            detail = f"{banned} is banned; unban it first"
            return [Notice("grant_refused", source, OPERATOR_DOOR, detail)]
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

    def _wall(self, now: float, wall: float | None) -> float:
        """The wall clock at `now`: as given (remembered as an offset), else estimated."""
        if wall is not None and math.isfinite(wall):
            self._wall_offset = wall - now
            return wall
        return now + self._wall_offset

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
                        self._bans.next_deadline(),
                        self._everyone.next_deadline(),
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
            elif rank == 2:
                expired = self._grants.expire_next(now)
                if expired is None:
                    raise AssertionError("a due grant deadline did not expire")
                actions += expired
            elif rank == 4:
                actions += self._everyone.expire(now)
            else:
                lifted = self._bans.expire_next(now)
                if lifted is None:
                    raise AssertionError("a due ban deadline did not expire")
                actions += lifted


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)


def _address_order(source: IPAddress) -> tuple[int, int]:
    return (source.version, int(source))


def _cause_first(effects: list[Action], *causes: Notice) -> list[Action]:
    """Order a step's actions: what to do to the world, then why (the causes), then the results."""
    return [
        *(a for a in effects if not isinstance(a, Notice)),
        *causes,
        *(a for a in effects if isinstance(a, Notice)),
    ]
