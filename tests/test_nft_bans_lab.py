# Lab tests of the ban sets against the real kernel (nftables 1.0.6 here), inside network
# namespaces these tests create ("gb14-" prefix) and always delete: the sets and rules install_
# commands builds, bans and unbans as commands_for() turns engine actions into, kernel timeouts,
# the raw netlink listing that adoption uses (compared with nft's own), the ipv6_prefix migration,
# traffic from banned sources being dropped, and the start-up cost of adopting 100k bans.
# The test process enters a namespace with setns(2) on its only thread and leaves it in a finally
# block; effectors are made inside (their netlink sockets stay bound to that namespace). The root
# namespace's ruleset is compared before and after every test.
from __future__ import annotations

import gc
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from guardian.actions import Action, Ban, RecordOffence, Unban
from guardian.addresses import IPNetwork
from guardian.config import TABLE_NAME, Config, Guard
from guardian.config import Ban as BanPolicy
from guardian.effectors.nft_rules import FAMILY, commands_for
from guardian.engine import Engine
from guardian.events import AuthFailed, BanFound
from guardian.lab.inside import inside, scratch_namespaces

try:
    from guardian.effectors.nft import NftEffector
except ImportError:  # python3-nftables missing: the whole module is skipped below
    NftEffector = None  # type: ignore[assignment,misc]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("nft") is None, reason="ip/nft"),
    pytest.mark.skipif(NftEffector is None, reason="python3-nftables is not importable"),
]

ip = ipaddress.ip_address
net = ipaddress.ip_network

SERVER4, CLIENT4 = "192.0.2.1", "192.0.2.2"
SERVER6, CLIENT6 = "2001:db8::1", "2001:db8::2"
GUARDED, OPEN_PORT = 22, 8080
CONFIG = Config(guard=Guard(ports=(GUARDED,), trusted=(net("198.51.100.0/24"),)))
ADOPT_SANITY_BOUND = 4.0  # seconds; the < 1 s target is bench/adopt_bans.py's to measure


