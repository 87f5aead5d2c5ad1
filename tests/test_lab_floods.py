# Floods in the lab (issue 8, item 3), against the product as shipped: `guardian run` in the server
# namespace guarding a real sshd that logs to the machine's journald (require_auth = true), real
# nftables and conntrack, Debian's `knock`, the real `fwknop` client and `ssh`. Three floods, each
# bounded in packets/connections and in time, each measured on the daemon (RSS sampled with psutil
# every 50 ms, CPU time before/after), each with a real client doing the real thing in the middle:
#
# - a spoofed-source knock flood: raw TCP SYNs to the door's first two steps and to decoy ports,
#   from ~18k random sources (198.18.0.0/15, RFC 2544's benchmarking range: the server has no route
#   back, so nothing it answers leaves the lab), built with a raw socket in the attacker's
#   namespace; never the last step (a spoofer who knew the whole sequence would open it for a
#   spoofed source by design: knocks are spoofable). The engine's attempt table sits at its cap.
#   Mid-flood another client knocks with `knock` and logs in with ssh;
# - an SPA garbage flood to UDP 62201 from the same kind of spoofed sources (tests/test_lab_spa.py
#   already sends 10k garbage datagrams from one real source and checks a valid packet *after*;
#   here the sources are spoofed, the valid `fwknop` packet is sent *during* it, and RSS is
#   bounded);
# - a conntrack event storm: tens of thousands of short TCP connections to a guarded port from a
#   busy trusted host (a monitoring system, say; an outsider cannot connect to a guarded port at
#   all), first with the daemon running (a knock + ssh in the middle), then with the daemon stalled
#   (SIGSTOP, as a daemon held up by a slow disk or a swapped-out page would be) until the kernel
#   has dropped events for its netlink socket: ENOBUFS for certain. guardian/watchers/conntrack.py
#   then drains the stale queue, dumps the table and hands the listing on as the new truth. The
#   proof it resynchronised is in what it believes afterwards: a session that *ended* while its
#   events were being dropped is gone, one that *started* then is there, the long one is kept.
#   The kernel's count of dropped events for the daemon's socket (/proc/PID/net/netlink, "Drops")
#   shows ENOBUFS really happened; the engine's `listings` counter shows the resync listing.
#
# Throughout the module, a live authenticated, interactive ssh session from "client" echoes a line
# every 0.2 s: no flood may cut it (issue 8 item 5, "no flood ... ever cuts a live authenticated
# session").
#
# Isolation: journald is one per machine, and other labs' sshd lines reach every daemon (lines of an
# sshd that has exited cannot be told apart by namespace). The clients therefore use 198.51.100.x
# addresses no other lab uses (their 192.0.2.x address is removed); bans are off ([ban] enabled =
# false): another lab's brute force must not ban anything here, and no flood here is a ban matter.
#
# Numbers (the 2-core development machine, other test runs sharing it; each test prints its own,
# run with -s): knock flood 40k packets in 5 s: RSS +4-5 MiB (~38 -> 43 MiB), CPU 1.2-1.7 s
# (30-42 µs/packet), attempts at the cap (4096), the valid knock opened in 0.02-0.14 s. SPA garbage
# 20k datagrams in 5 s: RSS +2.4 MiB, CPU 0.8-1.0 s (41-49 µs each), fwknop opened in 0.02-0.11 s.
# Live storm, 20k connections in ~6 s: RSS +2.3 MiB, CPU 2.1 s (~105 µs/connection); the daemon
# falls behind such a storm (it followed 5-9k connections one by one, the kernel dropped 5-8k
# events, 3-4 resync listings), and the login in the middle worked. Stall: ~3,000 connections
# overflow the socket; 2-6k events dropped; resynchronised within a second of SIGCONT.
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from guardian.config import MAX_ATTEMPTS
from guardian.control_client import request
from guardian.lab import GuardianHandle, Lab, knock, set_elements, ssh_argv, start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.nft import flush_ruleset
from guardian.lab.sshd import SshdHandle, start_sshd
from tests.conftest import require_root, save_artifacts

pytestmark = pytest.mark.lab

PREFIX = "gfld"
HOSTS = ("server", "client", "client2", "attacker", "busy")
SERVER = "198.51.100.200"  # an extra address on the server; the clients reach it on-link
CLIENT = "198.51.100.201"  # holds the live session for the whole module
CLIENT2 = "198.51.100.202"  # knocks / sends SPA / logs in, in the middle of each flood
BUSY = "198.51.100.203"  # trusted: the source of the conntrack storm
PREFIXLEN = 24
STORM_PORT = 2222  # a guarded port where a trivial listener accepts and closes
SPA_PORT = 62201
OPEN = ("7000/tcp", "8000/tcp", "9000/udp")
KEY_B64 = base64.b64encode(bytes(range(100, 132))).decode()
HMAC_B64 = base64.b64encode(bytes(range(64))).decode()

