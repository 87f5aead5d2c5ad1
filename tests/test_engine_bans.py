# The ban rules of the pure engine (engine/bans.py through the Engine facade), with explicit time:
# every test feeds events at chosen instants and asserts the whole list of actions returned (and
# the snapshot where state matters). A Hypothesis state machine at the end checks the invariants
# against a small model: never ban trusted, loopback or a live session; a ban at exactly the
# maxretry-th distinct attempt within findtime; escalation by factor up to maxtime; an attempt
# reported by several origins counts once.
from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from guardian.actions import Action, Ban, Notice, OpenGrant, RecordOffence, RevokeGrant, Unban
from guardian.addresses import IPAddress, IPNetwork
from guardian.config import OFFENCE_MEMORY, Config, Door, Guard, KnockStep
from guardian.config import Ban as BanPolicy
from guardian.engine import COUNTER_NAMES, BanView, Engine
from guardian.events import (
    SYN,
    AuthFailed,
    BanFound,
    BanRequested,
    ConnectionOpened,
    GrantFound,
    GrantRequested,
    KnockSeen,
    OffenceRecord,
    OffencesLoaded,
    SessionClosed,
    SessionOpened,
    SignalsChanged,
    UnbanRequested,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network

T0 = 1_700_000_000.0  # the tests use one clock for `now` and the wall clock (wall = now)
ATTACKER = ip("203.0.113.5")
OTHER = ip("203.0.113.6")
TRUSTED_NETS = (net("198.51.100.0/24"), net("2001:db8:ffff::/48"), net("2001:db8:5:5::1/128"))
REASON5 = "5 failures within 10m (last: failed_password)"


def engine(seed: int = 1, **ban: object) -> Engine:
    policy = replace(BanPolicy(), **ban)  # type: ignore[arg-type]
    door = Door(name="ssh", sequence=(KnockStep(7000), KnockStep(8000)))
    config = Config(guard=Guard(trusted=TRUSTED_NETS), doors=(door,), ban=policy)
    return Engine(config, rng=random.Random(seed))


def failed(
    source: IPAddress = ATTACKER,
    origin: str = "journal",
    *,
    pid: int | None = 100,
    at: float | None = None,
    rule: str = "failed_password",
    attempts: int = 1,
    user: str | None = "root",
) -> AuthFailed:
    return AuthFailed(source, origin, rule, user, pid, at, attempts)


def fail_times(e: Engine, times: list[float], source: IPAddress = ATTACKER) -> list[Action]:
    """One attempt per time, each from its own sshd connection (pid), reported by the journal."""
    actions: list[Action] = []
    for n, at in enumerate(times):
        actions += e.feed(failed(source, pid=1000 + n, at=at), at)
    return actions


def first_ban(network: IPNetwork, timeout: float, offence: int, at: float) -> list[Action]:
    return [
        Ban(network, timeout, REASON5, offence),
        RecordOffence(network, offence, at),
        Notice("ban", ATTACKER, detail=f"{network} for {_fmt(timeout)}, offence {offence}: "
               f"{REASON5}"),
    ]  # fmt: skip


def _fmt(seconds: float) -> str:
    return {600: "10m", 1200: "20m", 2400: "40m", 3600: "1h", 4800: "80m"}.get(
        int(seconds), f"{seconds:g}s"
    )


# -- counting ------------------------------------------------------------------------------------


def test_banned_at_exactly_the_maxretry_th_attempt() -> None:
    e = engine()
    assert fail_times(e, [T0, T0 + 1, T0 + 2, T0 + 3]) == []
    assert e.banned(ATTACKER) is None
    actions = e.feed(failed(pid=7, at=T0 + 4), T0 + 4)
    assert actions == first_ban(net("203.0.113.5/32"), 600.0, 1, T0 + 4)
    assert e.banned(ATTACKER) == net("203.0.113.5/32")
    snap = e.snapshot(T0 + 4)
    assert snap.bans == (BanView(net("203.0.113.5/32"), REASON5, T0 + 4, T0 + 604, 1),)
    assert snap.counters["failures_counted"] == 5 and snap.counters["bans"] == 1
    assert snap.failure_sources == 0  # the window went with the ban
    assert e.get_timer() == T0 + 604


def test_attempts_older_than_findtime_fall_out_of_the_window() -> None:
    e = engine()
    # 4 attempts, then one 10 minutes after the first: the first no longer counts.
    assert fail_times(e, [T0, T0 + 100, T0 + 200, T0 + 300, T0 + 600.5]) == []
    assert e.feed(failed(pid=9, at=T0 + 601), T0 + 601)[0] == Ban(
        net("203.0.113.5/32"), 600.0, REASON5, 1
    )


def test_replayed_lines_older_than_findtime_never_count() -> None:
    e = engine()
    now = T0 + 3600
    for n in range(10):  # yesterday's attack, read from a log at start-up
        assert e.feed(failed(pid=n, at=T0 + n), now) == []
    assert e.snapshot(now).counters["failures_stale"] == 10
    assert e.snapshot(now).counters["failures_counted"] == 0


def test_future_log_times_are_clamped_to_now() -> None:
    e = engine(maxretry=2, findtime=60.0)
    assert e.feed(failed(pid=1, at=T0 + 5000), T0) == []  # a clock ahead: counted as now
    assert isinstance(e.feed(failed(pid=2, at=T0 + 59), T0 + 59)[0], Ban)  # within 60 s of it


def test_wall_clock_is_an_argument_separate_from_now() -> None:
    e = engine(maxretry=2, findtime=60.0)
    assert e.feed(failed(pid=1, at=T0 - 100), 5.0, wall=T0) == []  # stale by the wall clock
    assert e.feed(failed(pid=2, at=T0 - 1), 6.0, wall=T0 + 1) == []
    # wall not given: it moved as `now` did (T0 + 1 + 2)
    actions = e.feed(failed(pid=3, at=None), 8.0)
    assert isinstance(actions[0], Ban) and actions[0].timeout == 600.0
    assert actions[1] == RecordOffence(net("203.0.113.5/32"), 1, T0 + 3)
    assert e.snapshot(8.0).bans[0].until == 608.0  # deadlines stay on the monotonic clock


def test_attempts_of_one_event_count_each() -> None:
    e = engine()
    assert e.feed(failed(pid=1, at=T0, attempts=4), T0) == []
    assert isinstance(e.feed(failed(pid=2, at=T0 + 1), T0 + 1)[0], Ban)


# -- one attempt counts once ---------------------------------------------------------------------


def test_an_attempt_reported_by_three_origins_counts_once() -> None:
    e = engine()
    actions: list[Action] = []
    for n in range(5):
        at = T0 + 3 * n + 0.4
        for origin, when in (("btmp", math.floor(at)), ("journal", at), ("authlog", at)):
            actions += e.feed(failed(origin=origin, pid=4242, at=when), at + 0.5)
        if n < 4:
            assert actions == [], n
    assert actions == first_ban(net("203.0.113.5/32"), 600.0, 1, T0 + 12.9)
    counters = e.snapshot(T0 + 13).counters
    assert counters["failures_seen"] == 15
    assert counters["failures_counted"] == 5
    assert counters["failures_joined"] == 10
    assert e.snapshot(T0 + 13).failures_by_origin == {"btmp": 5, "journal": 5, "authlog": 5}


def test_one_origin_read_late_joins_in_log_order() -> None:
    """btmp delivers a connection's five attempts before the journal delivers any (start-up
    catch-up, or a slow journal): the journal's reports pair with them one by one."""
    e = engine(maxretry=6)
    times = [T0 + 2.2 * n for n in range(5)]
    for at in times:
        assert e.feed(failed(origin="btmp", pid=77, at=math.floor(at)), at) == []
    for at in times:
        assert e.feed(failed(origin="journal", pid=77, at=at), T0 + 12) == []
    assert e.snapshot(T0 + 12).counters["failures_counted"] == 5
    assert e.snapshot(T0 + 12).counters["failures_joined"] == 5
    # the journal sees one more (a host-less "Too many authentication failures"): the 6th
    assert isinstance(e.feed(failed(origin="journal", pid=77, at=T0 + 12), T0 + 12)[0], Ban)


def test_the_same_origin_twice_is_two_attempts() -> None:
    e = engine(maxretry=2)
    assert e.feed(failed(origin="btmp", pid=5, at=T0), T0) == []
    assert isinstance(e.feed(failed(origin="btmp", pid=5, at=T0), T0)[0], Ban)


def test_different_connections_never_join() -> None:
    e = engine(maxretry=2)
    assert e.feed(failed(origin="btmp", pid=5, at=T0), T0) == []
    assert isinstance(e.feed(failed(origin="journal", pid=6, at=T0), T0)[0], Ban)


def test_reports_far_apart_in_log_time_do_not_join() -> None:
    e = engine(maxretry=2)
    assert e.feed(failed(origin="btmp", pid=5, at=T0), T0) == []
    assert isinstance(e.feed(failed(origin="journal", pid=5, at=T0 + 30), T0 + 30)[0], Ban)


def test_without_a_pid_reports_join_by_user() -> None:
    e = engine(maxretry=2)
    assert e.feed(failed(origin="btmp", pid=None, user="alice", at=T0), T0) == []
    assert e.feed(failed(origin="authlog", pid=None, user="alice", at=T0), T0) == []
    assert isinstance(e.feed(failed(origin="btmp", pid=None, user="bob", at=T0), T0)[0], Ban)


# -- who is never banned -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        ip("198.51.100.9"),
        ip("127.0.0.1"),
        ip("::1"),
        ip("2001:db8:ffff::9"),
        ip("::ffff:127.0.0.2"),
    ],
)
def test_trusted_and_loopback_are_never_counted(source: IPAddress) -> None:
    e = engine(maxretry=1)
    assert fail_times(e, [T0 + n for n in range(20)], source) == []
    assert e.snapshot(T0 + 20).counters["failures_trusted"] == 20
    assert e.snapshot(T0 + 20).bans == ()


