# Lab tests of the nftables effector against the real kernel, inside network namespaces these
# tests create ("gn4-" prefix) and always delete. The test process enters a namespace with
# setns(2) on its only thread and leaves it in a finally block; the effector is constructed inside,
# because a libnftables context stays bound to the namespace it was created in. The root
# namespace's ruleset is compared before and after every test: it must never change.
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from guardian.addresses import IPAddress
from guardian.config import TABLE_NAME, Config, Guard
from guardian.effectors.nft_rules import FAMILY, grant_commands, revoke_commands
from guardian.lab.inside import inside, scratch_namespaces

try:
    from guardian.effectors.nft import NftEffector, NftError
except ImportError:  # python3-nftables missing: the whole module is skipped below
    NftEffector = NftError = None  # type: ignore[assignment,misc]

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
GATED_PORT = 22


def run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Create namespaces gn4-<pid>-<tag>; every one is deleted at teardown, on failure too."""
    with scratch_namespaces("gn4") as make:
        yield make


@pytest.fixture
def lab(make_netns: Callable[[str], str]) -> Iterator[Any]:
    """The test body runs inside a fresh namespace and gets an effector bound to it."""
    with inside(make_netns("fx")):
        yield NftEffector()


def listing() -> Any:
    """`nft -j list table inet guardian` without what changes between listings (handles, the
    seconds left on timed elements)."""
    return _strip(json.loads(run("nft", "-j", "list", "table", FAMILY, TABLE_NAME)))


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("handle", "expires")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def grants_of(effector: Any) -> dict[IPAddress, float | None]:
    found = effector.list_grants()
    assert len(found) == len({address for address, _ in found}), found
    return dict(found)


CONFIG = Config(
    guard=Guard(ports=(GATED_PORT,), trusted=(net("198.51.100.0/24"), net("2001:db8:ffff::/48")))
)


# ---------------------------------------------------------------------------------------------


def test_install_builds_the_gate(lab: Any) -> None:
    assert not lab.table_exists()
    lab.install(CONFIG)
    assert lab.table_exists()
    text = run("nft", "list", "table", FAMILY, TABLE_NAME)
    for line in (
        "type filter hook input priority filter - 10; policy accept;",
        'iif "lo" accept',
        "ct state established,related accept",
        "tcp dport 22 ip saddr @trusted4 accept",
        "tcp dport 22 ip6 saddr @trusted6 accept",
        "tcp dport 22 ip saddr @allow4 accept",
        "tcp dport 22 ip6 saddr @allow6 accept",
        "tcp dport 22 reject with tcp reset",
        "elements = { 198.51.100.0/24 }",
        "elements = { 2001:db8:ffff::/48 }",
    ):
        assert line in text, text
    assert lab.list_grants() == []


def test_reinstall_is_idempotent_and_keeps_grants(lab: Any) -> None:
    lab.install(CONFIG)
    lab.grant(ip("192.0.2.20"), 600)
    lab.grant(ip("2001:db8::20"), 600)
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow4", "{ 192.0.2.21 }")
    before = listing()
    lab.install(CONFIG)
    lab.install(CONFIG)
    assert listing() == before
    assert set(grants_of(lab)) == {ip("192.0.2.20"), ip("2001:db8::20"), ip("192.0.2.21")}


def test_config_change_replaces_gate_and_trusted_atomically(lab: Any) -> None:
    lab.install(CONFIG)
    lab.grant(ip("192.0.2.30"), 600)
    changed = Config(
        guard=Guard(
            ports=(2222, 22),
            trusted=(net("203.0.113.0/24"), net("203.0.113.128/25")),
            interfaces=("eth0",),
            answer="drop",
        )
    )
    lab.install(changed)
    text = run("nft", "list", "table", FAMILY, TABLE_NAME)
    assert "198.51.100.0/24" not in text and "2001:db8:ffff::/48" not in text
    assert "elements = { 203.0.113.0/24 }" in text  # collapsed, or nft would refuse the overlap
    assert 'iifname "eth0" tcp dport { 22, 2222 } drop' in text
    assert "reject" not in text
    assert set(grants_of(lab)) == {ip("192.0.2.30")}
    lab.install(CONFIG)  # and back
    assert "tcp dport 22 reject with tcp reset" in run("nft", "list", "table", FAMILY, TABLE_NAME)


def test_grant_expires_by_kernel_timeout(lab: Any) -> None:
    lab.install(CONFIG)
    source = ip("192.0.2.40")
    granted = time.monotonic()
    lab.grant(source, 2)
    remaining = grants_of(lab)[source]
    assert remaining is not None and 1 <= remaining <= 2
    gone_after = None
    while time.monotonic() - granted < 6:  # bounded: 6 s at most
        if source not in grants_of(lab):
            gone_after = time.monotonic() - granted
            break
        time.sleep(0.05)
    assert gone_after is not None, "the kernel did not expire the grant"
    assert 1.5 <= gone_after <= 3.5, gone_after


def test_refresh_resets_the_timeout_and_bounds_a_permanent_element(lab: Any) -> None:
    lab.install(CONFIG)
    source = ip("2001:db8::50")
    lab.grant(source, 4)
    time.sleep(1.3)
    before = grants_of(lab)[source]
    assert before is not None and before <= 2.7
    lab.apply(grant_commands(source, 4))  # what RefreshGrant maps to
    after = grants_of(lab)[source]
    assert after is not None and after >= 3
    # A permanent element (made by hand) gets a timeout back.
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow4", "{ 192.0.2.50 }")
    assert grants_of(lab)[ip("192.0.2.50")] is None
    lab.grant(ip("192.0.2.50"), 30)
    remaining = grants_of(lab)[ip("192.0.2.50")]
    assert remaining is not None and 28 <= remaining <= 30


def test_revoke_removes_and_is_idempotent(lab: Any) -> None:
    lab.install(CONFIG)
    lab.revoke(ip("192.0.2.60"))  # never granted
    lab.revoke(ip("2001:db8::60"))
    lab.grant(ip("192.0.2.61"), 60)
    lab.grant(ip("2001:db8::61"), 60)
    lab.revoke(ip("192.0.2.61"))
    lab.revoke(ip("::ffff:192.0.2.61"))  # again, and by its v4-mapped spelling
    lab.revoke(ip("2001:db8::61"))
    assert grants_of(lab) == {}


def test_one_step_with_several_actions_on_one_source(lab: Any) -> None:
    lab.install(CONFIG)
    source = ip("192.0.2.65")
    lab.apply(grant_commands(source, 30) + revoke_commands(source) + grant_commands(source, 9))
    remaining = grants_of(lab)[source]
    assert remaining is not None and 7 <= remaining <= 9
    lab.apply(grant_commands(source, 30) + grant_commands(source, 30) + revoke_commands(source))
    assert source not in grants_of(lab)


def test_a_refused_transaction_changes_nothing(lab: Any) -> None:
    lab.install(CONFIG)
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow4", "{ 192.0.2.70 }")
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow6", "{ 2001:db8::70 }")
    before = run("nft", "list", "ruleset")
    missing_element = {
        "delete": {
            "element": {
                "family": FAMILY,
                "table": TABLE_NAME,
                "name": "allow4",
                "elem": ["192.0.2.99"],
            }
        }
    }
    missing_set = {
        "add": {
            "element": {
                "family": FAMILY,
                "table": TABLE_NAME,
                "name": "nosuch",
                "elem": ["192.0.2.99"],
            }
        }
    }
    good_before = grant_commands(ip("192.0.2.71"), 60) + revoke_commands(ip("192.0.2.70"))
    good_after = grant_commands(ip("2001:db8::71"), 60) + revoke_commands(ip("2001:db8::70"))
    for bad in (missing_element, missing_set):  # refused by the kernel / by nft's own checks
        with pytest.raises(NftError) as refused:
            lab.apply([*good_before, bad, *good_after])
        assert str(refused.value)  # nft's message is carried
        assert run("nft", "list", "ruleset") == before
    with pytest.raises(NftError, match="No such file or directory"):
        lab.apply([*good_before, missing_element])


def test_list_grants_adopts_timed_and_permanent_elements(lab: Any) -> None:
    assert lab.list_grants() == []  # no table yet
    lab.install(CONFIG)
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow4", "{ 192.0.2.80 }")
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow4", "{ 192.0.2.81 timeout 100s }")
    run("nft", "add", "element", FAMILY, TABLE_NAME, "allow6", "{ 2001:db8::80 timeout 1h }")
    found = grants_of(lab)
    assert set(found) == {ip("192.0.2.80"), ip("192.0.2.81"), ip("2001:db8::80")}
    assert found[ip("192.0.2.80")] is None
    assert 98 <= (found[ip("192.0.2.81")] or 0) <= 100
    assert 3598 <= (found[ip("2001:db8::80")] or 0) <= 3600
    assert all(isinstance(v, float) for v in found.values() if v is not None)


def test_remove_table_is_idempotent(lab: Any) -> None:
    lab.remove_table()  # absent: no error
    lab.install(CONFIG)
    lab.grant(ip("192.0.2.90"), 60)
    lab.remove_table()
    assert not lab.table_exists()
    assert lab.list_grants() == []
    assert run("nft", "list", "ruleset") == ""
    lab.remove_table()


def test_effector_acts_on_the_namespace_it_was_made_in(make_netns: Callable[[str], str]) -> None:
    first, second = make_netns("a"), make_netns("b")
    with inside(first):
        effector = NftEffector()
    with inside(second):
        effector.install(CONFIG)  # created in `first`: must land there
        assert run("nft", "list", "ruleset") == ""
    with inside(first):
        assert TABLE_NAME in run("nft", "list", "tables")


# ---------------------------------------------------------------------------------------------
# Traffic through the gate: a server namespace (gate + listener) and a client namespace on a veth.


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
        sock = socket.socket(family, socket.SOCK_STREAM)  # the socket lives in the client ns
    with sock:
        sock.settimeout(1.0)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "open"


def test_traffic_reset_grant_revoke_and_drop(pair: tuple[str, str]) -> None:
    server, client = pair
    with inside(server):
        effector = NftEffector()
        listener = socket.create_server(
            ("::", GATED_PORT), family=socket.AF_INET6, dualstack_ipv6=True
        )
    with listener:
        assert connect(client, SERVER4, GATED_PORT) == "open"  # no gate yet
        effector.install(Config(guard=Guard(ports=(GATED_PORT,))))
        unused_port = GATED_PORT + 1
        assert connect(client, SERVER4, unused_port) == "refused"
        assert connect(client, SERVER4, GATED_PORT) == "refused"  # same answer as unused
        assert connect(client, SERVER6, GATED_PORT) == "refused"
        effector.grant(ip(CLIENT4), 30)
        assert connect(client, SERVER4, GATED_PORT) == "open"
        assert connect(client, SERVER6, GATED_PORT) == "refused"  # v6 source not granted
        effector.grant(ip(CLIENT6), 30)
        assert connect(client, SERVER6, GATED_PORT) == "open"
        effector.revoke(ip(CLIENT4))
        effector.revoke(ip(CLIENT6))
        assert connect(client, SERVER4, GATED_PORT) == "refused"
        effector.install(Config(guard=Guard(ports=(GATED_PORT,), answer="drop")))
        assert connect(client, SERVER4, GATED_PORT) == "timeout"
        effector.install(Config(guard=Guard(ports=(GATED_PORT,), trusted=(net("192.0.2.0/28"),))))
        assert connect(client, SERVER4, GATED_PORT) == "open"  # trusted
        assert connect(client, SERVER6, GATED_PORT) == "refused"
        effector.install(Config(guard=Guard(ports=(GATED_PORT,), interfaces=("nosuch0",))))
        assert connect(client, SERVER6, GATED_PORT) == "open"  # gate only on other interfaces


def test_measure_grant_batch_cost(lab: Any) -> None:
    """Prints the median cost of one grant transaction in-process (not asserted)."""
    lab.install(CONFIG)
    costs = []
    for i in range(200):  # 200 transactions, a few ms in all
        commands = grant_commands(ip(f"192.0.2.{i % 50 + 100}"), 30)
        started = time.perf_counter()
        lab.apply(commands)
        costs.append(time.perf_counter() - started)
    assert len(grants_of(lab)) == 50
    print(f"\nnft grant transaction, in-process: median {statistics.median(costs) * 1000:.3f} ms, "
          f"p95 {sorted(costs)[189] * 1000:.3f} ms over {len(costs)}")  # fmt: skip
