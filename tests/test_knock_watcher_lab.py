# Lab tests of the knock watcher (root): two network namespaces, gk3-a (the watcher) and gk3-b (the
# knocking client), joined by a veth, IPv4 192.0.2.0/24 and IPv6 2001:db8::/64. The watcher runs in
# a child process inside gk3-a and reports JSON lines; knocks come from the real `knock` client and
# from guardian.knock_client. Shown here: knocks arrive with the right source, port, protocol and
# flags over IPv4 and IPv6; non-knock traffic never reaches userspace (the kernel filter works);
# knocks nftables drops are still seen; the veth going down, up, away and back does not stop the
# watcher; the interface restriction works. Namespaces are always removed; every wait is bounded.
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from guardian.watchers import WatcherError
from guardian.watchers.knock import KnockWatcher

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
NS_A, NS_B = "gk3-a", "gk3-b"
IF_A, IF_B = "gk3a0", "gk3b0"
A4, B4, A6, B6 = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"
TCP_PORTS, UDP_PORTS = [7000, 9000], [8000]
TIMEOUT = 5.0  # every wait for an event; the lab answers in milliseconds
QUIET = 0.4  # how long "nothing arrives" is watched for
SYN = 0x02

# The watcher child: runs in gk3-a, prints {"ready"}, then {"event"} per knock; answers "stats"
# with {"stats"} and "ports {json}" with {"ports"}; exits on "quit", on EOF or after its
# lifetime, whatever comes first.
CHILD = """
import json, select, sys, time
from guardian.watchers.knock import KnockWatcher
config = json.loads(sys.argv[1])
watcher = KnockWatcher(config["tcp"], config["udp"], tuple(config["interfaces"]))
watcher.open()
def say(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()
say({"ready": True})
deadline = time.monotonic() + config["lifetime"]
while time.monotonic() < deadline:
    readable, _, _ = select.select([watcher, sys.stdin], [], [], 0.2)
    if watcher in readable:
        for e in watcher.read_events():
            say({"event": [str(e.source), e.port, e.proto, e.tcp_flags, e.interface]})
    if sys.stdin in readable:
        command = sys.stdin.readline().strip()
        if command == "stats":
            say({"stats": watcher.stats()})
        elif command.startswith("ports "):
            ports = json.loads(command[len("ports "):])
            watcher.set_ports(ports["tcp"], ports["udp"])
            say({"ports": True})
        elif command in ("quit", ""):
            break
watcher.close()
"""

Event = tuple[str, int, str, int, str]


def run(
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, check=check, timeout=TIMEOUT * 2
    )


