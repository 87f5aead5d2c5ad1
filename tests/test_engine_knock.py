# Knock matching and grant life cycle of the pure engine, with explicit time (no sleeping).
# Every test asserts the whole list of actions the engine returned, not fragments of it.
from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

import pytest

from guardian.actions import Action, Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.addresses import IPAddress, IPNetwork
from guardian.config import Access, Config, Door, Guard, KnockStep, parse_tcp_flags
from guardian.engine import COUNTER_NAMES, Engine, GrantState
from guardian.events import (
    ACK,
    FIN,
    SYN,
    GrantFound,
    GrantRequested,
    KnockSeen,
    Proto,
    RevokeRequested,
)

A = ipaddress.ip_address("198.51.100.7")
B = ipaddress.ip_address("198.51.100.8")
C = ipaddress.ip_address("198.51.100.9")
V6 = ipaddress.ip_address("2001:db8::7")
TRUSTED_NET = ipaddress.ip_network("192.0.2.0/24")
TRUSTED = ipaddress.ip_address("192.0.2.5")
SOURCES: dict[str, IPAddress] = {"a": A, "b": B, "c": C, "v6": V6, "t": TRUSTED}
WINDOW = 30.0
TIMEOUT = 5.0


def steps(text: str) -> tuple[KnockStep, ...]:
    """'7000 8000/udp' -> KnockSteps (tcp unless told)."""
    out = []
    for word in text.split():
        port, _, proto = word.partition("/")
        out.append(KnockStep(int(port), "udp" if proto == "udp" else "tcp"))
    return tuple(out)


def band(
    sequence: Iterable[KnockStep], width: int, taken: Iterable[KnockStep] = ()
) -> tuple[KnockStep, ...]:
    """Decoys the way the config loader expands them: `width` ports each side of every step."""
    avoid = set(sequence) | set(taken)
    out: list[KnockStep] = []
    for step in sorted(set(sequence), key=lambda s: (s.port, s.proto)):
        for port in range(step.port - width, step.port + width + 1):
            decoy = KnockStep(port, step.proto)
            if 0 < port < 65536 and decoy not in avoid and decoy not in out:
                out.append(decoy)
    return tuple(out)


def door(
    name: str = "ssh",
    sequence: str = "7000 8000 9000",
    close: str = "",
    flags: str = "syn",
    decoy_width: int = 0,
    timeout: float = TIMEOUT,
) -> Door:
    seq, cls = steps(sequence), steps(close)
    return Door(
        name=name,
        sequence=seq,
        timeout=timeout,
        tcp_flags=parse_tcp_flags(flags),
        close=cls,
        decoy_band=decoy_width,
        decoys=band(seq + cls, decoy_width),
    )


def config(*doors: Door, trusted: tuple[IPNetwork, ...] = (TRUSTED_NET,)) -> Config:
    return Config(
        guard=Guard(trusted=trusted),
        access=Access(window=WINDOW),
        doors=doors or (door(),),
    )


FLAGS: dict[str, tuple[Proto, int]] = {
    "": ("tcp", SYN),
    "udp": ("udp", 0),
    "ack": ("tcp", ACK),
    "synack": ("tcp", SYN | ACK),
}


def play(engine: Engine, script: str, start: float = 0.0, gap: float = 0.1) -> list[Action]:
    """Run a little script and return every action, in order.

    Tokens: `7000` a TCP SYN knock; `7000/udp`, `7000/ack`, `7000/synack`; `b@7000` from source b
    (default a); `wait6` lets 6 s pass and fires the timer. Knocks are `gap` seconds apart."""
    now, actions = start, []
    for token in script.split():
        if token.startswith("wait"):
            now += float(token[4:])
            actions += engine.handle_timer(now)
            continue
        who, _, knock = token.rpartition("@")
        port, _, kind = knock.partition("/")
        proto, flags = FLAGS[kind]
        actions += engine.feed(KnockSeen(SOURCES[who or "a"], int(port), proto, flags), now)
        now += gap
    return actions


def opens(source: IPAddress = A, name: str = "ssh") -> list[Action]:
    return [
        OpenGrant(source, WINDOW, name),
        Notice("knock_completed", source, name),
        Notice("grant_opened", source, name),
    ]


