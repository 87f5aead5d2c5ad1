# Fixed snapshots shared by the UI, snapshot and metrics tests: an empty daemon, a busy one (dozens
# of grants, sessions and bans, IPv4 and IPv6, every grant state, a watcher down), and one of a
# daemon that tracks no sessions, bans or SPA yet. Deterministic: built by rule, no randomness, so
# golden renders of them never change unless the rendering does.
from __future__ import annotations

import ipaddress

from guardian.snapshot import (
    BanInfo,
    EventInfo,
    GrantInfo,
    Header,
    SessionInfo,
    SpaStatus,
    SshdStatus,
    StatusSnapshot,
    WatcherStatus,
)

TAKEN_AT = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC; renders only ever show differences from it

# The engine's counter names when these samples were made. Fixed here on purpose: a counter added
# to the engine must not change the golden renders (the renderer copes with any set of names).
COUNTER_NAMES = (
    "knocks_seen",
    "knocks_ignored",
    "knocks_duplicate",
    "decoy_hits",
    "attempts_started",
    "attempts_evicted",
    "attempts_diverged",
    "attempts_dropped",
    "knocks_completed",
    "knocks_failed",
    "grants_opened",
    "grants_refreshed",
    "grants_closed",
    "grants_adopted",
    "grants_adopted_live",
    "grants_in_session",
    "grants_lingering",
    "grants_closed_by_linger",
    "lease_refreshes",
    "connections_opened",
    "connections_closed",
    "connections_evicted",
    "connections_ungranted",
    "connections_duplicate",
    "closes_unknown",
    "listings",
    "sessions_opened",
    "sessions_closed",
    "sessions_duplicate",
    "unauthenticated_expired",
    "signals_changed",
    "unexpected_events",
)


def _v4(i: int) -> str:
    return str(ipaddress.IPv4Address("192.0.2.0") + i)


def _v6(i: int) -> str:
    return str(ipaddress.IPv6Address("2001:db8:4000::") + i * 0x10001)


def empty_snapshot() -> StatusSnapshot:
    return StatusSnapshot(
        header=Header(
            version="0.1.0",
            pid=4242,
            taken_at=TAKEN_AT,
            uptime=12.4,
            config_path="/etc/guardian/guardian.toml",
            table_installed=True,
            watchers=(WatcherStatus("knock", True),),
        ),
        sessions=(),
        bans=(),
        counters=dict.fromkeys(COUNTER_NAMES, 0),
        gauges={"attempts": 0.0, "attempt_records": 0.0, "timer_entries": 0.0},
    )


def legacy_snapshot() -> StatusSnapshot:
    """A daemon of the foundation issue: no sessions, bans, SPA or sshd sections at all."""
    return StatusSnapshot(
        header=Header(
            version="0.1.0",
            pid=77,
            taken_at=TAKEN_AT,
            uptime=3725.0,
            config_path="/etc/guardian/guardian.toml",
            table_installed=False,
            watchers=(WatcherStatus("knock", False, "no such device: eth9"),),
        ),
        grants=(GrantInfo("192.0.2.10", "ssh", "window", 0, TAKEN_AT - 5, TAKEN_AT + 25, 25.0),),
        events=(EventInfo(TAKEN_AT - 5, "knock_completed", "192.0.2.10", "ssh"),),
        counters={"knocks_seen": 3, "knocks_completed": 1, "knocks_failed": 0},
    )


STATES = ("window", "in_session", "in_session", "linger")
DOORS = ("ssh", "laptop", "ssh", "operator", "adopted", "a-very-long-door-name-indeed")
REASONS = (
    "5 failed logins in 10m",
    "knock flood",
    "SPA replay",
    "operator",
    "invalid user root, admin, oracle, postgres, ubuntu",
)