GRANT_WAIT = 5.0  # a valid knock / SPA packet shows up as a grant within this, even mid-flood
STATE_WAIT = 8.0  # the daemon's view catches up within this (after a flood, after a stall)
TICK = 0.2  # the live session echoes a line this often
ALIVE_WAIT = 5.0  # a live session echoes a fresh line within this, even mid-flood

# Flood sizes: bounded in count and in time (the senders stop at whichever comes first).
KNOCK_FLOOD = 40_000  # packets, at KNOCK_RATE: 5 s
KNOCK_RATE = 8_000  # packets/s: well within one core of the daemon (~30-40 µs/packet)
SPA_FLOOD = 20_000
SPA_RATE = 4_000  # each garbage datagram of the right shape costs an HMAC
STORM_CONNECTIONS = 20_000  # live storm: short connections, as fast as one core opens them
STORM_SECONDS = 8.0
STALL_BATCH = 1_000  # connections per batch while the daemon is stopped
STALL_BATCHES = 20  # at most; ~3,000-4,000 overflow the 16 MiB receive buffer (measured)
STALL_LIMIT = 20.0  # seconds the daemon may stay stopped (well under the 60 s lease)

# Bounds. RSS: the engine caps knock attempts (MAX_ATTEMPTS, LRU), SPA refusals keep nothing per
# source, and conntrack connections are tracked only while open; what a flood may add is the
# allocator's working set (measured: +2-5 MiB over a ~40 MiB daemon). CPU: per flood unit, with
# ~4x headroom over what was measured on a loaded 2-core machine.
RSS_GROWTH = 24 << 20  # bytes the peak RSS may exceed the RSS before the flood
CPU_PER_KNOCK_PACKET = 150e-6  # measured 30-42 µs
CPU_PER_SPA_PACKET = 250e-6  # measured 41-49 µs (an HMAC for every well-shaped datagram)
CPU_PER_CONNECTION = 600e-6  # measured ~105-140 µs (several events per connection, dumps)
# Notice lines are rate-limited per kind (guardian/notices.py: burst 20, then 5 per second).
LOG_BURST, LOG_RATE = 20, 5.0

# -- scripts run inside the lab hosts (stdlib only) ------------------------------------------------

# Raw IPv4 packets with spoofed sources from 198.18.0.0/15. Checksums are computed (the kernel does
# not fill them in for IPPROTO_RAW); UDP checksum 0 means "none" over IPv4. Stops after `count`
# packets or `seconds` (+2 s if the machine cannot keep the pace), whichever comes first.
FLOODER = r"""
import json, random, socket, struct, sys, time
mode, target = sys.argv[1], sys.argv[2]
count, rate, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rng = random.Random(int(sys.argv[6]))
dst = socket.inet_aton(target)
BASE, SIZE = struct.unpack("!I", socket.inet_aton("198.18.0.0"))[0], 1 << 17

def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

def ip(src, proto, payload):
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), rng.getrandbits(16), 0, 64,
                       proto, 0, src, dst)
    return head[:10] + struct.pack("!H", csum(head)) + head[12:] + payload

def syn(src, dport):
    tcp = struct.pack("!HHIIBBHHH", rng.randrange(1024, 65535), dport, rng.getrandbits(32), 0,
                      5 << 4, 0x02, 1024, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    return ip(src, 6, tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:])

def udp(src, dport, payload):
    head = struct.pack("!HHHH", rng.randrange(1024, 65535), dport, 8 + len(payload), 0)
    return ip(src, 17, head + payload)

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
def garbage(i):
    kind = i % 3
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 1400))
    if kind == 1:  # oversized for SPA, still one packet
        return bytes(rng.choice(ALPHABET) for _ in range(rng.randrange(600, 1400)))
    return bytes(rng.choice(ALPHABET) for _ in range(rng.randrange(180, 300)))  # SPA-shaped

packets = []
for i in range(min(count, 20000)):
    src = struct.pack("!I", BASE + rng.randrange(1, SIZE - 1))
    if mode == "knock":
        # Mostly the first step (it fills the attempt table), some second steps and decoys;
        # never the last step: a spoofer who knew the whole sequence would open it by design.
        port, proto = rng.choice([(7000, 6)] * 6 + [(8000, 6), (8000, 6), (7003, 6), (8998, 6)])
        packets.append(syn(src, port) if proto == 6 else udp(src, port, b""))
    else:
        packets.append(udp(src, int(sys.argv[7]), garbage(i)))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
print("ready", flush=True)
sent = errors = 0
start = time.perf_counter()
while sent < count and time.perf_counter() - start < seconds + 2:
    due = min(count, int((time.perf_counter() - start + 0.01) * rate))
    while sent < due:
        try:
            raw.sendto(packets[sent % len(packets)], (target, 0))
        except OSError:
            errors += 1  # a full queue drops the packet: what a flood does
        sent += 1
    time.sleep(0.005)
took = round(time.perf_counter() - start, 3)
print(json.dumps({"sent": sent, "errors": errors, "seconds": took}))
"""

LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
"""

# Short connections to a guarded port, one after the other: connect, then close with a reset
# (SO_LINGER 0). Each is a handful of conntrack events (NEW, SYN_RECV, ESTABLISHED, CLOSE). Why
# a reset: a FIN close leaves the busy host's sockets in TIME_WAIT, and after ~15k of them its
# ephemeral-port search makes each further connect take ~10 ms (measured): a lab artifact that
# would slow every later storm. Bounded in count, time and errors.
STORM = """
import json, socket, struct, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
RESET = struct.pack("ii", 1, 0)
print("ready", flush=True)
done = errors = 0
ports = set()  # source ports used: fewer than connections means 4-tuples were reused
start = time.monotonic()
while done < count and time.monotonic() - start < seconds and errors < 100:
    s = socket.socket()
    try:
        s.connect((host, port))
        done += 1
        ports.add(s.getsockname()[1])
    except OSError:
        errors += 1
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        s.close()
took = round(time.monotonic() - start, 3)
print(json.dumps({"connections": done, "errors": errors, "seconds": took, "ports": len(ports)}))
"""

# The remote command of an interactive session: its address and port first, then an echo.
ECHO = ["sh", "-c", "'echo up $SSH_CLIENT; exec cat'"]


# -- the lab ---------------------------------------------------------------------------------------


def config_text(lab: Lab) -> str:
    key = lab.workdir / "alice.key"
    hmac = lab.workdir / "alice.hmac"
    for path, content in ((key, KEY_B64), (hmac, HMAC_B64)):
        path.write_text(content + "\n")
        os.chmod(path, 0o600)
    return f"""\
[guard]
ports = [22, {STORM_PORT}]
trusted = ["{BUSY}/32"]
answer = "reset"

[access]
window = "30s"
linger = "1s"
lease = "60s"  # longer than any stall below: the kernel keeps the grants meanwhile
require_auth = true
login_grace_time = "10s"

[[door]]
name = "ssh"
sequence = {json.dumps(list(OPEN))}
timeout = "5s"
tcp_flags = "syn"

[ban]
enabled = false

[spa]
port = {SPA_PORT}

[[spa.stanza]]
name = "alice"
key_base64_file = "{key}"
hmac_key_base64_file = "{hmac}"
"""


def _ip(argv: Sequence[str]) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"ip {' '.join(argv)}: {done.stderr}"


def readdress(lab: Lab) -> None:
    """The server gets SERVER beside its own address; each client only its own 198.51.100.x."""
    _ip(["-n", lab.ns("server"), "addr", "add", f"{SERVER}/{PREFIXLEN}", "dev", "eth0"])
    for host, address in (("client", CLIENT), ("client2", CLIENT2), ("busy", BUSY)):
        _ip(["-n", lab.ns(host), "-4", "addr", "flush", "dev", "eth0"])
        _ip(["-n", lab.ns(host), "addr", "add", f"{address}/{PREFIXLEN}", "dev", "eth0"])


class Echo:
    """An interactive ssh session running `cat`: a thread writes "ping N" every TICK seconds (at
    most 3000), another reads the echoes. Alive means an echo of a fresh line came back: a session
    whose packets from the client were dropped (a ban) stops echoing at once, even though the
    server could still send; a one-way ticker would not see that."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.first = ""
        self.echoes = 0
        self._up = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("up "):
                self.first = line
                self._up.set()
            elif line.startswith("ping "):
                self.echoes += 1

    def _write(self) -> None:
        assert self.proc.stdin is not None
        for n in range(3000):
            if self._stop.wait(TICK) or self.proc.poll() is not None:
                return
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(f"ping {n}\n".encode())
                self.proc.stdin.flush()

    def wait_up(self, address: str, timeout: float = 15.0) -> None:
        assert self._up.wait(timeout), "the ssh session never started"
        assert self.first.split()[1] == address, self.first

    @property
    def sport(self) -> int:
        return int(self.first.split()[2])  # "up ADDR PORT 22"

    def logout(self) -> None:
        """End the client (its socket closes: FIN), and wait for it (bounded)."""
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def assert_alive(self, label: str) -> None:
        """Still running, and an echo of a fresh line arrived after this call (bounded wait)."""
        before = self.echoes
        deadline = time.monotonic() + ALIVE_WAIT
        while self.echoes == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.proc.poll() is None, f"{label}: the live session ended ({self.proc.returncode})"
        assert self.echoes > before, f"{label}: the live session stopped echoing"