def refreshes(source: IPAddress = A, name: str = "ssh") -> list[Action]:
    return [
        RefreshGrant(source, WINDOW),
        Notice("knock_completed", source, name),
        Notice("grant_refreshed", source, name),
    ]


def failed(reason: str, source: IPAddress = A, name: str = "ssh") -> list[Action]:
    return [Notice("knock_failed", source, name, reason)]


def closes(source: IPAddress = A, name: str = "ssh") -> list[Action]:
    return [
        RevokeGrant(source, "close sequence"),
        Notice("knock_completed", source, name, "close sequence"),
        Notice("grant_closed", source, name, "close sequence"),
    ]


def window_ends(source: IPAddress = A, name: str = "ssh") -> list[Action]:
    return [
        RevokeGrant(source, "window ended"),
        Notice("grant_closed", source, name, "window ended"),
    ]


ONE_DOOR = (door(),)
WITH_CLOSE = (door(close="9000 8000 7000"),)
SHARED_PREFIX = (door("ssh"), door("alt", "7000 8000 6000"))
UDP_DOOR = (door(sequence="7000 8000/udp 9000/udp"),)
NO_ACK = (door(flags="syn,!ack"),)
DECOYS = (door(decoy_width=2),)
DECOYS_NO_ACK = (door(flags="syn,!ack", decoy_width=2),)
SINGLE_UDP = (door("one", "5000/udp"),)

CASES = [
    # -- knockd 0.8's matching table (spec/knockd.md), with our intended results --
    pytest.param(ONE_DOOR, "7000 5555 8000 9000", opens(), id="knockd: unrelated port between"),
    pytest.param(ONE_DOOR, "7000 9000 8000", [], id="knockd: wrong order fails silently"),
    pytest.param(ONE_DOOR, "7000 7000 8000 9000", opens(), id="knockd: retransmission opens (us)"),
    pytest.param(ONE_DOOR, "7000 7000 7000 8000 9000", opens(), id="knockd: triple first"),
    pytest.param(ONE_DOOR, "8000 7000 8000 9000", opens(), id="knockd: stray then sequence"),
    pytest.param(ONE_DOOR, "7000 wait6 8000 9000", [], id="knockd: pause beyond timeout"),
    pytest.param(ONE_DOOR, "v6@7000 v6@8000 v6@9000", opens(V6), id="knockd: IPv6"),
    # -- order and retransmissions --
    pytest.param(ONE_DOOR, "7000 8000 8000 9000", opens(), id="retransmitted middle step"),
    pytest.param(ONE_DOOR, "7000 8000 9000 9000", [*opens(), *[]], id="retransmitted last step"),
    pytest.param(
        ONE_DOOR,
        "7000 8000 7000 9000",
        failed("wrong knock port"),
        id="back to first step resets, announced past step 1",
    ),
    pytest.param(
        ONE_DOOR,
        "7000 8000 7000 8000 9000",
        [*failed("wrong knock port"), *opens()],
        id="restart at first step then complete",
    ),
    pytest.param(ONE_DOOR, "9000 8000 7000", [], id="reversed"),
    pytest.param(
        ONE_DOOR, "7000 8000 wait6", failed("timeout"), id="timeout by the timer, announced"
    ),
    pytest.param(ONE_DOOR, "7000 wait6", [], id="timeout at step 1 is silent"),
    pytest.param(
        ONE_DOOR,
        "7000 b@8000 b@9000 8000 9000",
        opens(),
        id="another source cannot help or hurt",
    ),
    # -- decoys --
    pytest.param(
        DECOYS, "7000 8000 8001 9000", failed("decoy port hit"), id="decoy after step 2 resets"
    ),
    pytest.param(DECOYS, "7000 6999 8000 9000", [], id="decoy after step 1 resets silently"),
    pytest.param(DECOYS, "7000 8000 8001/ack 9000", opens(), id="decoy ACK is no scan probe"),
    pytest.param(
        DECOYS_NO_ACK, "7000 8000 8001/synack 9000", opens(), id="decoy SYN-ACK is no probe"
    ),
    pytest.param(
        DECOYS,
        "7000 8000 8001/synack 9000",
        failed("decoy port hit"),
        id="decoy SYN-ACK counts where the door would take it as a knock",
    ),
    pytest.param(DECOYS, "7001 7000 8000 9000", opens(), id="decoy before the first step"),
    pytest.param(DECOYS, "7000 8000 b@8001 9000", opens(), id="other source's decoy hit"),
    # -- TCP flags --
    pytest.param(NO_ACK, "7000 8000/ack 8000 9000", opens(), id="flags: ignored, no advance"),
    pytest.param(NO_ACK, "7000 9000/ack 8000 9000", opens(), id="flags: ignored, no reset"),
    pytest.param(NO_ACK, "7000 8000/synack 9000", [], id="flags: SYN-ACK cannot advance"),
    pytest.param(ONE_DOOR, "7000 8000/ack 9000", [], id="flags: default syn needs SYN"),
    # -- UDP steps --
    pytest.param(UDP_DOOR, "7000 8000/udp 9000/udp", opens(), id="udp steps"),
    pytest.param(UDP_DOOR, "7000 8000/udp 8000/udp 9000/udp", opens(), id="udp retransmission"),
    pytest.param(UDP_DOOR, "7000 8000 9000/udp", [], id="tcp is not the udp step"),
    pytest.param(UDP_DOOR, "7000/udp 8000/udp 9000/udp", [], id="udp is not the tcp step"),
    pytest.param(SINGLE_UDP, "5000/udp", opens(name="one"), id="one-step door"),
    pytest.param(
        SINGLE_UDP, "5000/udp 5000/udp", [*opens(name="one"), *refreshes(name="one")], id="again"
    ),
    # -- doors sharing first ports --
    pytest.param(SHARED_PREFIX, "7000 8000 9000", opens(), id="shared prefix: first door"),
    pytest.param(SHARED_PREFIX, "7000 8000 6000", opens(name="alt"), id="shared prefix: second"),
    pytest.param(
        SHARED_PREFIX,
        "7000 8000 5000",
        [],
        id="shared prefix: unknown port neither",
    ),
    pytest.param(
        SHARED_PREFIX,
        "7000 8000 9000 6000",
        opens(),
        id="shared prefix: completing one leaves the other to fail quietly",
    ),
    # -- close sequence --
    pytest.param(
        WITH_CLOSE, "7000 8000 9000 9000 8000 7000", [*opens(), *closes()], id="close revokes"
    ),
    pytest.param(
        WITH_CLOSE,
        "9000 8000 7000",
        [Notice("knock_completed", A, "ssh", "close sequence, no grant to close")],
        id="close without a grant",
    ),
    pytest.param(
        WITH_CLOSE,
        "7000 8000 9000 wait1 9000 8000 wait6",
        [*opens(), *failed("close sequence: timeout")],
        id="close attempt times out",
    ),
    # -- trusted sources --
    pytest.param(
        ONE_DOOR,
        "t@7000 t@8000 t@9000",
        [Notice("knock_completed", TRUSTED, "ssh", "trusted, no grant needed")],
        id="trusted needs no grant",
    ),
]