def busy_snapshot() -> StatusSnapshot:
    grants = []
    sessions = []
    for i in range(36):
        source = _v4(10 + i) if i % 3 else _v6(i)
        state = STATES[i % len(STATES)]
        count = (i % 3 + 1) if state == "in_session" else 0
        left = 30.0 - i * 0.7 if state == "window" else 600.0 + i * 37 if state != "linger" else 95
        pending = 1 if i in (1, 4) else 0
        grants.append(
            GrantInfo(
                source=source,
                door=DOORS[i % len(DOORS)],
                state=state,
                sessions=count,
                opened_at=TAKEN_AT - 40 * i - 3,
                expires_at=TAKEN_AT + left,
                time_left=left,
                pending=pending,
            )
        )
        if pending:
            sessions.append(
                SessionInfo(
                    source, 50000 + i, 22, None, TAKEN_AT - 1, False, "conntrack", "pending"
                )
            )
        for k in range(count):
            sessions.append(
                SessionInfo(
                    source=source,
                    sport=40000 + 13 * i + k,
                    dport=0 if k == 2 else 22,
                    user=("alice", "bob", "deploy", "root")[(i + k) % 4],
                    since=TAKEN_AT - 30 * i - 7 * k - 2,
                    authenticated=True,
                    origin=("conntrack", "sockets", "journal")[k % 3],
                    auth="accepted" if k < 2 else "assumed",
                )
            )
    sessions.append(
        SessionInfo(_v4(99), 51515, 22, None, TAKEN_AT - 200, False, "sockets", "expired")
    )
    bans = [
        BanInfo(
            source=_v4(150 + i) if i % 4 else _v6(1000 + i),
            reason=REASONS[i % len(REASONS)],
            since=TAKEN_AT - 60 * i - 11,
            until=None if i % 7 == 6 else TAKEN_AT + 600 * (i % 5 + 1) + 7 * i,
            offence=i % 4 + 1,
        )
        for i in range(30)
    ]
    bans.append(BanInfo("198.51.100.0/24", "operator", TAKEN_AT - 86400 * 3, None, 1))
    kinds = (
        "knock_completed",
        "grant_opened",
        "knock_failed",
        "spa_refused",
        "ban",
        "grant_closed",
    )
    details = {
        "knock_failed": "wrong port 7001/tcp at step 2",
        "spa_refused": "replayed packet",
        "ban": "5 failed logins in 10m (offence #2, 20m)",
        "grant_closed": "linger ended",
    }
    events = [
        EventInfo(
            at=TAKEN_AT - 3 * (50 - i),
            kind=kinds[i % len(kinds)],
            source=_v4(10 + i) if i % 5 else _v6(i),
            door="" if kinds[i % len(kinds)] in ("ban", "spa_refused") else "ssh",
            detail=details.get(kinds[i % len(kinds)], ""),
        )
        for i in range(50)
    ]
    counters = {name: 1000 + 17 * n for n, name in enumerate(COUNTER_NAMES)}
    counters.update({"spa_accepted": 12, "spa_refused": 3})
    counters.update(  # the ban counters of the engine (engine/bans.py), which came later
        {"failures_seen": 1624, "failures_counted": 812, "failures_while_banned": 40, "bans": 31}
    )
    counters.update({"bans_operator": 2, "bans_adopted": 5, "bans_expired": 25, "unbans": 1})
    counters["knocks_banned"] = 77
    return StatusSnapshot(
        header=Header(
            version="0.1.0",
            pid=31337,
            taken_at=TAKEN_AT,
            uptime=3 * 86400 + 4 * 3600 + 5 * 60 + 6,
            config_path="/etc/guardian/guardian.toml",
            table_installed=True,
            watchers=(
                WatcherStatus("knock", True),
                WatcherStatus("spa", True),
                WatcherStatus("conntrack", True),
                WatcherStatus("journal", False, "journald not reachable"),
            ),
            sshd=SshdStatus("running", "socket-activated"),
        ),
        grants=tuple(grants),
        sessions=tuple(sessions),
        bans=tuple(bans),
        spa=SpaStatus("udp/62201", ("laptop", "phone"), {"not_authentic": 3, "replay": 1}, 4),
        events=tuple(events),
        counters=counters,
        gauges={"attempts": 17.0, "attempt_records": 21.0, "timer_entries": 80.0},
    )


def test_busy_snapshot_is_busy() -> None:
    busy = busy_snapshot()
    assert len(busy.grants) >= 24 and busy.bans is not None and len(busy.bans) >= 24
    assert {g.state for g in busy.grants} == {"window", "in_session", "linger"}
    assert any(":" in g.source for g in busy.grants)  # IPv6 too
    assert busy.sessions is not None
    assert sum(g.sessions + g.pending for g in busy.grants) + 1 == len(busy.sessions)


def test_samples_are_deterministic() -> None:
    assert busy_snapshot() == busy_snapshot()
    assert empty_snapshot() == empty_snapshot()
