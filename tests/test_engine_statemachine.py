# Invariants of the pure engine under random event streams (Hypothesis RuleBasedStateMachine).
#
# A model of the kernel's grant set (source -> when its element expires) is rebuilt from nothing
# but the actions the engine returns (plus the adoption events, which by design may return no
# action) and must always equal the engine's snapshot. Along the way:
#   * a grant appears only by a completed knock, an operator request or an adoption (a kernel grant
#     at start, or a live connection in the start-up listing), never for a trusted source by knock
#     or listing, and no RefreshGrant or RevokeGrant names a source without one;
#   * a grant with a counting connection (a session, or one pending within its login grace) is
#     revoked only by a close sequence or the operator;
#   * IN_SESSION holds exactly the grants with sessions; every other grant ends once time passes
#     (its sessions at zero, the linger and any grace over): checked after a quiet period;
#   * the kernel's timeout never runs out under a live grant, and never before the close time of
#     a WINDOW or LINGER grant;
#   * the timer never points before the last `now`; attempts and connections stay under their caps.
from __future__ import annotations

import ipaddress

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from guardian.actions import Action, Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.addresses import IPAddress, in_any, normalize
from guardian.config import Access, Config, Door, Guard, KnockStep, TcpFlags
from guardian.engine import COUNTER_NAMES, Engine
from guardian.engine.grants import TRANSITIONS, GrantState, Trigger
from guardian.events import (
    ACK,
    FIN,
    SYN,
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    ConnectionsListed,
    GrantFound,
    GrantRequested,
    KnockSeen,
    RevokeRequested,
    SessionClosed,
    SessionOpened,
    SignalsChanged,
)

CAP = 3  # small, so eviction happens often
CONNECTION_CAP = 6  # likewise
WINDOW = 10.0
LINGER = 4.0
LEASE = 8.0
GRACE = 6.0
QUIET = 40.0  # longer than any window, operator grant, adopted timeout, linger or grace here
SPORTS = [1, 2, 3]
DPORTS = [22, 22, 2222]
ORIGINS = ["conntrack", "sockets"]
TRUSTED = (ipaddress.ip_network("192.0.2.0/28"),)
POOL = [
    ipaddress.ip_address(a)
    for a in (
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "192.0.2.1",  # trusted
        "2001:db8::1",
        "::ffff:198.51.100.1",  # the same source as the first one
    )
]
PORTS = [7000, 8000, 9000, 6000, 6999, 7001, 8001, 9001, 5999, 5555]
FLAGS = [SYN, SYN, SYN, ACK, SYN | ACK, FIN, 0]


def _tcp(*ports: int) -> tuple[KnockStep, ...]:
    return tuple(KnockStep(p, "tcp") for p in ports)


def _config(alt_timeout: float, require_auth: bool = True) -> Config:
    ssh = Door(
        name="ssh",
        sequence=_tcp(7000, 8000, 9000),
        close=_tcp(9000, 8000, 7000),
        timeout=5.0,
        decoys=_tcp(6999, 7001, 7999, 8001, 8999, 9001),
    )
    alt = Door(
        name="alt",
        sequence=(KnockStep(7000), KnockStep(8000), KnockStep(6000, "udp")),
        timeout=alt_timeout,
        tcp_flags=TcpFlags(required=SYN, forbidden=ACK),
        decoys=(KnockStep(5999, "udp"), KnockStep(6001, "udp")),
    )
    access = Access(
        window=WINDOW,
        linger=LINGER,
        lease=LEASE,
        require_auth=require_auth,
        login_grace_time=GRACE,
    )
    return Config(guard=Guard(trusted=TRUSTED), access=access, doors=(ssh, alt))