@pytest.mark.parametrize(("doors", "script", "expected"), CASES)
def test_knock_table(doors: tuple[Door, ...], script: str, expected: list[Action]) -> None:
    assert play(Engine(config(*doors)), script) == expected


# -- time -------------------------------------------------------------------------------------


def test_attempt_expires_by_the_timer_not_the_next_packet() -> None:
    engine = Engine(config())
    assert engine.get_timer() is None
    assert engine.feed(KnockSeen(A, 7000, "tcp", SYN), 10.0) == []
    assert engine.feed(KnockSeen(A, 8000, "tcp", SYN), 11.0) == []
    assert engine.get_timer() == 15.0
    assert engine.handle_timer(14.999) == []
    assert engine.snapshot(14.999).attempts == 1
    assert engine.handle_timer(15.0) == failed("timeout")
    assert engine.snapshot(15.0).attempts == 0
    assert engine.get_timer() is None
    assert engine.feed(KnockSeen(A, 9000, "tcp", SYN), 15.1) == []


@pytest.mark.parametrize(
    ("last_at", "expected"),
    [
        (4.99, opens()),
        (5.0, failed("timeout")),  # at the deadline: too late
        (5.01, failed("timeout")),
    ],
)
def test_completing_at_the_deadline_fails(last_at: float, expected: list[Action]) -> None:
    engine = Engine(config())
    assert engine.feed(KnockSeen(A, 7000, "tcp", SYN), 0.0) == []
    assert engine.feed(KnockSeen(A, 8000, "tcp", SYN), 1.0) == []
    # No handle_timer call in between: the engine honours the deadline by itself.
    assert engine.feed(KnockSeen(A, 9000, "tcp", SYN), last_at) == expected