def in_ns(namespace: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", namespace, *argv, check=check)


def delete_namespaces() -> None:
    for namespace in (NS_A, NS_B):
        run("ip", "netns", "del", namespace, check=False)


def make_link() -> None:
    """The veth pair, created inside gk3-a (so nothing ever appears in the root namespace)."""
    run("ip", "-n", NS_A, "link", "add", IF_A, "type", "veth", "peer", "name", IF_B, "netns", NS_B)
    for namespace, interface, v4, v6 in ((NS_A, IF_A, A4, A6), (NS_B, IF_B, B4, B6)):
        run("ip", "-n", namespace, "addr", "add", f"{v4}/24", "dev", interface)
        run("ip", "-n", namespace, "addr", "add", f"{v6}/64", "dev", interface, "nodad")
        run("ip", "-n", namespace, "link", "set", interface, "up")


LOCK_PATH = Path(tempfile.gettempdir()) / "gk3-knock-watcher-lab.lock"
LOCK_WAIT = 120.0


@contextmanager
def exclusive_namespaces() -> Iterator[None]:
    """Two runs of this module at once would share gk3-a/gk3-b and see each other's knocks:
    serialise them (bounded wait)."""
    with LOCK_PATH.open("a") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run holds {LOCK_PATH} for over {LOCK_WAIT:.0f}s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def gk3_lab() -> Iterator[None]:
    # Lab tests fail, never skip, without what they need (a skipped acceptance test proves nothing;
    # `pytest -m "not lab"` is the way to run without root).
    if os.geteuid() != 0:
        pytest.fail("the knock watcher lab needs root (namespaces, AF_PACKET)", pytrace=False)
    missing = [tool for tool in ("ip", "knock", "nft") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the knock watcher lab needs {', '.join(missing)}", pytrace=False)
    with exclusive_namespaces():
        yield from _namespaces()


def _namespaces() -> Iterator[None]:
    delete_namespaces()  # leftovers of an interrupted run
    try:
        for namespace in (NS_A, NS_B):
            run("ip", "netns", "add", namespace)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
        make_link()
        yield
    finally:
        delete_namespaces()


class Watcher:
    """The watcher child process in gk3-a, read with bounded waits."""

    def __init__(self, interfaces: tuple[str, ...] = ()) -> None:
        config = {"tcp": TCP_PORTS, "udp": UDP_PORTS, "interfaces": interfaces, "lifetime": 60}
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", NS_A, sys.executable, "-c", CHILD, json.dumps(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buffer = b""
        self.events: list[Event] = []
        if self._next(lambda m: "ready" in m, TIMEOUT) is None:
            self.process.kill()
            _, error = self.process.communicate(timeout=TIMEOUT)
            raise AssertionError(f"the watcher did not start: {error.decode(errors='replace')}")

    def _next(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """Read messages until one is wanted (events are collected on the way) or time is up."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                message = json.loads(line)
                if "event" in message:
                    source, port, proto, flags, interface = message["event"]
                    self.events.append((source, port, proto, flags, interface))
                if wanted(message):
                    return message  # type: ignore[no-any-return]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buffer += chunk

    def wait_events(self, count: int, timeout: float = TIMEOUT) -> list[Event]:
        """All events seen once at least `count` have arrived (or the timeout passed)."""
        self._next(lambda _: len(self.events) >= count, timeout)
        return list(self.events)

    def quiet(self) -> list[Event]:
        """Events seen during a short quiet period (for "nothing arrives")."""
        self._next(lambda _: False, QUIET)
        return list(self.events)

    def command(self, line: str) -> dict[str, Any]:
        """Send one command line; return the child's answer (keyed by the command's first word)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        key = line.split()[0]
        message = self._next(lambda m: key in m, TIMEOUT)
        assert message is not None, f"no answer to {key}"
        return message

    def stats(self) -> dict[str, int]:
        return self.command("stats")["stats"]  # type: ignore[no-any-return]

    def close(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=TIMEOUT)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            assert stream is not None
            stream.close()


@pytest.fixture
def watcher(gk3_lab: None) -> Iterator[Watcher]:
    child = Watcher()
    try:
        yield child
    finally:
        child.close()


def knock(*argv: str) -> None:
    """The real knock client (knockd package) from gk3-b."""
    in_ns(NS_B, "knock", "-v", *argv)


def guardian_knock(host: str, *steps: str, family: int = 0) -> None:
    """guardian.knock_client.send_sequence from gk3-b."""
    code = (
        "import sys\n"
        "from guardian.config import KnockStep\n"
        "from guardian.knock_client import send_sequence\n"
        "steps = [KnockStep(int(p), t) for p, t in (s.split('/') for s in sys.argv[3:])]\n"
        "print(send_sequence(sys.argv[1], steps, family=int(sys.argv[2])))\n"
    )
    result = run(
        "ip", "netns", "exec", NS_B, sys.executable, "-c", code, host, str(family), *steps
    )  # fmt: skip
    assert result.stdout.strip() == host


def send_udp(namespace: str, host: str, port: int, size: int) -> None:
    """One UDP datagram of `size` bytes (larger than the MTU: it leaves in fragments)."""
    code = (
        "import socket, sys\n"
        "host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
        "family = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
        "socket.socket(family, socket.SOCK_DGRAM).sendto(bytes(size), (host, port))\n"
    )
    in_ns(namespace, sys.executable, "-c", code, host, str(port), str(size))


def send_echo_request(namespace: str, host: str) -> None:
    """One ICMP/ICMPv6 echo request (ping is not installed everywhere; the kernel answers it)."""
    code = (
        "import socket, sys\n"
        "host = sys.argv[1]\n"
        "v6 = ':' in host\n"
        "family = socket.AF_INET6 if v6 else socket.AF_INET\n"
        "proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP\n"
        "echo = bytes([128 if v6 else 8, 0, 0, 0, 0, 1, 0, 1])\n"
        "if not v6:\n"
        "    total = sum(int.from_bytes(echo[i:i + 2], 'big') for i in range(0, 8, 2))\n"
        "    total = (total & 0xFFFF) + (total >> 16)\n"
        "    echo = echo[:2] + (~total & 0xFFFF).to_bytes(2, 'big') + echo[4:]\n"
        "socket.socket(family, socket.SOCK_RAW, proto).sendto(echo, (host, 0))\n"
    )
    in_ns(namespace, sys.executable, "-c", code, host)


KNOCK_SEQUENCE_V4 = [
    (B4, 7000, "tcp", SYN, IF_A),
    (B4, 8000, "udp", 0, IF_A),
    (B4, 9000, "tcp", SYN, IF_A),
]
KNOCK_SEQUENCE_V6 = [(B6, p, proto, f, i) for _, p, proto, f, i in KNOCK_SEQUENCE_V4]


# ---------------------------------------------------------------------------------------------
def test_watcher_errors_before_open_and_bad_ports() -> None:
    closed = KnockWatcher([7000], [8000])
    for call in (closed.fileno, closed.read_events):
        with pytest.raises(WatcherError, match="not open"):
            call()
    closed.close()  # closing what never opened is fine
    assert closed.stats()["received"] == 0
    with pytest.raises(ValueError, match="out of range"):
        KnockWatcher([0], [])


def test_watcher_open_twice_is_an_error(gk3_lab: None) -> None:
    with KnockWatcher([7000], []) as watcher:
        with pytest.raises(WatcherError, match="already open"):
            watcher.open()
        assert watcher.fileno() >= 0
    with pytest.raises(WatcherError, match="not open"):
        watcher.fileno()


def test_set_ports_swaps_the_filter_of_a_running_watcher(watcher: Watcher) -> None:
    knock("-4", A4, "7000")
    assert watcher.wait_events(1) == [(B4, 7000, "tcp", SYN, IF_A)]
    watcher.command("ports " + json.dumps({"tcp": [7001], "udp": [8000]}))
    knock("-4", A4, "7000", "7001")
    assert watcher.wait_events(2) == [(B4, 7000, "tcp", SYN, IF_A), (B4, 7001, "tcp", SYN, IF_A)]
    assert watcher.stats()["received"] == 2  # the old port no longer passes the kernel filter


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(("-4", A4), KNOCK_SEQUENCE_V4, id="v4"),
        pytest.param(("-6", A6), KNOCK_SEQUENCE_V6, id="v6"),
    ],
)
def test_real_knock_client_is_seen(
    watcher: Watcher, argv: tuple[str, str], expected: list[Event]
) -> None:
    knock(*argv, "7000", "8000:udp", "9000")
    assert watcher.wait_events(3) == expected
    assert watcher.quiet() == expected  # one packet per knock, nothing else (no RST, no retry)
    stats = watcher.stats()
    assert stats["received"] == stats["parsed"] == stats["kernel_packets"] == 3
    assert stats["kernel_drops"] == 0