_CONNECTIONS = st.tuples(st.sampled_from(POOL), st.sampled_from(SPORTS), st.sampled_from(DPORTS))


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(_config(3.0), max_attempts=CAP, max_connections=CONNECTION_CAP)
        self.now = 1000.0
        self.model: dict[IPAddress, float] = {}  # source -> when its kernel element expires
        self.may_open = False  # this step may add a grant: a knock or an operator request
        self.may_adopt = False  # this step may adopt live connections: the start-up listing

    # -- applying the engine's output to the model ------------------------------------------

    def check(self, actions: list[Action]) -> None:
        revoked_by_time: list[IPAddress] = []
        for action in actions:
            if isinstance(action, OpenGrant):
                assert self.may_open, action
                assert action.source not in self.model, action
                assert action.door == "operator" or not in_any(action.source, TRUSTED), action
                assert action.timeout > 0
                self.model[action.source] = self.now + action.timeout
            elif isinstance(action, RefreshGrant):
                if action.source not in self.model:
                    # Only the start-up listing adds an element by a refresh (adoption).
                    assert self.may_adopt, action
                    assert not in_any(action.source, TRUSTED), action
                assert action.timeout > 0, action
                self.model[action.source] = self.now + action.timeout
            elif isinstance(action, RevokeGrant):
                assert action.source in self.model, action
                if action.reason not in {"close sequence", "operator"}:
                    revoked_by_time.append(action.source)
                del self.model[action.source]
            else:
                assert isinstance(action, Notice)
                trusted = action.source is not None and in_any(action.source, TRUSTED)
                if action.kind == "knock_completed" and trusted:
                    assert action.detail in {
                        "trusted, no grant needed",
                        "close sequence",
                        "close sequence, no grant to close",
                    }
        if revoked_by_time:
            counting = {s.source for s in self.engine.snapshot(self.now).sessions if s.counting}
            assert not counting.intersection(revoked_by_time), (revoked_by_time, counting)
        self.may_open = self.may_adopt = False

    # -- rules --------------------------------------------------------------------------------

    @initialize(
        adopted=st.lists(
            st.tuples(st.sampled_from(POOL), st.none() | st.just(0.0) | st.floats(0.5, 30.0)),
            max_size=2,
        )
    )
    def adopt_at_start(self, adopted: list[tuple[IPAddress, float | None]]) -> None:
        """Grants found in the kernel at start: by design no action (unless the element lacks a
        timeout, or has none left), so the model learns of them from the event itself. (If the
        start-up listing ran first, the source may have connections or an adopted grant already:
        then the engine may refresh, which check() follows.)"""
        for source, expires_in in adopted:
            key = normalize(source)
            fresh = key not in self.model and all(
                s.source != key for s in self.engine.snapshot(self.now).sessions
            )
            actions = self.engine.feed(GrantFound(source, expires_in), self.now)
            if expires_in is None:
                self.model.setdefault(key, self.now)  # it exists; refreshed next
            else:
                self.model[key] = self.now + expires_in
                if fresh:
                    assert (actions == []) == (expires_in > 0)
            self.check(actions)

    @rule(
        source=st.sampled_from(POOL),
        port=st.sampled_from(PORTS),
        proto=st.sampled_from(["tcp", "tcp", "udp"]),
        flags=st.sampled_from(FLAGS),
    )
    def knock(self, source: IPAddress, port: int, proto: str, flags: int) -> None:
        self.may_open = True
        if proto == "udp":
            event = KnockSeen(source, port, "udp")
        else:
            event = KnockSeen(source, port, "tcp", flags)
        self.check(self.engine.feed(event, self.now))

    @rule(
        source=st.sampled_from(POOL),
        door=st.sampled_from(["ssh", "ssh-close", "alt"]),
        gap=st.floats(0.0, 2.5),
    )
    def knock_sequence(self, source: IPAddress, door: str, gap: float) -> None:
        sequence = {
            "ssh": [(7000, "tcp"), (8000, "tcp"), (9000, "tcp")],
            "ssh-close": [(9000, "tcp"), (8000, "tcp"), (7000, "tcp")],
            "alt": [(7000, "tcp"), (8000, "tcp"), (6000, "udp")],
        }[door]
        for i, (port, proto) in enumerate(sequence):
            self.now += gap if i else 0.0
            flags = SYN if proto == "tcp" else 0
            event = KnockSeen(source, port, "udp" if proto == "udp" else "tcp", flags)
            self.may_open = True
            self.check(self.engine.feed(event, self.now))

    @rule(dt=st.floats(0.0, 12.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.check(self.engine.handle_timer(self.now))

    @precondition(lambda self: self.engine.get_timer() is not None)
    @rule()
    def advance_to_timer_exactly(self) -> None:
        timer = self.engine.get_timer()
        assert timer is not None
        self.now = max(self.now, timer)
        self.check(self.engine.handle_timer(self.now))

    @rule(source=st.sampled_from(POOL), duration=st.floats(0.5, 20.0))
    def grant_requested(self, source: IPAddress, duration: float) -> None:
        self.may_open = True
        self.check(self.engine.feed(GrantRequested(source, duration), self.now))

    @rule(source=st.sampled_from(POOL))
    def revoke_requested(self, source: IPAddress) -> None:
        self.check(self.engine.feed(RevokeRequested(source), self.now))

    @rule(
        alt_timeout=st.sampled_from([3.0, 4.0]), require_auth=st.sampled_from([True, True, False])
    )
    def reconfigure(self, alt_timeout: float, require_auth: bool) -> None:
        self.check(self.engine.reconfigure(_config(alt_timeout, require_auth), self.now))

    # -- session rules -------------------------------------------------------------------------

    @initialize(
        origins=st.frozensets(st.sampled_from(ORIGINS)),
        auth=st.booleans(),
        live=st.frozensets(_CONNECTIONS, max_size=4),
        accepted=st.lists(st.tuples(st.sampled_from(POOL), st.sampled_from(SPORTS)), max_size=2),
    )
    def start_up(
        self,
        origins: frozenset[str],
        auth: bool,
        live: frozenset[ConnectionId],
        accepted: list[tuple[IPAddress, int]],
    ) -> None:
        """The daemon's start: which watchers are up, the journal's history, the first listing."""
        self.check(self.engine.feed(SignalsChanged(origins, auth), self.now))
        for source, sport in accepted:
            self.check(self.engine.feed(SessionOpened(source, sport, "u", 1), self.now))
        self.may_adopt = True
        self.check(self.engine.feed(ConnectionsListed(live, "conntrack", True), self.now))

    @rule(connection=_CONNECTIONS, origin=st.sampled_from(ORIGINS))
    def connection_opened(self, connection: ConnectionId, origin: str) -> None:
        self.check(self.engine.feed(ConnectionOpened(*connection, origin), self.now))

    @rule(connection=_CONNECTIONS, origin=st.sampled_from(ORIGINS))
    def connection_closed(self, connection: ConnectionId, origin: str) -> None:
        self.check(self.engine.feed(ConnectionClosed(*connection, origin), self.now))

    @rule(source=st.sampled_from(POOL), sport=st.sampled_from(SPORTS))
    def session_opened(self, source: IPAddress, sport: int) -> None:
        self.check(self.engine.feed(SessionOpened(source, sport, "alice", 7), self.now))

    @rule(source=st.sampled_from(POOL), sport=st.sampled_from(SPORTS))
    def session_closed(self, source: IPAddress, sport: int) -> None:
        self.check(self.engine.feed(SessionClosed(source, sport, "alice", 7), self.now))

    @rule(live=st.frozensets(_CONNECTIONS, max_size=4), origin=st.sampled_from(ORIGINS))
    def listed(self, live: frozenset[ConnectionId], origin: str) -> None:
        self.check(self.engine.feed(ConnectionsListed(live, origin), self.now))

    @rule(origins=st.frozensets(st.sampled_from(ORIGINS)), auth=st.booleans())
    def signals_changed(self, origins: frozenset[str], auth: bool) -> None:
        self.check(self.engine.feed(SignalsChanged(origins, auth), self.now))

    @rule()
    def quiet_period(self) -> None:
        """Time passes with no event: every grant without a session ends."""
        end = self.now + QUIET
        for _ in range(1000):
            timer = self.engine.get_timer()
            if timer is None or timer > end:
                break
            self.now = max(self.now, timer)
            self.check(self.engine.handle_timer(self.now))
        self.now = end
        self.check(self.engine.handle_timer(self.now))
        for grant in self.engine.snapshot(self.now).grants:
            assert grant.state is GrantState.IN_SESSION and grant.sessions > 0, grant

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def timer_never_in_the_past(self) -> None:
        timer = self.engine.get_timer()
        assert timer is None or timer >= self.now

    @invariant()
    def model_equals_snapshot(self) -> None:
        snap = self.engine.snapshot(self.now)
        assert {g.source: g.kernel_expires_at for g in snap.grants} == self.model
        # The kernel still holds every grant the engine holds: ended ones were revoked in time.
        assert all(end > self.now for end in self.model.values())

    @invariant()
    def states_follow_the_sessions(self) -> None:
        snap = self.engine.snapshot(self.now)
        for grant in snap.grants:
            assert (grant.state is GrantState.IN_SESSION) == (grant.sessions > 0), grant
            assert grant.next_change >= self.now, grant
            if grant.state is not GrantState.IN_SESSION:
                assert grant.expires_at <= grant.kernel_expires_at, grant
        assert len(snap.sessions) <= CONNECTION_CAP
        for session in snap.sessions:
            assert session.authenticated == (session.auth in {"accepted", "assumed"})

    @invariant()
    def attempts_bounded(self) -> None:
        snap = self.engine.snapshot(self.now)
        assert snap.attempts <= CAP
        assert snap.attempt_records <= CAP * 3  # three matchers: ssh open, ssh close, alt
        assert set(snap.counters) >= set(COUNTER_NAMES)
        assert all(v >= 0 for v in snap.counters.values())


EngineMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestEngineStateMachine = EngineMachine.TestCase


def test_grant_table_lets_every_grant_end() -> None:
    """Structural invariant of the transition table: every live state can be revoked and has a
    deadline row, and CLOSED has none (a deadline there would be a broken invariant)."""
    for state, row in TRANSITIONS.items():
        if state is not GrantState.CLOSED:
            assert row[Trigger.REVOKE] is GrantState.CLOSED
            assert Trigger.DEADLINE in row
    assert Trigger.DEADLINE not in TRANSITIONS[GrantState.CLOSED]
    assert set(TRANSITIONS) == set(GrantState)