def test_window_ends_at_its_deadline() -> None:
    engine = Engine(config())
    assert play(engine, "7000 8000 9000", start=100.0) == opens()
    opened_at = 100.2
    assert engine.get_timer() == pytest.approx(opened_at + WINDOW)
    (grant,) = engine.snapshot(110.0).grants
    assert (grant.source, grant.door, grant.state) == (A, "ssh", GrantState.WINDOW)
    assert grant.opened_at == pytest.approx(opened_at)
    assert grant.expires_at == pytest.approx(opened_at + WINDOW)
    assert grant.time_left == pytest.approx(opened_at + WINDOW - 110.0)
    assert engine.handle_timer(opened_at + WINDOW - 0.01) == []
    assert engine.handle_timer(opened_at + WINDOW) == window_ends()
    assert engine.snapshot(opened_at + WINDOW).grants == ()
    assert engine.get_timer() is None
    counters = engine.snapshot(200.0).counters
    assert (counters["grants_opened"], counters["grants_closed"]) == (1, 1)


def test_re_knock_refreshes_and_restarts_the_window() -> None:
    engine = Engine(config())
    assert play(engine, "7000 8000 9000", start=0.0) == opens()
    assert play(engine, "7000 8000 9000", start=20.0) == refreshes()
    new_end = 20.2 + WINDOW
    assert engine.handle_timer(0.2 + WINDOW) == []  # the first window's end no longer counts
    assert engine.get_timer() == pytest.approx(new_end)
    assert engine.handle_timer(new_end) == window_ends()


def test_get_timer_is_the_earliest_of_attempts_and_grants() -> None:
    engine = Engine(config())
    play(engine, "7000 8000 9000", start=0.0)  # grant until 30.2
    assert engine.get_timer() == pytest.approx(30.2)
    engine.feed(KnockSeen(B, 7000, "tcp", SYN), 1.0)  # attempt until 6.0
    assert engine.get_timer() == 6.0
    assert engine.handle_timer(6.0) == []
    assert engine.get_timer() == pytest.approx(30.2)


def test_clock_going_back_is_counted_not_fatal() -> None:
    engine = Engine(config())
    engine.feed(KnockSeen(A, 7000, "tcp", SYN), 10.0)
    assert engine.feed(KnockSeen(A, 8000, "tcp", SYN), 9.0) == []
    assert engine.snapshot(10.0).counters["unexpected_events"] == 1
    assert engine.get_timer() == 15.0
    assert engine.feed(KnockSeen(A, 9000, "tcp", SYN), 10.0) == opens()


# -- sources ----------------------------------------------------------------------------------


def test_v4_mapped_ipv6_is_the_same_source() -> None:
    engine = Engine(config())
    mapped = ipaddress.ip_address("::ffff:198.51.100.7")
    assert engine.feed(KnockSeen(mapped, 7000, "tcp", SYN), 0.0) == []
    assert engine.feed(KnockSeen(A, 8000, "tcp", SYN), 0.1) == []
    assert engine.feed(KnockSeen(mapped, 9000, "tcp", SYN), 0.2) == opens(A)


def test_ipv6_and_ipv4_progress_independently() -> None:
    engine = Engine(config())
    actions = play(engine, "7000 v6@7000 8000 v6@8000 v6@9000 9000")
    assert actions == [*opens(V6), *opens(A)]
    assert [g.source for g in engine.snapshot(1.0).grants] == [A, V6]


def test_trusted_knock_grants_nothing_but_close_still_revokes_an_operator_grant() -> None:
    engine = Engine(config(door(close="9000 8000 7000")))
    assert play(engine, "t@7000 t@8000 t@9000") == [
        Notice("knock_completed", TRUSTED, "ssh", "trusted, no grant needed")
    ]
    assert engine.snapshot(1.0).grants == ()
    assert engine.feed(GrantRequested(TRUSTED, 60.0), 1.0) == [
        OpenGrant(TRUSTED, 60.0, "operator"),
        Notice("grant_opened", TRUSTED, "operator", "operator"),
    ]
    assert play(engine, "t@9000 t@8000 t@7000", start=2.0) == [
        RevokeGrant(TRUSTED, "close sequence"),
        Notice("knock_completed", TRUSTED, "ssh", "close sequence"),
        Notice("grant_closed", TRUSTED, "operator", "close sequence"),
    ]