def run(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, input=stdin
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Create namespaces gb14-<pid>-<tag>; every one is deleted at teardown, on failure too."""
    with scratch_namespaces("gb14") as make:
        yield make


@pytest.fixture
def lab(make_netns: Callable[[str], str]) -> Iterator[Any]:
    """The test body runs inside a fresh namespace and gets an effector bound to it."""
    with inside(make_netns("fx")):
        effector = NftEffector()
        try:
            yield effector
        finally:
            effector.close()


def bans_of(effector: Any) -> dict[IPNetwork, float | None]:
    """network -> seconds left (None: permanent)"""
    found = effector.list_bans()
    assert len(found) == len({network for network, _, _ in found}), found
    return {network: left for network, left, _ in found}


def offences_of(effector: Any) -> dict[IPNetwork, int | None]:
    """network -> the offence its element's comment carries"""
    return {network: offence for network, _, offence in effector.list_bans()}


def apply(effector: Any, actions: Sequence[Action], prefix: int = 64) -> None:
    effector.apply(commands_for(actions, ipv6_prefix=prefix))


# ---------------------------------------------------------------------------------------------


def test_install_builds_the_ban_sets_and_rules_first(lab: Any) -> None:
    lab.install(CONFIG)
    text = run("nft", "list", "table", FAMILY, TABLE_NAME)
    chain = text[text.index("chain input") :].splitlines()
    rules = [line.strip() for line in chain[2:] if line.strip() and line.strip() != "}"]
    assert rules[:6] == [
        'iif "lo" accept',
        "ip saddr @ban4 drop",
        "ip saddr @bannet4 drop",
        "ip6 saddr & ffff:ffff:ffff:ffff:: == @ban6_64 drop",
        "ip6 saddr @bannet6 drop",
        "ct state established,related accept",
    ]
    for name, flags in (
        ("ban4", "timeout"),
        ("ban6_64", "timeout"),
        ("bannet4", "interval,timeout"),
        ("bannet6", "interval,timeout"),
    ):
        listing = run("nft", "list", "set", FAMILY, TABLE_NAME, name)
        assert f"flags {flags}" in listing, listing
    assert lab.list_bans() == []


def test_guarded_scope_rules(lab: Any) -> None:
    lab.install(replace(CONFIG, ban=BanPolicy(scope="guarded", ipv6_prefix=56)))
    text = run("nft", "list", "table", FAMILY, TABLE_NAME)
    assert "tcp dport 22 ip saddr @ban4 drop" in text
    assert "tcp dport 22 ip6 saddr & ffff:ffff:ffff:ff00:: == @ban6_56 drop" in text


def test_no_table_no_bans(lab: Any) -> None:
    assert not lab.table_exists()
    assert lab.list_bans() == []
    assert lab.list_grants() == []


def test_bans_of_every_kind_round_trip_and_unban_is_idempotent(lab: Any) -> None:
    lab.install(CONFIG)
    apply(
        lab,
        [
            Ban(net("203.0.113.5/32"), 600.0, "x", 1),
            Ban(net("2001:db8:1:2::/64"), 1200.0, "x", 1),
            Ban(net("203.0.113.128/25"), 30.0, "x", 1),
            Ban(net("2001:db8:9::5/128"), None, "x", 1),
            Ban(net("2001:db8:7::/48"), 99.0, "x", 1),
        ],
    )
    found = bans_of(lab)
    assert set(found) == {
        net("203.0.113.5/32"),
        net("2001:db8:1:2::/64"),
        net("203.0.113.128/25"),
        net("2001:db8:9::5/128"),
        net("2001:db8:7::/48"),
    }
    assert found[net("2001:db8:9::5/128")] is None
    assert 598 <= (found[net("203.0.113.5/32")] or 0) <= 600
    assert 1198 <= (found[net("2001:db8:1:2::/64")] or 0) <= 1200
    assert 28 <= (found[net("203.0.113.128/25")] or 0) <= 30
    # a re-ban refreshes the timeout, in hash and interval sets alike
    apply(
        lab, [Ban(net("203.0.113.5/32"), 9000.0, "x", 2), Ban(net("2001:db8:7::/48"), 5.0, "x", 2)]
    )
    found = bans_of(lab)
    assert 8998 <= (found[net("203.0.113.5/32")] or 0) <= 9000
    assert 3 <= (found[net("2001:db8:7::/48")] or 0) <= 5
    unbans = [Unban(n, "operator") for n in found]
    apply(lab, unbans)
    assert bans_of(lab) == {}
    apply(lab, unbans)  # idempotent: nothing left to lift
    assert bans_of(lab) == {}


def test_reinstall_keeps_bans(lab: Any) -> None:
    lab.install(CONFIG)
    apply(lab, [Ban(net("203.0.113.5/32"), 600.0, "x", 1), Ban(net("2001:db8::/64"), 600, "x", 1)])
    before = set(bans_of(lab))
    lab.install(CONFIG)
    lab.install(replace(CONFIG, guard=Guard(ports=(2222,)), ban=BanPolicy(scope="guarded")))
    assert set(bans_of(lab)) == before


def test_the_kernel_drops_an_expired_ban(lab: Any) -> None:
    lab.install(CONFIG)
    banned = time.monotonic()
    apply(lab, [Ban(net("203.0.113.9/32"), 2.0, "x", 1), Ban(net("203.0.113.0/28"), 2.0, "x", 1)])
    gone_after = None
    while time.monotonic() - banned < 8:  # bounded: 8 s at most
        if not bans_of(lab):
            gone_after = time.monotonic() - banned
            break
        time.sleep(0.1)
    assert gone_after is not None and 1.5 <= gone_after <= 4.0, gone_after
    # an interval element that has just expired is no obstacle to a new overlapping one
    apply(lab, [Ban(net("203.0.113.0/24"), 60.0, "x", 1)])
    assert set(bans_of(lab)) == {net("203.0.113.0/24")}


def test_raw_listing_agrees_with_nft(lab: Any) -> None:
    """list_bans reads the hash sets over raw netlink: compare with `nft -j list set`."""
    lab.install(CONFIG)
    rng = random.Random(5)
    actions: list[Action] = []
    for n in range(300):
        timeout = None if n % 7 == 0 else float(rng.randint(1000, 100000))
        offence = rng.choice([1, 2, 9, 10, 99, 100, 12345, 999_999_999])  # comments of every length
        actions.append(
            Ban(net(f"10.{n // 250}.{n % 250}.{rng.randint(1, 254)}/32"), timeout, "", offence)
        )
        six = ipaddress.IPv6Network(((0x20010DB8 << 96) | (rng.getrandbits(32) << 64), 64))
        actions.append(Ban(six, timeout, "", offence))
    apply(lab, actions)
    ours = bans_of(lab)
    theirs: dict[IPNetwork, float | None] = {}
    comments: dict[IPNetwork, str | None] = {}
    for name, length in (("ban4", 32), ("ban6_64", 64)):
        listing = json.loads(run("nft", "-j", "list", "set", FAMILY, TABLE_NAME, name))
        for item in listing["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                if isinstance(element, str):
                    theirs[net(f"{element}/{length}")] = None
                    comments[net(f"{element}/{length}")] = None
                else:
                    value = element["elem"]["val"]
                    theirs[net(f"{value}/{length}")] = element["elem"].get("expires")
                    comments[net(f"{value}/{length}")] = element["elem"].get("comment")
    assert set(ours) == set(theirs) == {a.network for a in actions if isinstance(a, Ban)}
    # A repeat offence's element carries its number (a first one none), and the raw dump reads
    # what nft shows.
    bans = [a for a in actions if isinstance(a, Ban)]
    expected = {a.network: a.offence if a.offence > 1 else None for a in bans}
    assert offences_of(lab) == expected
    assert comments == {n: None if o is None else f"offence {o}" for n, o in expected.items()}
    assert None in expected.values() and len(set(expected.values())) == 8
    for network, left in ours.items():
        if theirs[network] is None:
            assert left is None
        else:
            assert left is not None and abs(left - (theirs[network] or 0)) <= 2


def test_a_new_ipv6_prefix_moves_old_prefix_bans_to_bannet6(lab: Any) -> None:
    lab.install(CONFIG)
    apply(
        lab,
        [
            Ban(net("2001:db8:1:2::/64"), 600.0, "x", 1),
            Ban(net("2001:db8:3:4::/64"), None, "x", 1),
            Ban(net("2001:db8:9::/48"), 600.0, "x", 1),  # overlaps nothing: stays in bannet6
        ],
    )
    lab.install(replace(CONFIG, ban=BanPolicy(ipv6_prefix=48)))
    text = run("nft", "list", "table", FAMILY, TABLE_NAME)
    assert "ban6_64" not in text and "@ban6_48" in text
    found = bans_of(lab)
    assert set(found) == {
        net("2001:db8:1:2::/64"),
        net("2001:db8:3:4::/64"),
        net("2001:db8:9::/48"),
    }
    assert found[net("2001:db8:3:4::/64")] is None
    assert 595 <= (found[net("2001:db8:1:2::/64")] or 0) <= 600
    # the engine's Unban of a /64 is routed to bannet6 now
    apply(lab, [Unban(net("2001:db8:1:2::/64"), "operator")], prefix=48)
    assert net("2001:db8:1:2::/64") not in bans_of(lab)


# -- traffic --------------------------------------------------------------------------------------


@pytest.fixture
def pair(make_netns: Callable[[str], str]) -> tuple[str, str]:
    server, client = make_netns("srv"), make_netns("cli")
    run("ip", "-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
        "netns", client)  # fmt: skip
    for name, v4, v6 in ((server, SERVER4, SERVER6), (client, CLIENT4, CLIENT6)):
        run("ip", "-n", name, "addr", "add", f"{v4}/24", "dev", "eth0")
        run("ip", "-n", name, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
        run("ip", "-n", name, "link", "set", "eth0", "up")
    return server, client


def connect(client: str, host: str, port: int) -> str:
    """'open', 'refused' or 'timeout' for a TCP connect from inside the client namespace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with inside(client):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(0.7)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "open"


def test_banned_sources_are_dropped_on_every_port_or_the_guarded_ones(
    pair: tuple[str, str],
) -> None:
    server, client = pair
    with inside(server):
        effector = NftEffector()
        listeners = [
            socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
            for port in (GUARDED, OPEN_PORT)
        ]
    try:
        trusting = Guard(ports=(GUARDED,), trusted=(net("192.0.2.0/24"), net("2001:db8::/64")))
        effector.install(replace(CONFIG, guard=trusting))
        for host in (SERVER4, SERVER6):
            assert connect(client, host, GUARDED) == "open"  # trusted
            assert connect(client, host, OPEN_PORT) == "open"
        # an operator's ban does not care for trust in the kernel (the engine refuses it): this
        # shows the ban rules come before the trusted accept
        apply(effector, [Ban(net(f"{CLIENT4}/32"), 60.0, "x", 1)])
        assert connect(client, SERVER4, GUARDED) == "timeout"
        assert connect(client, SERVER4, OPEN_PORT) == "timeout"
        assert connect(client, SERVER6, OPEN_PORT) == "open"
        apply(effector, [Ban(net("2001:db8::/64"), 60.0, "x", 1)])  # the prefix: hash + mask
        assert connect(client, SERVER6, OPEN_PORT) == "timeout"
        # scope = guarded: only the guarded port
        effector.install(replace(CONFIG, ban=BanPolicy(scope="guarded")))
        effector.grant(ip(CLIENT4), 60)
        assert connect(client, SERVER4, GUARDED) == "timeout"  # banned beats granted
        assert connect(client, SERVER4, OPEN_PORT) == "open"
        apply(effector, [Unban(net(f"{CLIENT4}/32"), "operator")])
        assert connect(client, SERVER4, GUARDED) == "open"
    finally:
        for listener in listeners:
            listener.close()
        effector.close()


def test_a_ban_cuts_an_open_connection(pair: tuple[str, str]) -> None:
    server, client = pair
    with inside(server):
        effector = NftEffector()
        listener = socket.create_server((SERVER4, OPEN_PORT))
    with inside(client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        effector.install(CONFIG)
        sock.settimeout(1.0)
        sock.connect((SERVER4, OPEN_PORT))
        peer, _ = listener.accept()
        with peer:
            sock.sendall(b"before")
            assert peer.recv(16) == b"before"
            apply(effector, [Ban(net(f"{CLIENT4}/32"), 60.0, "x", 1)])
            sock.sendall(b"after")
            peer.settimeout(1.0)
            with pytest.raises(TimeoutError):
                peer.recv(16)  # dropped: established connections are no exception
    finally:
        sock.close()
        listener.close()
        effector.close()


def test_engine_failures_to_a_dropped_connection(pair: tuple[str, str]) -> None:
    """The whole path: AuthFailed from three origins -> engine -> commands_for -> kernel."""
    server, client = pair
    with inside(server):
        effector = NftEffector()
        listener = socket.create_server((SERVER4, OPEN_PORT))
    try:
        config = replace(CONFIG, ban=BanPolicy(maxretry=3))
        effector.install(config)
        engine = Engine(config, rng=random.Random(0))
        now = 1000.0
        for pid in range(3):
            assert connect(client, SERVER4, OPEN_PORT) == "open"
            actions: list[Action] = []
            for origin in ("btmp", "journal", "authlog"):
                event = AuthFailed(ip(CLIENT4), origin, "failed_password", "root", pid, now)
                actions += engine.feed(event, now)
            effector.apply(commands_for(actions, ipv6_prefix=config.ban.ipv6_prefix))
            now += 1
        assert [type(a).__name__ for a in actions] == ["Ban", "RecordOffence", "Notice"]
        assert connect(client, SERVER4, OPEN_PORT) == "timeout"
        assert set(bans_of(effector)) == {net(f"{CLIENT4}/32")}
    finally:
        listener.close()
        effector.close()


# -- start-up at scale ----------------------------------------------------------------------------


def test_adopting_100k_bans_is_complete_and_stays_linear(lab: Any) -> None:
    """100k bans (70k IPv4 addresses, 30k IPv6 /64) put in the kernel in one batch; then what
    the daemon does at start-up: list them (raw netlink) and let the engine adopt them, with the
    cyclic GC paused (as the daemon should). Best of three runs, each printed.

    The issue's target (< 1 s) is measured by bench/adopt_bans.py, not asserted here: on a busy
    CI machine the same code took 0.97-1.48 s. The bound here only catches a change of shape
    (interval sets, or anything quadratic, take many seconds at this size)."""
    lab.install(CONFIG)
    rng = random.Random(14)
    v4: set[int] = set()
    while len(v4) < 70_000:
        v4.add(0x0B000000 + rng.getrandbits(26))  # 11.0.0.0 to 14.255.255.255: none trusted
    v6: set[int] = set()
    while len(v6) < 30_000:
        v6.add((0x20010DB8 << 96) | (rng.getrandbits(32) << 64))
    # As the daemon writes them: each with its offence as its comment (nft_rules.py).
    elements4 = [
        {
            "elem": {
                "val": str(ipaddress.IPv4Address(a)),
                "timeout": 3600,
                "comment": f"offence {1 + a % 3}",
            }
        }
        for a in v4
    ]
    elements6 = [{"elem": {"val": str(ipaddress.IPv6Address(a)), "timeout": 7200,
                           "comment": f"offence {1 + (a >> 64) % 3}"}} for a in v6]  # fmt: skip
    inserted = time.perf_counter()
    lab.apply(
        [
            {"add": {"element": {"family": FAMILY, "table": TABLE_NAME, "name": "ban4",
                                 "elem": elements4}}},
            {"add": {"element": {"family": FAMILY, "table": TABLE_NAME, "name": "ban6_64",
                                 "elem": elements6}}},
        ]
    )  # fmt: skip
    inserted = time.perf_counter() - inserted
    runs: list[tuple[float, float, float]] = []
    for _ in range(3):
        engine = Engine(CONFIG, rng=random.Random(0))
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            cpu = time.process_time()
            listed = lab.list_bans()
            middle = time.perf_counter()
            actions = engine.adopt_bans([BanFound(*found) for found in listed], 50.0)
            ended = time.perf_counter()
            cpu = time.process_time() - cpu
        finally:
            gc.enable()
        # No kernel action; no history was loaded, so each ban gets one: its comment's offence.
        restored = [a for a in actions if isinstance(a, RecordOffence)]
        assert len(restored) == len(actions) == 100_000
        assert {(a.network, a.offences) for a in restored} == {(n, o) for n, _, o in listed}
        assert {o for _, _, o in listed} == {1, 2, 3}
        assert len(listed) == 100_000
        snapshot = engine.snapshot(50.0)
        assert len(snapshot.bans) == 100_000
        assert snapshot.counters["bans_adopted"] == 100_000
        assert engine.banned(ipaddress.IPv4Address(next(iter(v4)))) is not None
        runs.append((middle - started, ended - middle, cpu))
        del engine, listed, snapshot
    best = min(list_time + adopt_time for list_time, adopt_time, _ in runs)
    print(f"\n100k bans: inserted in {inserted:.2f} s (one nft batch); adoption runs " + ", ".join(
        f"list {a:.3f} s + adopt {b:.3f} s (cpu {c:.3f} s)" for a, b, c in runs
    ) + f"; best {best:.3f} s")  # fmt: skip
    assert best < ADOPT_SANITY_BOUND, runs