@pytest.mark.parametrize(
    ("host", "family", "expected"),
    [
        pytest.param(A4, 0, KNOCK_SEQUENCE_V4, id="v4"),
        pytest.param(A6, 0, KNOCK_SEQUENCE_V6, id="v6"),
        pytest.param(A6, 10, KNOCK_SEQUENCE_V6, id="v6-forced"),
    ],
)
def test_guardian_knock_client_is_seen(
    watcher: Watcher, host: str, family: int, expected: list[Event]
) -> None:
    guardian_knock(host, "7000/tcp", "8000/udp", "9000/tcp", family=family)
    assert watcher.wait_events(3) == expected
    assert watcher.quiet() == expected


def test_other_traffic_never_reaches_userspace(watcher: Watcher) -> None:
    # Neighbouring ports, the right port with the wrong protocol, ICMP, and a fragmented datagram
    # to a knock port (fragments are not knocks): none may pass the kernel filter.
    guardian_knock(A4, "6999/tcp", "7001/tcp", "8999/tcp", "22/tcp", "8000/tcp", "7000/udp")
    guardian_knock(A6, "7001/tcp", "8001/udp", "9000/udp")
    send_echo_request(NS_B, A4)
    send_echo_request(NS_B, A6)
    send_udp(NS_B, A4, 8000, 3000)
    send_udp(NS_B, A6, 8000, 3000)
    assert watcher.quiet() == []
    stats = watcher.stats()
    assert stats["received"] == stats["kernel_packets"] == 0, stats
    # The same watcher still sees a knock: silence was the filter, not a dead socket.
    guardian_knock(A4, "8000/udp")
    assert watcher.wait_events(1) == [(B4, 8000, "udp", 0, IF_A)]
    assert watcher.stats()["received"] == 1


def send_ipv4_with_options(options: bytes, dport: int) -> None:
    """A hand-made IPv4 TCP SYN with IP options (IHL > 5) from gk3-b, through a raw socket."""
    code = (
        "import ipaddress, socket, struct, sys\n"
        "options, dport = bytes.fromhex(sys.argv[1]), int(sys.argv[2])\n"
        "src, dst = (ipaddress.IPv4Address(a).packed for a in sys.argv[3:5])\n"
        "tcp = struct.pack('!HHIIBBHHH', 40000, dport, 1, 0, 0x50, 0x02, 64240, 0, 0)\n"
        "ihl = 5 + len(options) // 4\n"
        "ip = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, ihl * 4 + len(tcp), 1, 0, 64, 6, 0,"
        " src, dst)\n"
        "raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
        "raw.sendto(ip + options + tcp, (sys.argv[4], 0))\n"
    )
    in_ns(NS_B, sys.executable, "-c", code, options.hex(), str(dport), B4, A4)