# -- decoys against port scans -----------------------------------------------------------------

SCAN_DOOR = door(sequence="7000 8000 9000", decoy_width=8)


def _scan(engine: Engine, order: list[int], duration: float = 4.0) -> list[Action]:
    """An nmap-like TCP SYN scan from B; only knock and decoy ports reach the engine (the kernel
    filter passes nothing else), all within `duration` seconds (inside the door's timeout)."""
    door_ = engine.config.doors[0]
    visible = {s.port for s in door_.sequence + door_.decoys if s.proto == "tcp"}
    actions: list[Action] = []
    for i, port in enumerate(order):
        if port in visible:
            actions += engine.feed(KnockSeen(B, port, "tcp", SYN), duration * i / len(order))
    return actions


def _opened(actions: list[Action]) -> bool:
    return any(isinstance(a, OpenGrant) for a in actions)


def test_sequential_scan_does_not_open() -> None:
    engine = Engine(config(SCAN_DOOR))
    actions = _scan(engine, list(range(1, 65536)))
    # The scan walks 6992..7008 first: stage 1 at 7000, reset by 7001; likewise later.
    assert actions == []
    assert engine.snapshot(5.0).grants == ()
    assert engine.snapshot(5.0).counters["decoy_hits"] == 48


def test_sequential_scan_opens_without_decoys() -> None:
    """The control experiment: the scan above would open a door that has no decoys (knock#71)."""
    engine = Engine(config(door(sequence="7000 8000 9000", decoy_width=0)))
    assert _scan(engine, list(range(1, 65536))) == opens(B)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8])
def test_random_order_scan_does_not_open(seed: int) -> None:
    engine = Engine(config(SCAN_DOOR))
    order = list(range(1, 65536))
    random.Random(seed).shuffle(order)
    actions = _scan(engine, order)
    assert not _opened(actions)
    # Whatever partial progress the scan made was reset, told only when it got past step 1.
    assert all(a.kind == "knock_failed" for a in actions if isinstance(a, Notice))
    assert engine.snapshot(5.0).grants == ()


def test_decoy_hit_resets_every_attempt_of_the_source() -> None:
    engine = Engine(
        config(door(close="9000 8000 7000", decoy_width=1), door("alt", "7000 8000 6000"))
    )
    # 7000 8000: ssh open and alt at stage 2; then 9000: ssh opens (the completing knock starts
    # nothing else) and alt diverges quietly; a second 9000 starts the close sequence, 8000 takes
    # it to stage 2; a decoy then resets the close attempt (told).
    actions = play(engine, "7000 8000 9000 9000 8000 7001")
    assert actions == [*opens(), *failed("close sequence: decoy port hit")]
    assert engine.snapshot(1.0).attempts == 0


def test_decoy_of_another_door_resets_too() -> None:
    engine = Engine(config(door(), door("alt", "1000 2000", decoy_width=1)))
    assert play(engine, "7000 8000 1001 9000") == failed("decoy port hit")


def test_decoy_matching_the_door_flags_counts_even_without_syn() -> None:
    """A door that accepts any flags could be walked by a FIN scan; its decoys answer to them."""
    any_flags = door(flags="", decoy_width=1)
    engine = Engine(config(any_flags))
    assert engine.feed(KnockSeen(A, 7000, "tcp", FIN), 0.0) == []
    assert engine.feed(KnockSeen(A, 8000, "tcp", FIN), 0.1) == []
    assert engine.feed(KnockSeen(A, 8001, "tcp", FIN), 0.2) == failed("decoy port hit")


def test_a_knock_step_listed_as_decoy_stays_a_knock_step() -> None:
    bad = Door(name="ssh", sequence=steps("7000 8000 9000"), decoys=steps("8000 8001"))
    assert play(Engine(config(bad)), "7000 8000 9000") == opens()


# -- doors sharing ports, counters ---------------------------------------------------------------


def test_shared_prefix_divergence_is_counted_not_told() -> None:
    engine = Engine(config(*SHARED_PREFIX))
    assert play(engine, "7000 8000 6000") == opens(name="alt")
    counters = engine.snapshot(1.0).counters
    assert counters["attempts_diverged"] == 1
    assert counters["knocks_failed"] == 0
    assert counters["knocks_completed"] == 1