def test_a_live_accepted_session_spares_its_source() -> None:
    e = engine(maxretry=2)
    e.feed(SessionOpened(ATTACKER, 50000, "alice", 10), T0)  # a notice: session_opened
    assert fail_times(e, [T0 + 1, T0 + 2, T0 + 3]) == []  # alice mistypes in another window
    assert e.snapshot(T0 + 3).counters["failures_in_session"] == 3
    e.feed(SessionClosed(ATTACKER, 50000, "alice", 10), T0 + 4)
    assert fail_times(e, [T0 + 5]) == []
    assert isinstance(fail_times(e, [T0 + 6])[0], Ban)


def test_connections_merely_assumed_to_be_sessions_spare_nobody() -> None:
    """Without the journal every connection counts as a session for grants; it must not shield
    the attacker's own connections from bans fed by btmp."""
    e = engine(maxretry=2)
    e.feed(SignalsChanged(frozenset({"conntrack"}), auth=False), T0)
    e.feed(ConnectionOpened(ATTACKER, 40000, 22), T0)
    assert e.feed(failed(origin="btmp", pid=1, at=T0), T0) == []
    assert isinstance(e.feed(failed(origin="btmp", pid=2, at=T0), T0)[0], Ban)


def test_ipv6_sources_count_and_are_banned_by_prefix() -> None:
    e = engine(maxretry=3)
    sources = [ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"), ip("2001:db8:1:2::77")]
    actions: list[Action] = []
    for n, source in enumerate(sources):
        actions += e.feed(failed(source, pid=n, at=T0 + n), T0 + n)
    assert [type(a) for a in actions] == [Ban, RecordOffence, Notice]
    assert isinstance(actions[0], Ban) and actions[0].network == net("2001:db8:1:2::/64")
    assert e.banned(ip("2001:db8:1:2:abcd::1")) == net("2001:db8:1:2::/64")
    assert e.banned(ip("2001:db8:1:3::1")) is None


def test_ipv6_ban_narrows_to_the_address_beside_a_live_session() -> None:
    e = engine(maxretry=2)
    e.feed(SessionOpened(ip("2001:db8:1:2::10"), 50000, "admin", 10), T0)
    actions = fail_times(e, [T0, T0 + 1], ip("2001:db8:1:2::66"))
    assert isinstance(actions[0], Ban) and actions[0].network == net("2001:db8:1:2::66/128")
    assert e.snapshot(T0 + 1).counters["bans_narrowed"] == 1
    assert e.banned(ip("2001:db8:1:2::10")) is None


def test_ipv6_ban_narrows_to_the_address_beside_a_trusted_address() -> None:
    e = engine(maxretry=2)
    actions = fail_times(e, [T0, T0 + 1], ip("2001:db8:5:5::2"))
    assert isinstance(actions[0], Ban) and actions[0].network == net("2001:db8:5:5::2/128")


def test_link_local_sources_are_counted_and_banned_alone() -> None:
    e = engine(maxretry=2)
    assert fail_times(e, [T0], ip("fe80::1")) == []
    assert fail_times(e, [T0 + 1], ip("fe80::2")) == []  # another host of the link
    actions = fail_times(e, [T0 + 2], ip("fe80::1"))
    assert isinstance(actions[0], Ban) and actions[0].network == net("fe80::1/128")


def test_knocks_never_count_as_failures() -> None:
    e = engine(maxretry=1)
    for n in range(50):
        assert e.feed(KnockSeen(ATTACKER, 6000 + n, "tcp", SYN), T0 + n) == []
    assert e.snapshot(T0 + 50).bans == ()


def test_disabled_bans_count_nothing_towards_a_ban() -> None:
    e = engine(enabled=False, maxretry=1)
    assert fail_times(e, [T0, T0 + 1]) == []
    assert e.snapshot(T0 + 1).counters["failures_ignored"] == 2
    # the operator still can
    assert isinstance(e.feed(BanRequested(net("203.0.113.0/24"), 60.0), T0 + 2)[0], Ban)


# -- while banned --------------------------------------------------------------------------------


def test_failures_while_banned_are_counted_and_never_escalate() -> None:
    e = engine()
    fail_times(e, [T0 + n for n in range(5)])
    assert fail_times(e, [T0 + 10 + n for n in range(20)]) == []
    counters = e.snapshot(T0 + 30).counters
    assert counters["failures_while_banned"] == 20 and counters["bans"] == 1


def test_a_banned_source_s_knocks_are_ignored() -> None:
    e = engine(maxretry=1)
    fail_times(e, [T0])
    for port in (7000, 8000):
        assert e.feed(KnockSeen(ATTACKER, port, "tcp", SYN), T0 + 1) == []
    counters = e.snapshot(T0 + 1).counters
    assert counters["knocks_banned"] == 2 and counters["knocks_completed"] == 0
    assert counters["knocks_seen"] == 2
    other = [e.feed(KnockSeen(OTHER, port, "tcp", SYN), T0 + 1) for port in (7000, 8000)]
    assert e.snapshot(T0 + 1).counters["knocks_completed"] == 1, other


def knock_open(e: Engine, source: IPAddress, at: float) -> list[Action]:
    return [a for port in (7000, 8000) for a in e.feed(KnockSeen(source, port, "tcp", SYN), at)]


def test_a_ban_closes_the_grant_its_source_held() -> None:
    """The ban rule is matched before the grant's, so the grant is useless to a banned source;
    it is closed with the ban instead of showing an open door until its window ends."""
    e = engine()
    assert isinstance(knock_open(e, ATTACKER, T0)[0], OpenGrant)
    assert isinstance(knock_open(e, OTHER, T0)[0], OpenGrant)
    actions = fail_times(e, [T0 + 1 + n for n in range(5)])
    assert actions == [
        *first_ban(net("203.0.113.5/32"), 600.0, 1, T0 + 5),
        RevokeGrant(ATTACKER, "banned"),
        Notice("grant_closed", ATTACKER, "ssh", "banned"),
    ]
    assert [g.source for g in e.snapshot(T0 + 5).grants] == [OTHER]


def test_an_operator_ban_closes_every_grant_inside_it_and_no_other() -> None:
    e = engine()
    inside = [ip("192.0.2.7"), ip("192.0.2.200")]
    outside = ip("192.0.3.1")
    for source in (*inside, outside):
        knock_open(e, source, T0)
    actions = e.feed(BanRequested(net("192.0.2.0/24"), 60.0), T0 + 1)
    revoked = [a.source for a in actions if isinstance(a, RevokeGrant)]
    assert sorted(revoked) == inside
    assert [g.source for g in e.snapshot(T0 + 1).grants] == [outside]


def test_an_operator_grant_for_a_banned_source_is_refused_and_says_why() -> None:
    e = engine()
    fail_times(e, [T0 + n for n in range(5)])
    assert e.feed(GrantRequested(ATTACKER, 60.0), T0 + 10) == [
        Notice("grant_refused", ATTACKER, "operator", "203.0.113.5/32 is banned; unban it first")
    ]
    assert e.snapshot(T0 + 10).grants == ()
    assert e.snapshot(T0 + 10).counters["grants_refused"] == 1
    assert isinstance(e.feed(GrantRequested(OTHER, 60.0), T0 + 10)[0], OpenGrant)


def test_a_ban_that_covers_no_grant_closes_none() -> None:
    e = engine()
    knock_open(e, OTHER, T0)
    actions = fail_times(e, [T0 + 1 + n for n in range(5)])
    assert not [a for a in actions if isinstance(a, RevokeGrant)]


def test_start_up_closes_an_adopted_grant_of_a_banned_source() -> None:
    """The kernel may hold both (a grant opened just before the ban, then a restart): whichever
    is adopted first, the grant does not survive the adoption."""
    grant_first = engine()
    grant_first.feed(GrantFound(ATTACKER, 20.0), T0)
    assert grant_first.adopt_bans([BanFound(net("203.0.113.5/32"), 300.0)], T0)[-2:] == [
        RevokeGrant(ATTACKER, "banned"),
        Notice("grant_closed", ATTACKER, "adopted", "banned"),
    ]
    ban_first = engine()
    ban_first.adopt_bans([BanFound(net("203.0.113.5/32"), 300.0)], T0)
    actions = ban_first.feed(GrantFound(ATTACKER, 20.0), T0)
    assert actions[-2:] == [
        RevokeGrant(ATTACKER, "banned"),
        Notice("grant_closed", ATTACKER, "adopted", "banned"),
    ]
    for e in (grant_first, ban_first):
        assert e.snapshot(T0).grants == ()
        assert e.banned(ATTACKER) == net("203.0.113.5/32")


def test_expiry_forgets_the_ban_with_a_notice_and_no_action() -> None:
    e = engine()
    fail_times(e, [T0 + n for n in range(5)])
    assert e.handle_timer(T0 + 603.9) == []
    assert e.handle_timer(T0 + 604) == [
        Notice("unban", ATTACKER, detail="203.0.113.5/32 expired after 10m, offence 1")
    ]
    assert e.banned(ATTACKER) is None
    assert e.get_timer() is None
    assert e.snapshot(T0 + 604).counters["bans_expired"] == 1


# -- escalation ----------------------------------------------------------------------------------


def test_escalation_multiplies_by_factor_up_to_maxtime() -> None:
    e = engine(maxtime=3600.0)
    now = T0
    timeouts = []
    for _ in range(6):
        actions = fail_times(e, [now + n for n in range(5)])
        ban = actions[0]
        assert isinstance(ban, Ban)
        timeouts.append((ban.offence, ban.timeout))
        assert actions[1] == RecordOffence(ban.network, ban.offence, now + 4)
        now += 4 + (ban.timeout or 0)
        e.handle_timer(now)
    assert timeouts == [(1, 600), (2, 1200), (3, 2400), (4, 3600), (5, 3600), (6, 3600)]


def test_huge_offence_counts_do_not_overflow() -> None:
    e = engine()
    record = OffenceRecord(net("203.0.113.5/32"), 10_000, T0)
    assert e.feed(OffencesLoaded((record,)), T0) == []
    ban = fail_times(e, [T0 + n for n in range(5)])[0]
    assert ban == Ban(net("203.0.113.5/32"), 604800.0, REASON5, 10_001)


def test_jitter_is_drawn_from_the_injected_random_source() -> None:
    def timeout(seed: int) -> float:
        ban = fail_times(engine(seed, jitter=60.0), [T0 + n for n in range(5)])[0]
        assert isinstance(ban, Ban) and ban.timeout is not None
        return ban.timeout

    assert timeout(3) == timeout(3)
    drawn = {timeout(seed) for seed in range(20)}
    assert len(drawn) > 10
    assert all(600.0 <= t <= 660.0 for t in drawn)


def test_offence_history_carries_escalation_across_a_restart() -> None:
    first = engine()
    actions = fail_times(first, [T0 + n for n in range(5)])
    recorded = [a for a in actions if isinstance(a, RecordOffence)]
    assert recorded == [RecordOffence(net("203.0.113.5/32"), 1, T0 + 4)]
    # The daemon restarts an hour later: the kernel still has nothing (expired); the store has
    # the history.
    again = engine()
    later = T0 + 3600
    history = tuple(OffenceRecord(r.network, r.offences, r.last_ban_wall) for r in recorded)
    assert again.feed(OffencesLoaded(history), later) == []
    ban = fail_times(again, [later + n for n in range(5)])[0]
    assert ban == Ban(net("203.0.113.5/32"), 1200.0, REASON5, 2)


def test_old_histories_are_forgotten_at_load() -> None:
    e = engine()
    old = OffenceRecord(net("203.0.113.5/32"), 4, T0 - OFFENCE_MEMORY - 1)
    fresh = OffenceRecord(net("::ffff:203.0.113.6/128"), 2, T0 - 60)  # v4-mapped: normalised
    assert e.feed(OffencesLoaded((old, fresh)), T0) == [
        RecordOffence(net("203.0.113.5/32"), 0, T0 - OFFENCE_MEMORY - 1)
    ]
    assert fail_times(e, [T0 + n for n in range(5)])[0] == Ban(
        net("203.0.113.5/32"), 600.0, REASON5, 1
    )
    ban = fail_times(e, [T0 + 10 + n for n in range(5)], OTHER)[0]
    assert isinstance(ban, Ban) and (ban.network, ban.offence) == (net("203.0.113.6/32"), 3)


# -- the operator --------------------------------------------------------------------------------


def test_operator_ban_and_unban() -> None:
    e = engine()
    network = net("192.0.2.0/24")
    assert e.feed(BanRequested(network, 3600.0, "spam"), T0) == [
        Ban(network, 3600.0, "spam", 1),
        RecordOffence(network, 1, T0),
        Notice("ban", None, detail="192.0.2.0/24 for 1h, offence 1: spam"),
    ]
    assert e.banned(ip("192.0.2.77")) == network
    assert e.feed(UnbanRequested(net("192.0.2.77/32")), T0 + 1) == [
        Unban(network, "operator"),
        Notice("unban", ip("192.0.2.77"), detail="192.0.2.0/24 lifted by the operator"),
    ]
    assert e.banned(ip("192.0.2.77")) is None
    assert e.get_timer() is None


def test_operator_ban_without_duration_escalates() -> None:
    e = engine()
    fail_times(e, [T0 + n for n in range(5)])
    e.handle_timer(T0 + 700)
    actions = e.feed(BanRequested(net("203.0.113.5/32")), T0 + 700)
    assert actions[:2] == [
        Ban(net("203.0.113.5/32"), 1200.0, "operator", 2),
        RecordOffence(net("203.0.113.5/32"), 2, T0 + 700),
    ]


def test_unban_with_forget_clears_history_and_counting() -> None:
    e = engine()
    fail_times(e, [T0 + n for n in range(5)])
    fail_times(e, [T0 + 10], OTHER)
    assert e.feed(UnbanRequested(net("203.0.113.0/24"), forget=True), T0 + 11) == [
        Unban(net("203.0.113.5/32"), "operator"),
        RecordOffence(net("203.0.113.5/32"), 0, 0.0),
        Notice(
            "unban",
            None,
            detail="203.0.113.5/32 lifted by the operator, offence history forgotten",
        ),
    ]
    assert e.snapshot(T0 + 11).failure_sources == 0  # OTHER's window went too
    assert fail_times(e, [T0 + 20 + n for n in range(5)])[0] == Ban(
        net("203.0.113.5/32"), 600.0, REASON5, 1
    )


def test_unban_of_what_is_not_banned_says_so() -> None:
    e = engine()
    assert e.feed(UnbanRequested(net("192.0.2.1/32")), T0) == [
        Notice("unban", ip("192.0.2.1"), detail="192.0.2.1/32 was not banned")
    ]


@pytest.mark.parametrize(
    ("network", "why"),
    [
        ("198.51.100.128/25", "it covers 198.51.100.0/24: never banned"),
        ("198.0.0.0/8", "it covers 198.51.100.0/24: never banned"),
        ("127.0.0.0/16", "it covers 127.0.0.0/8: never banned"),
        ("::/0", "it covers ::1/128: never banned"),
    ],
)
def test_operator_bans_of_trusted_or_loopback_are_refused(network: str, why: str) -> None:
    e = engine()
    assert e.feed(BanRequested(net(network), 60.0), T0) == [
        Notice("ban_refused", None, detail=f"{network}: {why}")
    ]
    assert e.snapshot(T0).counters["bans_refused"] == 1


def test_overlapping_interval_bans_are_refused_but_hash_bans_may_nest() -> None:
    e = engine()
    e.feed(BanRequested(net("192.0.2.0/25"), 60.0), T0)
    assert e.feed(BanRequested(net("192.0.2.0/24"), 60.0), T0) == [
        Notice(
            "ban_refused",
            None,
            detail="192.0.2.0/24: it overlaps the ban of 192.0.2.0/25: unban that first",
        )
    ]
    # a single address lives in the hash set: no kernel conflict with the /25
    assert isinstance(e.feed(BanRequested(net("192.0.2.7/32"), 60.0), T0)[0], Ban)
    # the same network again is a re-ban (new timeout, next offence)
    assert e.feed(BanRequested(net("192.0.2.0/25"), 90.0), T0 + 1)[0] == Ban(
        net("192.0.2.0/25"), 90.0, "operator", 2
    )
    assert e.get_timer() == T0 + 60


def test_operator_may_ban_a_live_session() -> None:
    e = engine()
    e.feed(SessionOpened(ATTACKER, 50000, "mallory", 10), T0)
    assert isinstance(e.feed(BanRequested(net("203.0.113.5/32"), 60.0), T0)[0], Ban)
    assert e.snapshot(T0).counters["bans_of_sessions"] == 1


@pytest.mark.parametrize("duration", [0.0, -5.0, math.inf, math.nan])
def test_operator_ban_with_a_bad_duration_is_refused(duration: float) -> None:
    e = engine()
    (notice,) = e.feed(BanRequested(net("192.0.2.1/32"), duration), T0)
    assert isinstance(notice, Notice) and notice.kind == "ban_refused"


# -- start-up ------------------------------------------------------------------------------------


def test_bans_found_in_the_kernel_are_adopted_without_kernel_actions() -> None:
    e = engine()
    e.feed(OffencesLoaded((OffenceRecord(net("203.0.113.5/32"), 3, T0 - 100),)), T0)
    assert e.feed(BanFound(net("203.0.113.5/32"), 500.0), T0) == []
    # no history: one is made (test_an_adopted_ban_without_history_counts_as_an_offence)
    assert e.feed(BanFound(net("2001:db8:9::/64"), None), T0) == [
        RecordOffence(net("2001:db8:9::/64"), 1, T0)
    ]
    assert e.snapshot(T0).bans == (
        BanView(net("203.0.113.5/32"), "adopted", T0 - 100, T0 + 500, 3),
        BanView(net("2001:db8:9::/64"), "adopted", T0, None, 1),
    )
    assert e.feed(KnockSeen(ATTACKER, 7000, "tcp", SYN), T0 + 1) == []
    assert e.snapshot(T0 + 1).counters["knocks_banned"] == 1
    assert e.get_timer() == T0 + 500
    assert e.handle_timer(T0 + 500) == [
        Notice("unban", ATTACKER, detail="203.0.113.5/32 expired after 10m, offence 3")
    ]
    assert e.get_timer() is None  # the permanent one has no deadline
    # the next ban continues the escalation
    assert fail_times(e, [T0 + 600 + n for n in range(5)])[0] == Ban(
        net("203.0.113.5/32"), 4800.0, REASON5, 4
    )


def test_an_adopted_ban_without_history_counts_as_an_offence() -> None:
    """A daemon killed between the kernel's commit of a ban and the store's commit of its
    offence (the chaos test found one) leaves a ban with no history. The daemon that adopts it
    records offence 1, so that source's next ban, after this one expired and after restarts that
    never saw it, is offence 2; a ban adopted with its history records nothing."""
    e = engine()
    assert e.adopt_bans([BanFound(net("203.0.113.5/32"), 20.0)], T0) == [
        RecordOffence(net("203.0.113.5/32"), 1, T0)
    ]
    assert e.snapshot(T0).counters["offences_restored"] == 1
    later = engine()  # a restart after the ban expired: the store gave back what was recorded
    later.feed(OffencesLoaded((OffenceRecord(net("203.0.113.5/32"), 1, T0),)), T0 + 60)
    assert fail_times(later, [T0 + 60 + n for n in range(5)])[0] == Ban(
        net("203.0.113.5/32"), 1200.0, REASON5, 2
    )
    recorded = engine()
    recorded.feed(OffencesLoaded((OffenceRecord(net("203.0.113.5/32"), 2, T0 - 5),)), T0)
    assert recorded.adopt_bans([BanFound(net("203.0.113.5/32"), 20.0)], T0) == []
    assert recorded.snapshot(T0).counters["offences_restored"] == 0


def test_failures_older_than_the_last_ban_do_not_count_again() -> None:
    """After a restart a watcher may read again failures the previous daemon had already banned
    for (it was killed before it saved its positions). Once that ban has run out they must not
    count toward the next one: only failures after the last ban do."""
    e = engine()
    e.feed(OffencesLoaded((OffenceRecord(net("203.0.113.5/32"), 1, T0 + 10),)), T0 + 100)
    # four failures from before the ban at T0 + 10, read again at T0 + 100: none counts
    assert [e.feed(failed(ATTACKER, pid=900 + n, at=T0 + n), T0 + 100) for n in range(4)] == [
        [],
        [],
        [],
        [],
    ]
    counters = e.snapshot(T0 + 100).counters
    assert (counters["failures_before_ban"], counters["failures_counted"]) == (4, 0)
    # it takes five new ones to ban, as offence 2
    assert fail_times(e, [T0 + 100 + n for n in range(4)]) == []
    assert e.feed(failed(ATTACKER, pid=2000, at=T0 + 105), T0 + 105)[0] == Ban(
        net("203.0.113.5/32"), 1200.0, REASON5, 2
    )


def test_failures_older_than_a_narrowed_ipv6_ban_do_not_count_again() -> None:
    """The same for an IPv6 address whose ban was narrowed to itself (a trusted address shares
    its /64): its history is the address's, not the /64's, and still ends the replay."""
    src = ip("2001:db8:5:5::2")  # beside the trusted 2001:db8:5:5::1
    e = engine(maxretry=2)
    e.feed(OffencesLoaded((OffenceRecord(net("2001:db8:5:5::2/128"), 1, T0 + 10),)), T0 + 100)
    for n in range(3):
        assert e.feed(failed(src, pid=900 + n, at=T0 + n), T0 + 100) == []
    counters = e.snapshot(T0 + 100).counters
    assert (counters["failures_before_ban"], counters["failures_counted"]) == (3, 0)
    # another address of the /64 is not that ban's: its old failures still count
    assert e.feed(failed(ip("2001:db8:5:5::3"), pid=950, at=T0 + 5), T0 + 100) == []
    assert e.snapshot(T0 + 100).counters["failures_counted"] == 1
    # new failures from the address count as usual, and its next ban is offence 2
    actions = fail_times(e, [T0 + 100, T0 + 101], src)
    assert isinstance(actions[0], Ban) and actions[0].network == net("2001:db8:5:5::2/128")
    assert actions[0].offence == 2


def test_an_adopted_ban_takes_its_offence_from_its_element_when_the_history_lacks_it() -> None:
    """The element's comment carries its offence (nft_rules.py): a ban whose store commit was
    lost catches the history up to that number, so the next ban escalates from it; a history
    that knows as much or more is kept as it is."""
    src = net("203.0.113.5/32")
    lost = engine()  # no history at all: offence 3 from the comment, not 1
    assert lost.adopt_bans([BanFound(src, 20.0, 3)], T0) == [RecordOffence(src, 3, T0)]
    assert lost.snapshot(T0).bans[0].offence == 3
    behind = engine()  # the history saw offence 2; the kernel holds offence 3
    behind.feed(OffencesLoaded((OffenceRecord(src, 2, T0 - 900),)), T0)
    assert behind.adopt_bans([BanFound(src, 20.0, 3)], T0) == [RecordOffence(src, 3, T0)]
    assert behind.snapshot(T0).counters["offences_restored"] == 1
    later = engine()  # after a restart: the store has what was caught up
    later.feed(OffencesLoaded((OffenceRecord(src, 3, T0),)), T0 + 60)
    assert fail_times(later, [T0 + 60 + n for n in range(5)])[0] == Ban(src, 4800.0, REASON5, 4)
    for known in (3, 5):  # the history knows as much, or more: nothing to record
        ahead = engine()
        ahead.feed(OffencesLoaded((OffenceRecord(src, known, T0 - 5),)), T0)
        assert ahead.adopt_bans([BanFound(src, 20.0, 3)], T0) == []
        assert ahead.snapshot(T0).bans[0].offence == known


def test_adopted_bans_covering_trusted_addresses_are_lifted() -> None:
    e = engine()
    assert e.feed(BanFound(net("198.51.0.0/16"), 100.0), T0) == [
        Unban(net("198.51.0.0/16"), "trusted"),
        Notice("unban", None, detail="198.51.0.0/16 found in the kernel covers "
               "198.51.100.0/24: lifted"),
    ]  # fmt: skip
    assert e.snapshot(T0).bans == ()


def test_adopt_bans_is_feeding_each_ban_found() -> None:
    found = [
        BanFound(net("203.0.113.5/32"), 10.0),
        BanFound(net("2001:db8:1::/64"), 20.0),
        BanFound(net("198.51.100.5/32"), 5.0),  # trusted: lifted
        BanFound(net("203.0.113.5/32"), 30.0),  # listed twice: the later wins
    ]
    one, batch = engine(), engine()
    fed: list[Action] = []
    for event in found:
        fed += one.feed(event, T0)
    assert batch.adopt_bans(found, T0) == fed
    assert one.snapshot(T0) == batch.snapshot(T0)
    assert batch.get_timer() == T0 + 20.0
    assert batch.handle_timer(T0 + 20.0) != []
    assert batch.get_timer() == T0 + 30.0


def test_reload_lifts_bans_that_cover_newly_trusted_networks() -> None:
    e = engine(maxretry=1)
    fail_times(e, [T0])
    config = e.config
    trusted = (*config.guard.trusted, net("203.0.113.0/24"))
    new = replace(config, guard=replace(config.guard, trusted=trusted))
    assert e.reconfigure(new, T0 + 1) == [
        Unban(net("203.0.113.5/32"), "trusted"),
        Notice("unban", ATTACKER, detail="203.0.113.5/32 is trusted now"),
    ]
    assert e.banned(ATTACKER) is None


# -- bounds and the snapshot ---------------------------------------------------------------------


def test_failure_windows_are_bounded() -> None:
    config = Config(ban=BanPolicy(maxretry=3))
    e = Engine(config, rng=random.Random(0), max_failure_sources=10, max_failure_joins=5)
    for n in range(100):
        e.feed(failed(ip(f"192.0.2.{n}"), pid=n, at=T0), T0)
    snap = e.snapshot(T0)
    assert snap.failure_sources == 10
    assert snap.counters["failure_sources_evicted"] == 90
    assert snap.counters["failure_joins_evicted"] == 95


def test_offence_histories_are_bounded_and_evictions_persisted() -> None:
    e = Engine(Config(ban=BanPolicy(maxretry=1)), rng=random.Random(0), max_offences=2)
    actions: list[Action] = []
    for n in range(3):
        actions += e.feed(failed(ip(f"192.0.2.{n}"), pid=n, at=T0 + n), T0 + n)
    assert RecordOffence(net("192.0.2.0/32"), 0, T0) in actions
    assert e.snapshot(T0 + 3).counters["offences_forgotten"] == 1


def test_snapshot_counts_failures_by_origin_and_rule() -> None:
    e = engine()
    e.feed(failed(origin="btmp", rule="btmp", pid=1, at=T0), T0)
    e.feed(failed(origin="journal", rule="invalid_user", pid=1, at=T0), T0)
    e.feed(failed(origin="journal", rule="failed_password", pid=2, at=T0), T0)
    snap = e.snapshot(T0)
    assert snap.failures_by_origin == {"btmp": 1, "journal": 2}
    assert snap.failures_by_rule == {"btmp": 1, "invalid_user": 1, "failed_password": 1}
    assert snap.failure_sources == 1
    assert set(snap.counters) == set(COUNTER_NAMES)


def test_bad_attempt_counts_are_unexpected() -> None:
    e = engine()
    assert e.feed(failed(attempts=0), T0) == []
    assert e.snapshot(T0).counters["unexpected_events"] == 1


# ---------------------------------------------------------------------------------------------
# Hypothesis: the engine against a small model of the rules.

MAXRETRY, FINDTIME, BANTIME, FACTOR, MAXTIME = 3, 60.0, 10.0, 2.0, 40.0
POOL = (
    ip("203.0.113.1"),
    ip("203.0.113.2"),
    ip("198.51.100.7"),  # trusted
    ip("127.0.0.1"),  # loopback
    ip("2001:db8:1:2::a"),
    ip("2001:db8:1:2::b"),  # same /64 as ::a
    ip("2001:db8:7:7::1"),
    ip("2001:db8:5:5::2"),  # its /64 holds a trusted address: banned alone
    ip("2001:db8:ffff::5"),  # trusted
)
ORIGINS = ("journal", "btmp", "authlog")


def _key(source: IPAddress) -> IPNetwork:
    if source.version == 4:
        return ipaddress.ip_network(source)
    return ipaddress.ip_network((source, 64), strict=False)


def _shielded(network: IPNetwork) -> bool:
    loopback = (net("127.0.0.0/8"), net("::1/128"))
    return any(
        n.version == network.version and n.overlaps(network) for n in (*TRUSTED_NETS, *loopback)
    )


class BanMachine(RuleBasedStateMachine):
    """Attempts on sshd connections, each reported by one to three origins (each origin in log
    order, maybe after other attempts' reports), sessions opening and closing, time passing.

    A connection keeps its source and the origins that report it; its attempts may follow each
    other within the join window. Every report is read before log time moves on (advance), so
    reports of one attempt are always within the join window of each other."""

    @initialize()
    def start(self) -> None:
        policy = BanPolicy(
            maxretry=MAXRETRY, findtime=FINDTIME, bantime=BANTIME, factor=FACTOR, maxtime=MAXTIME
        )
        self.e = Engine(Config(guard=Guard(trusted=TRUSTED_NETS), ban=policy))
        self.now = T0
        self.pid = 0
        self.connection: tuple[IPAddress, frozenset[str]] | None = None
        self.attempts = 0
        # origin -> reports waiting to be read: (attempt id, source, pid, log time)
        self.pending: dict[str, list[tuple[int, IPAddress, int, float]]] = {o: [] for o in ORIGINS}
        self.reported: set[int] = set()  # attempts with a report read already
        self.sessions: dict[IPAddress, int] = {}  # source -> sport of its live session
        # the model
        self.windows: dict[IPNetwork, list[float]] = {}
        self.bans: dict[IPNetwork, float] = {}  # network -> until
        self.offences: dict[IPNetwork, int] = {}

    # -- rules ------------------------------------------------------------------------------

    @rule(
        source=st.sampled_from(POOL),
        origins=st.sets(st.sampled_from(ORIGINS), min_size=1).map(frozenset),
        same_connection=st.booleans(),
    )
    def attempt(self, source: IPAddress, origins: frozenset[str], same_connection: bool) -> None:
        if not same_connection or self.connection is None:
            self.pid += 1
            self.connection = (source, origins)
        source, origins = self.connection
        self.attempts += 1
        for origin in sorted(origins):
            at = math.floor(self.now) if origin == "btmp" else self.now
            self.pending[origin].append((self.attempts, source, self.pid, at))

    @rule(origin=st.sampled_from(ORIGINS))
    def read_one(self, origin: str) -> None:
        if self.pending[origin]:
            self._read(origin, *self.pending[origin].pop(0))

    @rule(dt=st.floats(min_value=0.5, max_value=40.0))
    def advance(self, dt: float) -> None:
        self._read_all()
        self.now += dt
        self.check(self.e.handle_timer(self.now))
        for network, until in list(self.bans.items()):
            if until <= self.now:
                del self.bans[network]

    @rule(source=st.sampled_from(POOL))
    def toggle_session(self, source: IPAddress) -> None:
        self._read_all()
        if source in self.sessions:
            sport = self.sessions.pop(source)
            self.check(self.e.feed(SessionClosed(source, sport, "u", 1), self.now))
        else:
            self.sessions[source] = 40000 + len(self.sessions)
            self.check(self.e.feed(SessionOpened(source, self.sessions[source], "u", 1), self.now))

    @rule(source=st.sampled_from(POOL))
    def stale_replay(self, source: IPAddress) -> None:
        self._read_all()
        self.pid += 1
        self.connection = None
        self.check(self.e.feed(failed(source, pid=self.pid, at=self.now - FINDTIME - 1), self.now))

    # -- the model ----------------------------------------------------------------------------

    def _read_all(self) -> None:
        while any(self.pending.values()):
            for origin in ORIGINS:
                if self.pending[origin]:
                    self._read(origin, *self.pending[origin].pop(0))

    def _read(self, origin: str, attempt: int, source: IPAddress, pid: int, at: float) -> None:
        event = failed(source, origin, pid=pid, at=at)
        actions = self.e.feed(event, self.now)
        first_report = attempt not in self.reported
        self.reported.add(attempt)
        expected: IPNetwork | None = None
        if (
            first_report
            and not _shielded(ipaddress.ip_network(source))
            and source not in self.sessions
            and not any(source in banned for banned in self.bans)
        ):
            key = _key(source)
            window = [t for t in self.windows.get(key, []) if t >= self.now - FINDTIME]
            window.append(at)  # the engine counts an attempt at its first report's log time
            self.windows[key] = window
            if len(window) >= MAXRETRY:
                del self.windows[key]
                live = [s for s in self.sessions if s.version == key.version and s in key]
                expected = key
                if _shielded(key) or live:
                    expected = ipaddress.ip_network(source)
        bans = [a for a in actions if isinstance(a, Ban)]
        if expected is None:
            assert bans == [], (event, actions)
            return
        assert len(bans) == 1, (event, actions)
        (ban,) = bans
        # never trusted, loopback, or a live session
        assert not _shielded(ban.network), ban
        assert not any(s.version == ban.network.version and s in ban.network
                       for s in self.sessions), ban  # fmt: skip
        offence = self.offences.get(expected, 0) + 1
        self.offences[expected] = offence
        timeout = min(BANTIME * FACTOR ** (offence - 1), MAXTIME)
        assert ban == Ban(expected, timeout, ban.reason, offence)
        self.bans[expected] = self.now + timeout

    def check(self, actions: list[Action]) -> None:
        """Outside the reading of a report, no step ever bans."""
        assert not [a for a in actions if isinstance(a, Ban)], actions

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def bans_match_the_model(self) -> None:
        snap = self.e.snapshot(self.now)
        assert {v.network: v.until for v in snap.bans} == self.bans
        assert not any(_shielded(v.network) for v in snap.bans)
        assert snap.counters["bans"] == sum(self.offences.values())

    @invariant()
    def timer_never_in_the_past(self) -> None:
        timer = self.e.get_timer()
        assert timer is None or timer > self.now


BanMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ban_machine = BanMachine.TestCase


def test_join_keys_older_than_findtime_are_forgotten_and_recent_ones_still_join() -> None:
    """The soak saw the join table grow by one key per sshd connection until its cap. Keys whose
    attempts are older than findtime (+ the join window) can only be joined by stale reports,
    so they are dropped as time passes; a recent attempt reported again still joins."""
    e = engine(maxretry=1000, findtime=600.0)
    for n in range(50):  # fifty connections, one attempt each, a second apart
        e.feed(failed(ATTACKER, "journal", pid=n, at=1000.0 + n), 1000.0 + n)
    assert e.snapshot(1050.0).counters["failure_joins_expired"] == 0
    # Much later: another attempt; every old key is past findtime and goes.
    e.feed(failed(ATTACKER, "journal", pid=999, at=2000.0), 2000.0)
    assert e.snapshot(2000.0).counters["failure_joins_expired"] == 50
    # btmp's report of that recent attempt joins it: counted once.
    e.feed(failed(ATTACKER, "btmp", pid=999, at=2000.5), 2000.5)
    counters = e.snapshot(2001.0).counters
    assert counters["failures_joined"] == 1
    assert counters["failures_counted"] == 51