def test_ipv4_options_are_skipped_by_the_kernel_filter(watcher: Watcher) -> None:
    # The port is read after the options (IHL), never from inside them: 0x1b58 is 7000.
    send_ipv4_with_options(b"\x01\x01\x1b\x58", 22)
    send_ipv4_with_options(b"\x01\x01\x01\x00", 7000)
    assert watcher.wait_events(1) == [(B4, 7000, "tcp", SYN, IF_A)]
    assert watcher.quiet() == [(B4, 7000, "tcp", SYN, IF_A)]
    assert watcher.stats()["received"] == 1


DROP_RULES = f"""
table inet gk3drop {{
    chain input {{
        type filter hook input priority -300; policy accept;
        tcp dport 7000 counter drop
        udp dport 8000 counter drop
    }}
}}
table netdev gk3ingress {{
    chain ingress {{
        type filter hook ingress device "{IF_A}" priority -500; policy accept;
        tcp dport 9000 counter drop
    }}
}}
"""


def _drop_counters() -> list[int]:
    listing = json.loads(in_ns(NS_A, "nft", "-j", "list", "ruleset").stdout)
    return [
        expr["counter"]["packets"]
        for item in listing["nftables"]
        if "rule" in item
        for expr in item["rule"]["expr"]
        if "counter" in expr
    ]


def test_knocks_dropped_by_nftables_are_seen(watcher: Watcher) -> None:
    run("ip", "netns", "exec", NS_A, "nft", "-f", "-", stdin=DROP_RULES)
    try:
        knock("-4", A4, "7000", "8000:udp", "9000")
        knock("-6", A6, "7000", "8000:udp", "9000")
        assert watcher.wait_events(6) == KNOCK_SEQUENCE_V4 + KNOCK_SEQUENCE_V6
        assert _drop_counters() == [2, 2, 2]  # input: 7000, 8000; ingress: 9000 — all dropped
    finally:
        in_ns(NS_A, "nft", "delete", "table", "inet", "gk3drop", check=False)
        in_ns(NS_A, "nft", "delete", "table", "netdev", "gk3ingress", check=False)


def test_interface_down_up_and_recreated_does_not_stop_the_watcher(watcher: Watcher) -> None:
    try:
        _down_up_and_recreate(watcher)
    finally:  # leave a working link for the tests after this one, whatever happened
        if run("ip", "-n", NS_A, "link", "show", IF_A, check=False).returncode != 0:
            make_link()
        run("ip", "-n", NS_A, "link", "set", IF_A, "up")


def _down_up_and_recreate(watcher: Watcher) -> None:
    knock("-4", A4, "7000")
    assert watcher.wait_events(1) == [(B4, 7000, "tcp", SYN, IF_A)]

    run("ip", "-n", NS_A, "link", "set", IF_A, "down")
    assert len(watcher.quiet()) == 1  # nothing spurious; the child is still answering:
    assert watcher.stats()["received"] == 1
    run("ip", "-n", NS_A, "link", "set", IF_A, "up")
    knock("-4", A4, "9000")
    assert watcher.wait_events(2)[1:] == [(B4, 9000, "tcp", SYN, IF_A)]

    run("ip", "-n", NS_A, "link", "del", IF_A)  # both ends vanish
    assert len(watcher.quiet()) == 2
    assert watcher.stats()["received"] == 2
    make_link()  # a new interface appears (a new ifindex) under the same name
    knock("-4", A4, "8000:udp")
    knock("-6", A6, "7000")
    assert watcher.wait_events(4)[2:] == [(B4, 8000, "udp", 0, IF_A), (B6, 7000, "tcp", SYN, IF_A)]


@pytest.mark.parametrize(
    ("interfaces", "seen"),
    [pytest.param((IF_A,), True, id="listed"), pytest.param(("lo", "eth9"), False, id="other")],
)
def test_interface_restriction(gk3_lab: None, interfaces: tuple[str, ...], seen: bool) -> None:
    child = Watcher(interfaces)
    try:
        knock("-4", A4, "7000")
        if seen:
            assert child.wait_events(1) == [(B4, 7000, "tcp", SYN, IF_A)]
        else:
            assert child.quiet() == []
        stats = child.stats()
        assert stats["received"] == 1
        assert stats["ignored_interface"] == (0 if seen else 1)
    finally:
        child.close()