def test_counters_have_every_name_and_count_the_knocks() -> None:
    engine = Engine(config(door(flags="syn,!ack", decoy_width=1)))
    play(engine, "7000 7000 8000/ack 5555 6999 7000 8000 9000")
    counters = engine.snapshot(1.0).counters
    assert set(counters) == set(COUNTER_NAMES)
    assert counters["knocks_seen"] == 8
    assert counters["knocks_duplicate"] == 1
    assert counters["knocks_ignored"] == 2  # 8000 with ACK, 5555
    assert counters["decoy_hits"] == 1
    assert counters["attempts_started"] == 2
    assert counters["knocks_failed"] == 1  # the stage-1 attempt reset by 6999 (counted, not told)
    assert counters["knocks_completed"] == 1
    assert counters["grants_opened"] == 1


# -- bounded memory -------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_touched_source() -> None:
    engine = Engine(config(), max_attempts=2)
    # a and b start; a retransmits (touched again); c arrives: b is the least recently touched.
    assert play(engine, "7000 b@7000 7000 c@7000") == []
    snap = engine.snapshot(1.0)
    assert (snap.attempts, snap.counters["attempts_evicted"]) == (2, 1)
    assert play(engine, "b@8000 b@9000 8000 9000", start=1.0) == opens(A)


def test_eviction_spares_advanced_attempts_and_tells_when_one_goes() -> None:
    engine = Engine(config(), max_attempts=2)
    # a is past step 1, then b and c arrive at step 1: b goes, a stays although it is older.
    assert play(engine, "7000 8000 b@7000 c@7000") == []
    assert play(engine, "9000", start=1.0) == opens(A)
    engine = Engine(config(), max_attempts=1)
    # With room for one source only, even an advanced attempt must give way (and that is told).
    assert play(engine, "7000 8000 b@7000") == failed("evicted: too many attempts in progress", A)


def test_flood_of_spoofed_sources_keeps_memory_bounded() -> None:
    cap = 4096
    engine = Engine(config(door(close="9000 8000 7000")), max_attempts=cap)
    # A real client gets half-way before the flood...
    assert play(engine, "7000 8000") == []
    base = int(ipaddress.ip_address("10.0.0.0"))
    flood = 100_000
    for i in range(flood):
        spoofed = ipaddress.IPv4Address(base + i)
        assert engine.feed(KnockSeen(spoofed, 7000, "tcp", SYN), 0.2 + i * 1e-5) == []
    snap = engine.snapshot(1.3)
    assert snap.attempts == cap
    assert snap.attempt_records <= cap * 2  # at most one per matcher (open, close) and source
    assert snap.timer_entries <= 2 * snap.attempt_records + 64 + 1  # heaps are compacted
    assert snap.counters["attempts_evicted"] == flood + 1 - cap
    # ...and still gets in during it: single spoofed knocks cannot evict an advanced attempt.
    assert engine.feed(KnockSeen(A, 9000, "tcp", SYN), 1.3) == opens(A)
    # Everything left expires by time, and nothing stays behind.
    assert engine.handle_timer(100.0) == window_ends(A)
    snap = engine.snapshot(100.0)
    assert (snap.attempts, snap.attempt_records, snap.grants) == (0, 0, ())
    assert snap.timer_entries <= 64 + 1
    assert engine.get_timer() is None


# -- operator requests and adoption -----------------------------------------------------------


def test_operator_grant_refresh_and_revoke() -> None:
    engine = Engine(config())
    assert engine.feed(GrantRequested(A, 60.0), 0.0) == [
        OpenGrant(A, 60.0, "operator"),
        Notice("grant_opened", A, "operator", "operator"),
    ]
    assert engine.feed(GrantRequested(A, 120.0, reason="cli"), 10.0) == [
        RefreshGrant(A, 120.0),
        Notice("grant_refreshed", A, "operator", "cli"),
    ]
    assert engine.get_timer() == 130.0
    assert engine.feed(RevokeRequested(A), 20.0) == [
        RevokeGrant(A, "operator"),
        Notice("grant_closed", A, "operator", "operator"),
    ]
    assert engine.get_timer() is None


