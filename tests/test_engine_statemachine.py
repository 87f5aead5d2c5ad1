# Invariants of the pure engine under random event streams (Hypothesis RuleBasedStateMachine).
#
# A model of the open grants is rebuilt from nothing but the actions the engine returns (plus the
# adoption events, which by design return no action) and must always equal the engine's snapshot:
# every OpenGrant is followed by a RevokeGrant once its window has passed, no RefreshGrant or
# RevokeGrant names a source without a grant, knocks never grant a trusted source, the timer never
# points before the last `now`, and in-progress attempts never exceed the cap.
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
from guardian.events import ACK, FIN, SYN, GrantFound, GrantRequested, KnockSeen, RevokeRequested

CAP = 3  # small, so eviction happens often
WINDOW = 10.0
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


def _config(alt_timeout: float) -> Config:
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
    return Config(guard=Guard(trusted=TRUSTED), access=Access(window=WINDOW), doors=(ssh, alt))


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(_config(3.0), max_attempts=CAP)
        self.now = 1000.0
        self.model: dict[IPAddress, float] = {}  # source -> when its grant must end

    # -- applying the engine's output to the model ------------------------------------------

    def check(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, OpenGrant):
                assert action.source not in self.model, action
                assert action.door == "operator" or not in_any(action.source, TRUSTED), action
                assert action.timeout > 0
                self.model[action.source] = self.now + action.timeout
            elif isinstance(action, RefreshGrant):
                assert action.source in self.model, action
                self.model[action.source] = self.now + action.timeout
            elif isinstance(action, RevokeGrant):
                assert action.source in self.model, action
                if action.reason == "window ended":
                    assert self.model[action.source] <= self.now, action
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

    # -- rules --------------------------------------------------------------------------------

    @initialize(
        adopted=st.lists(
            st.tuples(st.sampled_from(POOL), st.none() | st.just(0.0) | st.floats(0.5, 30.0)),
            max_size=2,
        )
    )
    def adopt_at_start(self, adopted: list[tuple[IPAddress, float | None]]) -> None:
        """Grants found in the kernel at start: by design no action (unless the element lacks a
        timeout, or has none left), so the model learns of them from the event itself."""
        for source, expires_in in adopted:
            actions = self.engine.feed(GrantFound(source, expires_in), self.now)
            if expires_in is None:
                self.model.setdefault(normalize(source), self.now)  # it exists; refreshed next
            else:
                self.model[normalize(source)] = self.now + expires_in
                assert (actions == []) == (expires_in > 0)
            self.check(actions)

    @rule(
        source=st.sampled_from(POOL),
        port=st.sampled_from(PORTS),
        proto=st.sampled_from(["tcp", "tcp", "udp"]),
        flags=st.sampled_from(FLAGS),
    )
    def knock(self, source: IPAddress, port: int, proto: str, flags: int) -> None:
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
        self.check(self.engine.feed(GrantRequested(source, duration), self.now))

    @rule(source=st.sampled_from(POOL))
    def revoke_requested(self, source: IPAddress) -> None:
        self.check(self.engine.feed(RevokeRequested(source), self.now))

    @rule(alt_timeout=st.sampled_from([3.0, 4.0]))
    def reconfigure(self, alt_timeout: float) -> None:
        self.check(self.engine.reconfigure(_config(alt_timeout), self.now))

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def timer_never_in_the_past(self) -> None:
        timer = self.engine.get_timer()
        assert timer is None or timer >= self.now

    @invariant()
    def model_equals_snapshot(self) -> None:
        snap = self.engine.snapshot(self.now)
        assert {g.source: g.expires_at for g in snap.grants} == self.model
        # Every grant the model holds is still inside its window: ended ones were revoked.
        assert all(end > self.now for end in self.model.values())

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