@dataclass
class FloodLab:
    lab: Lab
    sshd: SshdHandle
    guardian: GuardianHandle
    live: Echo | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def popen(self, host: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        proc = self.lab.popen(host, argv, stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def session(self) -> Echo:
        """An interactive session from client (its grant is in the kernel)."""
        argv = ssh_argv(self.sshd, SERVER, ECHO, ("-o", "ConnectTimeout=3"))
        proc = self.lab.popen("client", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        echo = Echo(proc)
        echo.wait_up(CLIENT)
        return echo

    @property
    def echo(self) -> Echo:
        assert self.live is not None
        return self.live


@pytest.fixture(scope="module")
def flab(request: pytest.FixtureRequest) -> Iterator[FloodLab]:
    require_root()
    journald = ensure_journald()
    assert journald.syslog_to_journal, "/dev/log does not reach journald: sshd's lines are lost"
    lab = Lab(hosts=HOSTS, prefix=PREFIX)
    failed_before = request.session.testsfailed
    env: FloodLab | None = None
    try:
        lab.start()
        readdress(lab)
        sshd = start_sshd(lab, log_to_stderr=False)
        lab.popen("server", [sys.executable, "-I", "-S", "-c", LISTENER, str(STORM_PORT)])
        guardian = start_guardian(lab, config_text(lab))
        assert_knock_opens(lab, "client", guardian)
        env = FloodLab(lab, sshd, guardian)
        env.live = env.session()
        env.echo.assert_alive("right after login")
        wait_sessions(env, CLIENT, {env.echo.sport})
        yield env
        env.echo.assert_alive("at the end of the module")
    finally:
        if request.session.testsfailed != failed_before:
            print(f"lab artifacts kept in {save_artifacts(lab, 'lab_floods')}")
        if env is not None:
            for proc in env.procs:
                if proc.poll() is None:
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            env.guardian.kill()
        with contextlib.suppress(Exception):
            flush_ruleset(lab, "server")
        lab.close()


@pytest.fixture
def env(flab: FloodLab) -> Iterator[FloodLab]:
    """Each test starts with client2 holding no grant and the daemon alive; it ends the same way."""
    assert flab.guardian.returncode is None, flab.guardian.log_text()[-3000:]
    assert wait_for(lambda: not granted(flab.lab, CLIENT2), 10.0), "client2's grant never closed"
    yield flab
    assert flab.guardian.returncode is None, "the daemon died: " + flab.guardian.log_text()[-3000:]
    flab.echo.assert_alive("after the test")


# -- observing -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def granted(lab: Lab, address: str) -> bool:
    return address in set_elements(lab, "server", "allow4")


def snapshot(env: FloodLab) -> dict[str, Any]:
    reply = request(str(env.guardian.socket_path), {"cmd": "snapshot"}, timeout=10.0)
    doc: dict[str, Any] = reply["snapshot"]
    return doc


def status_json(env: FloodLab) -> dict[str, Any]:
    """`guardian status --json`, the operator's view, run in the server namespace."""
    argv = [
        sys.executable,
        "-m",
        "guardian",
        "status",
        "--json",
        "-s",
        str(env.guardian.socket_path),
    ]
    done = env.lab.run("server", argv, timeout=30)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def sessions_of(env: FloodLab, address: str) -> set[int]:
    """Source ports of the connections the daemon tracks for `address`."""
    return {s["sport"] for s in snapshot(env)["sessions"] or () if s["source"] == address}


def wait_sessions(env: FloodLab, address: str, ports: set[int]) -> None:
    seen: list[set[int]] = []

    def reached() -> bool:
        seen.append(sessions_of(env, address))
        return seen[-1] == ports

    assert wait_for(reached, STATE_WAIT, 0.1), (
        f"the daemon tracks {seen[-1]} for {address}, not {ports}\n"
        + env.guardian.log_text()[-3000:]
    )


def assert_knock_opens(lab: Lab, host: str, guardian: GuardianHandle) -> float:
    """Debian's `knock` from `host`; the grant appears within GRANT_WAIT. Seconds it took."""
    address = {"client": CLIENT, "client2": CLIENT2}[host]
    started = time.monotonic()
    done = knock(lab, host, SERVER, OPEN)
    assert done.returncode == 0, f"knock failed: {done.stdout} {done.stderr}"
    assert wait_for(lambda: granted(lab, address), GRANT_WAIT), (
        f"no grant for {address}:\n" + guardian.log_text()[-3000:]
    )
    return time.monotonic() - started


def ssh_ok(env: FloodLab, host: str, command: Sequence[str] = ("true",)) -> bool:
    argv = ssh_argv(env.sshd, SERVER, command, ("-o", "ConnectTimeout=5"))
    try:
        return env.lab.run(host, argv, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Usage:
    rss_before: int
    rss_peak: int = 0
    rss_after: int = 0
    cpu: float = 0.0
    wall: float = 0.0
    samples: int = 0

    def line(self) -> str:
        mb = 1 << 20
        return (
            f"RSS {self.rss_before / mb:.1f} -> peak {self.rss_peak / mb:.1f} -> "
            f"{self.rss_after / mb:.1f} MiB ({self.samples} samples), CPU {self.cpu:.2f} s "
            f"over {self.wall:.1f} s"
        )


@contextlib.contextmanager
def measured(pid: int, limit: float = 60.0) -> Iterator[Usage]:
    """The daemon's RSS (sampled every 50 ms by a thread, bounded by `limit` s) and CPU time."""
    process = psutil.Process(pid)
    usage = Usage(process.memory_info().rss)
    usage.rss_peak = usage.rss_before
    cpu_before = sum(process.cpu_times()[:2])
    started = time.monotonic()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set() and time.monotonic() - started < limit:
            with contextlib.suppress(psutil.Error):
                usage.rss_peak = max(usage.rss_peak, process.memory_info().rss)
                usage.samples += 1
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join(timeout=5)
        usage.cpu = sum(process.cpu_times()[:2]) - cpu_before
        usage.rss_after = process.memory_info().rss
        usage.rss_peak = max(usage.rss_peak, usage.rss_after)
        usage.wall = time.monotonic() - started


def finish(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The JSON summary a flood/storm script prints last (it stops by itself; bounded wait)."""
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"no summary from the sender: {out!r}"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """The sender has built its packets and is about to send (its first line)."""
    stdout = proc.stdout
    assert stdout is not None
    ready: list[bytes] = []
    reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert ready and ready[0].strip() == b"ready", f"the sender did not start: {ready}"


NOTICE = re.compile(r"guardian: \w+ (\w+) ")


def notice_lines(log: str) -> Counter[str]:
    return Counter(m[1] for m in NOTICE.finditer(log))


def assert_log_bounded(before: str, after: str, seconds: float) -> Counter[str]:
    """Per notice kind, no more lines than the rate limiter lets through in `seconds`."""
    grown = notice_lines(after[len(before) :])
    allowed = LOG_BURST + LOG_RATE * (seconds + 1.0)
    assert all(n <= allowed for n in grown.values()), (grown, allowed)
    return grown


def counter_delta(after: dict[str, Any], before: dict[str, Any], *names: str) -> int:
    return sum(int(after["counters"].get(n, 0)) - int(before["counters"].get(n, 0)) for n in names)


def counters_changed(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    """Every numeric counter that moved between two snapshots, and by how much."""
    moved = {}
    for name, value in after["counters"].items():
        if isinstance(value, int) and value != before["counters"].get(name, 0):
            moved[name] = value - int(before["counters"].get(name, 0))
    return moved


def settled(env: FloodLab, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """A snapshot once `done(snapshot)` holds, or the last one after STATE_WAIT: the daemon may
    still be working through its queues, and a snapshot may be 0.25 s old (control.py's cache)."""
    deadline = time.monotonic() + STATE_WAIT
    doc = snapshot(env)
    while not done(doc) and time.monotonic() < deadline:
        time.sleep(0.1)
        doc = snapshot(env)
    return doc


# -- the floods ------------------------------------------------------------------------------------


def test_spoofed_knock_flood_memory_and_cpu_bounded_and_a_real_knock_opens_mid_flood(
    env: FloodLab,
) -> None:
    lab, guardian = env.lab, env.guardian
    before, log_before = snapshot(env), guardian.log_text()
    target = lab.addr("server")
    seconds = KNOCK_FLOOD / KNOCK_RATE
    argv = [sys.executable, "-I", "-S", "-c", FLOODER, "knock", target]
    argv += [str(KNOCK_FLOOD), str(KNOCK_RATE), str(seconds), "8"]
    flood = env.popen("attacker", argv)
    wait_ready(flood)
    with measured(guardian.pid) as usage:
        time.sleep(seconds / 2)
        attempts_mid = snapshot(env)["gauges"]["attempts"]
        opened = assert_knock_opens(lab, "client2", guardian)
        logged_in = ssh_ok(env, "client2")
        summary = finish(flood, seconds + 20)
        after = settled(
            env,
            lambda doc: (
                counter_delta(doc, before, "knock_received", "knock_kernel_drops")
                >= 0.9 * summary["sent"]
            ),
        )
    print(
        f"\nspoofed knock flood: {summary}; {usage.line()}; attempts in progress mid-flood "
        f"{attempts_mid:.0f} (cap {MAX_ATTEMPTS}); valid knock opened in {opened:.2f} s"
    )
    assert logged_in, "ssh from client2 failed after its knock opened"
    # The flood reached the daemon: its capture socket got (or the kernel dropped, counted) it.
    reached = counter_delta(after, before, "knock_received", "knock_kernel_drops")
    assert reached >= 0.9 * summary["sent"], (reached, summary, after["counters"])
    assert 1000 < attempts_mid <= MAX_ATTEMPTS, attempts_mid  # pressed on the cap, never past it
    assert after["gauges"]["attempts"] <= MAX_ATTEMPTS
    assert after["gauges"]["python_blocks"] > 10_000  # the daemon's own gauge (a live process)
    assert {g["source"] for g in after["grants"]} <= {CLIENT, CLIENT2}, after["grants"]
    assert usage.rss_peak - usage.rss_before <= RSS_GROWTH, usage.line()
    assert usage.cpu <= summary["sent"] * CPU_PER_KNOCK_PACKET, usage.line()
    print(f"notice lines: {dict(assert_log_bounded(log_before, guardian.log_text(), usage.wall))}")


def fwknop(lab: Lab, host: str) -> None:
    """The real fwknop client: HMAC-SHA256 stanza "alice", -s (grant the packet's source)."""
    home = lab.workdir / f"home-{host}"
    home.mkdir(exist_ok=True)
    argv = ["fwknop", "--no-save-args", "-A", "tcp/22", "-s", "-p", str(SPA_PORT), "-D", SERVER]
    argv += ["--key-base64-rijndael", KEY_B64, "--key-base64-hmac", HMAC_B64, "--use-hmac"]
    run_env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = lab.run(host, argv, env=run_env, timeout=20)
    assert done.returncode == 0, f"fwknop failed: {done.stdout}{done.stderr}"


def test_spoofed_spa_garbage_flood_bounded_and_a_real_fwknop_packet_opens_mid_flood(
    env: FloodLab,
) -> None:
    lab, guardian = env.lab, env.guardian
    before, log_before = snapshot(env), guardian.log_text()
    seconds = SPA_FLOOD / SPA_RATE
    argv = [sys.executable, "-I", "-S", "-c", FLOODER, "spa", lab.addr("server")]
    argv += [str(SPA_FLOOD), str(SPA_RATE), str(seconds), "9", str(SPA_PORT)]
    flood = env.popen("attacker", argv)
    wait_ready(flood)
    with measured(guardian.pid) as usage:
        time.sleep(seconds / 2)
        started = time.monotonic()
        fwknop(lab, "client2")
        opened = wait_for(lambda: granted(lab, CLIENT2), GRANT_WAIT)
        took = time.monotonic() - started
        logged_in = opened and ssh_ok(env, "client2")
        summary = finish(flood, seconds + 20)
        after = settled(
            env,
            lambda doc: (
                counter_delta(doc, before, "spa_refused", "knock_kernel_drops")
                >= 0.9 * summary["sent"]
                and counter_delta(doc, before, "spa_accepted") >= 1
            ),
        )
    print(f"\nspoofed SPA garbage flood: {summary}; {usage.line()}; fwknop opened in {took:.2f} s")
    assert opened, (
        "the valid SPA packet sent mid-flood opened nothing:\n" + guardian.log_text()[-3000:]
    )
    assert logged_in, "ssh from client2 failed after its SPA packet opened"
    assert counter_delta(after, before, "spa_accepted") == 1, after["counters"]
    reached = counter_delta(after, before, "spa_refused", "knock_kernel_drops")
    assert reached >= 0.9 * summary["sent"], (reached, summary, after["counters"])
    assert {g["source"] for g in after["grants"]} <= {CLIENT, CLIENT2}, after["grants"]
    assert usage.rss_peak - usage.rss_before <= RSS_GROWTH, usage.line()
    assert usage.cpu <= summary["sent"] * CPU_PER_SPA_PACKET, usage.line()
    print(f"notice lines: {dict(assert_log_bounded(log_before, guardian.log_text(), usage.wall))}")


def storm(env: FloodLab, count: int, seconds: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-I", "-S", "-c", STORM, SERVER, str(STORM_PORT), str(count)]
    proc = env.popen("busy", [*argv, str(seconds)])
    wait_ready(proc)
    return proc


def test_conntrack_storm_cpu_and_memory_bounded_and_a_login_mid_storm_works(
    env: FloodLab,
) -> None:
    lab, guardian = env.lab, env.guardian
    before = snapshot(env)
    drops_before = netlink_drops(guardian.pid)
    proc = storm(env, STORM_CONNECTIONS, STORM_SECONDS)
    with measured(guardian.pid) as usage:
        time.sleep(1.0)
        opened = assert_knock_opens(lab, "client2", guardian)
        logged_in = ssh_ok(env, "client2")
        summary = finish(proc, STORM_SECONDS + 20)
        after = caught_up(env)
        # Caught up: nothing of the storm is left open in the daemon's view.
        assert not sessions_of(env, BUSY), sessions_of(env, BUSY)
    drops = netlink_drops(guardian.pid) - drops_before
    followed = counter_delta(after, before, "connections_opened")
    listings = counter_delta(after, before, "listings") - counter_delta(
        after, before, "socket_polls"
    )
    print(
        f"\nconntrack storm (daemon running): {summary}; {usage.line()}; connections the daemon "
        f"followed one by one {followed}, events the kernel dropped {drops}, resync listings "
        f"{listings}; valid knock opened in {opened:.2f} s"
    )
    assert logged_in, "ssh from client2 failed in the middle of the storm"
    # Its session ended: whatever events were lost, the daemon knows, and the grant closes.
    assert wait_for(lambda: not granted(lab, CLIENT2), STATE_WAIT), snapshot(env)["grants"]
    assert summary["connections"] >= 5_000, summary  # a storm, not a trickle
    # Either every connection was followed, or events were lost and a listing resynchronised.
    # (A second listener with a 256 MiB buffer in the server's namespace saw the kernel report
    # every one of the storm's connections ESTABLISHED, in 4 storms of 20,000.) Should this
    # fail, the counters say where the opens went.
    assert followed >= summary["connections"] or (drops > 0 and listings >= 1), (
        followed,
        drops,
        listings,
        summary,
        counters_changed(after, before),
    )
    assert usage.rss_peak - usage.rss_before <= RSS_GROWTH, usage.line()
    assert usage.cpu <= summary["connections"] * CPU_PER_CONNECTION, usage.line()


# -- ENOBUFS for certain: the daemon stalled while the storm goes on -------------------------------


def netlink_drops(pid: int) -> int:
    """Events the kernel dropped for the daemon's conntrack event socket (receive buffer full:
    what the daemon reads as ENOBUFS), from /proc/PID/net/netlink's "Drops" column."""
    return conntrack_socket_row(pid)[1]


def conntrack_socket_row(pid: int) -> tuple[int, int]:
    """(bytes queued, events dropped) of the daemon's conntrack event socket, from
    /proc/PID/net/netlink's "Rmem" and "Drops" columns."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    rows = []
    for row in Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]:
        cols = row.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; NETLINK_NETFILTER = 12, groups 7
        if int(cols[9]) in inodes and cols[1] == "12" and int(cols[3], 16) == 7:
            rows.append((int(cols[4]), int(cols[8])))
    assert len(rows) == 1, f"expected one conntrack event socket, found {len(rows)}"
    return rows[0]


def caught_up(env: FloodLab) -> dict[str, Any]:
    """A snapshot of the daemon once it has read every conntrack event the storm made: called
    after the storm ended, it waits for the daemon's event socket to be empty (what was read is
    fed to the engine in the same wake-up), then for the snapshot cache (0.25 s) to expire.
    Why not "no session of the storm's source left": at any instant of a storm almost none is
    live, so that holds while thousands of events still wait in the socket (a snapshot taken
    then counted 18,164 of 20,000 connections in session 9's CI; reproduced with paced storms
    the daemon barely keeps up with). Closes keep coming for a while (the kernel destroys
    each reset connection 10 s later), so the socket is not expected to stay empty."""
    deadline = time.monotonic() + STATE_WAIT
    while conntrack_socket_row(env.guardian.pid)[0] > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"events still queued for the daemon after {STATE_WAIT} s")
        time.sleep(0.05)
    time.sleep(0.3)
    return snapshot(env)


@dataclass
class Stall:
    drops: int  # events dropped for the daemon while it was stopped
    connections: int  # storm connections made while it was stopped
    stopped_for: float
    before: dict[str, Any]  # status --json before the stall
    after: dict[str, Any]  # ... and once it had caught up
    kept: int  # the live session's port
    ended: int  # a session that ended while the daemon was stopped
    started: int  # a session that started while the daemon was stopped
    seen_after: set[int]  # client's connections the daemon tracks after catching up
    usage: Usage


@pytest.fixture(scope="module")
def stall(flab: FloodLab) -> Stall:
    """Stop the daemon; while it is stopped, a session of client ends, another starts, and the
    storm runs until the kernel drops events; then let it go on (each step bounded)."""
    env = flab
    guardian = env.guardian
    kept = env.echo.sport
    short = env.session()  # ends while the daemon is stopped
    wait_sessions(env, CLIENT, {kept, short.sport})
    before = status_json(env)
    drops_before = netlink_drops(guardian.pid)
    connections = 0
    with measured(guardian.pid) as usage:
        os.kill(guardian.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            short.logout()
            late = env.session()  # logs in while the daemon is stopped: the grant is in the kernel
            late.assert_alive("the session started while the daemon was stopped")
            for _ in range(STALL_BATCHES):
                summary = finish(storm(env, STALL_BATCH, 10.0), 30.0)
                connections += summary["connections"]
                if netlink_drops(guardian.pid) > drops_before:
                    break
                if time.monotonic() - stopped > STALL_LIMIT:
                    break
        finally:
            stopped_for = time.monotonic() - stopped
            os.kill(guardian.pid, signal.SIGCONT)
        want = {kept, late.sport}
        seen = [sessions_of(env, CLIENT)]
        deadline = time.monotonic() + STATE_WAIT
        while seen[-1] != want and time.monotonic() < deadline:
            time.sleep(0.1)
            seen.append(sessions_of(env, CLIENT))
        after = status_json(env)
    return Stall(
        drops=netlink_drops(guardian.pid) - drops_before,
        connections=connections,
        stopped_for=stopped_for,
        before=before,
        after=after,
        kept=kept,
        ended=short.sport,
        started=late.sport,
        seen_after=seen[-1],
        usage=usage,
    )


def test_enobufs_the_daemon_resynchronises_from_a_dump(flab: FloodLab, stall: Stall) -> None:
    env = flab
    counters = {
        k: counter_delta(stall.after, stall.before, k)
        for k in ("connections_opened", "listings", "socket_polls", "sessions_opened")
    }
    print(
        f"\nstalled {stall.stopped_for:.1f} s: {stall.connections} storm connections, "
        f"{stall.drops} events dropped by the kernel; {stall.usage.line()}; counters {counters}"
    )
    assert stall.drops > 0, "the kernel never dropped an event: no ENOBUFS to survive"
    assert env.guardian.returncode is None
    # What the daemon believes after catching up: the long session is kept, the one that ended
    # while its events were dropped is gone, the one that started then is there.
    assert stall.seen_after == {stall.kept, stall.started}, (
        f"tracked {stall.seen_after}; kept {stall.kept}, ended {stall.ended}, "
        f"started {stall.started}\n" + env.guardian.log_text()[-3000:]
    )
    grant = next(g for g in stall.after["grants"] if g["source"] == CLIENT)
    assert (grant["state"], grant["sessions"]) == ("in_session", 2), grant
    # A listing resynchronised (not a socket-table poll), and the stale queue was not replayed:
    # none of the storm's connections made while stopped were fed in one by one.
    assert counters["listings"] - counters["socket_polls"] >= 1, counters
    assert counters["connections_opened"] < stall.connections / 10, counters
    assert not sessions_of(env, BUSY)
    env.echo.assert_alive("after the stall")
    # And it works as before: a new login from client2 after a knock.
    assert wait_for(lambda: not granted(env.lab, CLIENT2), 10.0)
    assert_knock_opens(env.lab, "client2", env.guardian)
    assert ssh_ok(env, "client2")


def test_status_reports_the_conntrack_overrun(stall: Stall) -> None:
    counters = stall.after["counters"]
    overruns = counters.get("conntrack_overruns", 0) - stall.before["counters"].get(
        "conntrack_overruns", 0
    )
    resyncs = counters.get("conntrack_resyncs", 0) - stall.before["counters"].get(
        "conntrack_resyncs", 0
    )
    assert overruns >= 1 and resyncs >= 1, sorted(counters)