def test_unexpected_events_are_counted_not_raised() -> None:
    engine = Engine(config())
    assert engine.feed(RevokeRequested(A), 0.0) == []
    assert engine.feed(GrantRequested(A, 0.0), 0.0) == []
    assert engine.feed("not an event", 0.0) == []  # type: ignore[arg-type]
    assert engine.snapshot(0.0).counters["unexpected_events"] == 3


def test_adopted_grant_with_timeout_is_tracked_silently() -> None:
    engine = Engine(config())
    assert engine.feed(GrantFound(A, 12.0), 100.0) == []
    (grant,) = engine.snapshot(100.0).grants
    assert (grant.source, grant.door, grant.expires_at) == (A, "adopted", 112.0)
    assert engine.get_timer() == 112.0
    # A knock during the adopted window refreshes it, it does not add a second element.
    assert play(engine, "7000 8000 9000", start=101.0) == [
        RefreshGrant(A, WINDOW),
        Notice("knock_completed", A, "ssh"),
        Notice("grant_refreshed", A, "adopted"),
    ]
    assert engine.handle_timer(101.2 + WINDOW) == window_ends(A, "adopted")


def test_adopted_permanent_grant_gets_a_timeout_back() -> None:
    engine = Engine(config())
    assert engine.feed(GrantFound(V6, None), 5.0) == [
        RefreshGrant(V6, WINDOW),
        Notice("grant_adopted", V6, "adopted", "permanent element: timeout restored"),
    ]
    assert engine.get_timer() == 5.0 + WINDOW
    assert engine.handle_timer(5.0 + WINDOW) == window_ends(V6, "adopted")


def test_adopted_grant_without_time_left_closes_at_once() -> None:
    engine = Engine(config())
    assert engine.feed(GrantFound(A, 0.0), 5.0) == window_ends(A, "adopted")
    assert engine.get_timer() is None


# -- reconfiguration ----------------------------------------------------------------------------


def test_reconfigure_keeps_grants_and_unchanged_doors_drops_changed_ones() -> None:
    engine = Engine(config(door(), door("alt", "7000 8000 6000")))
    play(engine, "b@7000 b@8000 b@9000")  # b holds a grant
    play(engine, "7000 8000", start=1.0)  # a is half-way along both doors
    assert engine.snapshot(1.5).attempt_records == 2
    new = config(door(), door("alt", "7000 8000 6000", timeout=9.0))
    assert engine.reconfigure(new, 2.0) == []
    snap = engine.snapshot(2.0)
    assert [g.source for g in snap.grants] == [B]
    assert (snap.attempts, snap.attempt_records) == (1, 1)
    assert snap.counters["attempts_dropped"] == 1
    assert play(engine, "9000", start=2.0) == opens(A)
    assert engine.handle_timer(2.0 + 40) == [*window_ends(B), *window_ends(A)]


def test_reconfigure_drops_attempts_of_removed_doors() -> None:
    engine = Engine(config(door(), door("alt", "7000 8000 6000")))
    play(engine, "7000 8000")
    assert engine.reconfigure(config(door("alt", "7000 8000 6000")), 1.0) == []
    assert engine.snapshot(1.0).attempt_records == 1
    # 9000 is no knock port any more (ignored); alt's own progress was kept.
    assert play(engine, "9000 6000", start=1.0) == opens(name="alt")
    assert engine.snapshot(2.0).counters["knocks_ignored"] == 1


def test_reconfigure_honours_due_deadlines_first() -> None:
    engine = Engine(config())
    play(engine, "7000 8000 9000")
    assert engine.reconfigure(config(door(sequence="1 2 3")), 100.0) == window_ends()


def test_the_knock_that_completes_a_door_starts_no_other_attempt() -> None:
    """An open sequence ending on the port its close sequence starts with (7000 8000 9000 /
    9000 8000 7000, knockd's classic pair) must not leave a close attempt behind that later
    times out as a failed knock."""
    engine = Engine(config(door(close="9000 8000 7000")))
    assert play(engine, "7000 8000 9000") == opens()
    assert engine.snapshot(0.3).attempts == 0
    # Past the door's timeout only the window's end is left: no knock_failed notice.
    actions = engine.handle_timer(60.0)
    assert not [a for a in actions if isinstance(a, Notice) and a.kind == "knock_failed"]
    counters = engine.snapshot(60.0).counters
    assert counters["knocks_failed"] == 0
    assert counters["attempts_not_started"] == 1
