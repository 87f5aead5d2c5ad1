# Acceptance tests of the foundation (issue 2, "Must show") for knocking, against the real product
# in the network-namespace lab: the real daemon (`guardian run`) guarding a real sshd, probed with
# real nmap, Debian's `knock` client, `guardian knock` and `ssh`. One lab per module; every test
# starts its own daemon and leaves the server as it found it (daemons killed, ruleset and conntrack
# flushed), so the tests do not depend on each other's order. Every wait is bounded, and the
# issue's time bounds (window end, kernel timeouts: ± 1 s) are measured, not assumed.
from __future__ import annotations

import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from guardian.lab import (
    GuardianHandle,
    Lab,
    knock,
    set_elements,
    ssh_argv,
    tcp_connect_result,
)
from guardian.lab.guardian_proc import LabServer
from guardian.lab.nft import table_exists

REPO = Path(__file__).resolve().parents[1]
NmapVerdict = tuple[str, str, str]  # state, reason, TTL of the reply ("" when none came)

OPEN = ("7000/tcp", "8000/tcp", "9000/udp")
CLOSE = ("9000/tcp", "8000/tcp", "7000/tcp")
ALL_TCP = ("7000/tcp", "8000/tcp", "9000/tcp")
UNUSED_PORT = 23  # nothing listens on it in the server namespace
TOLERANCE = 1.0  # the "± 1 s" for window ends and kernel timeouts
POLL = 0.05  # how often an element's disappearance is checked (the brief: every 50 ms)
GRANT_WAIT = 3.0  # a completed knock shows up as a set element well within this
NO_GRANT_WAIT = 0.7  # how long a knock that must not open is given to (wrongly) open anyway
NMAP_FAST = ("--min-rate", "5000", "--max-retries", "0", "-T4", "-n", "-Pn", "-sS")
FULL_SCAN_TIMEOUT = 120.0

# A typical host firewall (the server's own, not the guardian's): new inbound TCP connections are
# dropped on every port but 22, so an unused port reads "filtered" to nmap.
HOST_FIREWALL = """\
table inet hostfw {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        iif "lo" accept
        tcp dport 22 accept
        tcp dport != 22 ct state new drop
    }
}
"""


def toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def config_text(
    *,
    answer: str = "reset",
    window: str = "30s",
    timeout: str = "5s",
    sequence: Sequence[str] = OPEN,
    close: Sequence[str] = CLOSE,
    decoy_band: int | None = None,
) -> str:
    lines = [
        "[guard]",
        "ports = [22]",
        "trusted = []",
        f'answer = "{answer}"',
        "",
        "[access]",
        f'window = "{window}"',
        "",
        "[[door]]",
        'name = "ssh"',
        f"sequence = {toml_list(sequence)}",
        f'timeout = "{timeout}"',
        'tcp_flags = "syn"',
    ]
    if close:
        lines.append(f"close = {toml_list(close)}")
    if decoy_band is not None:
        lines.append(f"decoy_band = {decoy_band}")
    return "\n".join(lines) + "\n"


# -- probes ----------------------------------------------------------------------------------------


def grants4(lab: Lab) -> dict[str, float | None]:
    return set_elements(lab, "server", "allow4")


def grants6(lab: Lab) -> dict[str, float | None]:
    return set_elements(lab, "server", "allow6")


def grants_of(lab: Lab, address: str) -> dict[str, float | None]:
    return grants6(lab) if ":" in address else grants4(lab)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = POLL) -> bool:
    """Poll until predicate() holds; False once `timeout` seconds have passed (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_grant(lab: Lab, address: str, timeout: float = GRANT_WAIT) -> bool:
    return wait_for(lambda: address in grants_of(lab, address), timeout)


def time_of_disappearance(lab: Lab, address: str, timeout: float) -> float | None:
    """monotonic() when `address` is first seen gone from its allow set (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if address not in grants_of(lab, address):
            return time.monotonic()
        time.sleep(POLL)
    return None


_NFT_TIME_PART = re.compile(r"(\d+)(ms|d|h|m|s)")
_NFT_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_nft_time(text: str) -> float:
    """nft's text durations ("5s680ms", "1m2s", "980ms") in seconds."""
    parts = _NFT_TIME_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not an nft time: {text!r}"
    return sum(int(n) * _NFT_UNIT[u] for n, u in parts)


def kernel_expiry(lab: Lab, address: str) -> float:
    """monotonic() at which the kernel will drop `address`'s grant, from its own countdown.

    The text listing has milliseconds (the JSON one whole seconds). The clock is read before nft
    runs, so the estimate is never later than the truth (by at most that one command's time)."""
    name = "allow6" if ":" in address else "allow4"
    before = time.monotonic()
    done = lab.run("server", ["nft", "list", "set", "inet", "guardian", name])
    assert done.returncode == 0, done.stderr
    found = re.search(rf"(?<![\w:.]){re.escape(address)} timeout \S+ expires (\w+)", done.stdout)
    assert found, f"no timed element for {address}: {done.stdout}"
    return before + parse_nft_time(found.group(1))


def knock_ok(lab: Lab, host: str, target: str, steps: Sequence[str]) -> None:
    done = knock(lab, host, target, steps)
    assert done.returncode == 0, f"knock failed: {done.stdout} {done.stderr}"


def ssh_login(lab: Lab, host: str, v: int = 4) -> subprocess.CompletedProcess[str]:
    """ssh with the lab key from `host` to the server; prints the SSH_CLIENT the server saw."""
    assert lab.sshd is not None
    argv = ssh_argv(
        lab.sshd, lab.addr("server", v), ["echo", "$SSH_CLIENT"], ("-o", "ConnectTimeout=2")
    )
    return lab.run(host, argv, timeout=20)


def assert_logs_in(lab: Lab, host: str, v: int = 4) -> None:
    done = ssh_login(lab, host, v)
    assert done.returncode == 0, f"ssh from {host} failed: {done.stderr}"
    # The server saw the connection come from this host's own address: it really was this host.
    assert done.stdout.split()[0] == lab.addr(host, v)


def assert_cannot_connect(lab: Lab, host: str, v: int = 4, *, answer: str = "reset") -> None:
    done = ssh_login(lab, host, v)
    assert done.returncode != 0, f"ssh from {host} logged in: {done.stdout}"
    expected = "refused" if answer == "reset" else "timeout"
    assert tcp_connect_result(lab, host, lab.addr("server", v), 22, timeout=1.0) == expected


def nmap_states(lab: Lab, host: str, v: int, ports: Sequence[int]) -> dict[int, NmapVerdict]:
    """port -> (state, reason, reply TTL) as real nmap reports it, from `host`, in one run."""
    argv = [
        "nmap",
        *NMAP_FAST[4:],  # -n -Pn -sS
        "--max-retries",
        "1",
        "--initial-rtt-timeout",
        "250ms",
        "--max-rtt-timeout",
        "500ms",
        "--host-timeout",
        "20s",
        "-p",
        ",".join(map(str, ports)),
        "-oX",
        "-",
        *(["-6"] if v == 6 else []),
        lab.addr("server", v),
    ]
    done = lab.run(host, argv, timeout=60)
    assert done.returncode == 0, done.stderr
    verdicts: dict[int, NmapVerdict] = {}
    # nmap's own output, produced a moment ago in the lab: not untrusted XML.
    for port in ET.fromstring(done.stdout).iter("port"):  # noqa: S314
        state = port.find("state")
        assert state is not None
        verdicts[int(port.get("portid", "0"))] = (
            state.get("state", ""),
            state.get("reason", ""),
            state.get("reason_ttl", ""),
        )
    assert set(verdicts) == set(ports), f"nmap did not report every port: {done.stdout[-1500:]}"
    return verdicts


def full_scan(lab: Lab, host: str, *, sequential: bool, ports: str = "-") -> float:
    """nmap SYN scan of `ports` (default all 65535) from `host`; returns its duration."""
    argv = ["nmap", *NMAP_FAST, *(["-r"] if sequential else []), f"-p{ports}", "-oX", "-"]
    started = time.monotonic()
    done = lab.run(host, [*argv, lab.addr("server")], timeout=FULL_SCAN_TIMEOUT)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    # The scan really covered the range: every port of it was reported (all closed here).
    assert 'state="closed"' in done.stdout
    return elapsed


# -- fixtures --------------------------------------------------------------------------------------


class Server(LabServer):
    def install_host_firewall(self) -> None:
        done = self.lab.run("server", ["nft", "-f", "-"], input=HOST_FIREWALL)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def server(lab_module: Lab) -> Iterator[Server]:
    with Server(lab_module) as helper:
        yield helper


# -- before a knock: the guarded port looks like an unused one -------------------------------------


@pytest.mark.parametrize("v", [4, 6])
def test_reset_guarded_port_reads_like_unused_port(server: Server, v: int) -> None:
    lab = server.lab
    # Without the guardian nmap sees sshd: the probe can tell an open port from a closed one.
    assert nmap_states(lab, "client", v, [22])[22][0] == "open"
    server.start(config_text(answer="reset"))
    states = nmap_states(lab, "client", v, [22, UNUSED_PORT])
    assert states[22] == states[UNUSED_PORT]
    assert states[22][:2] == ("closed", "reset")
    assert_cannot_connect(lab, "client", v, answer="reset")


@pytest.mark.parametrize("v", [4, 6])
def test_drop_guarded_port_reads_like_unused_port_behind_host_firewall(
    server: Server, v: int
) -> None:
    lab = server.lab
    server.install_host_firewall()
    before = nmap_states(lab, "client", v, [22, UNUSED_PORT])
    assert before[22][0] == "open"
    assert before[UNUSED_PORT][0] == "filtered"
    server.start(config_text(answer="drop"))
    states = nmap_states(lab, "client", v, [22, UNUSED_PORT])
    assert states[22] == states[UNUSED_PORT]
    assert states[22][0] == "filtered"
    assert_cannot_connect(lab, "client", v, answer="drop")
    # And the host firewall does not stand in the way of a grant: a knock still lets ssh in.
    knock_ok(lab, "client", lab.addr("server", v), OPEN)
    assert wait_grant(lab, lab.addr("client", v))
    assert_logs_in(lab, "client", v)


# -- after a knock: that source, and only it, logs in ----------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
def test_knock_client_opens_for_that_source_only(server: Server, v: int) -> None:
    lab = server.lab
    guardian = server.start(config_text())
    knock_ok(lab, "client", lab.addr("server", v), OPEN)
    assert wait_grant(lab, lab.addr("client", v))
    assert_logs_in(lab, "client", v)
    assert_cannot_connect(lab, "client2", v)
    assert list(grants_of(lab, lab.addr("client", v))) == [lab.addr("client", v)]
    assert f"grant_opened source={lab.addr('client', v)} door=ssh" in guardian.log_text()


def guardian_knock(
    lab: Lab, host: str, target: str, args: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "guardian", "knock", *args, target]
    return lab.run(host, argv, timeout=30, cwd=REPO)


@pytest.mark.parametrize(
    ("v", "family"),
    [(4, ()), (4, ("-4",)), (6, ()), (6, ("-6",))],
    ids=["v4", "v4-flag", "v6", "v6-flag"],
)
def test_guardian_knock_opens_for_that_source_only(
    server: Server, v: int, family: tuple[str, ...]
) -> None:
    lab = server.lab
    guardian = server.start(config_text())
    config = ("-c", str(guardian.config_path))
    done = guardian_knock(lab, "client", lab.addr("server", v), [*family, *config])
    assert done.returncode == 0, done.stderr
    assert wait_grant(lab, lab.addr("client", v))
    assert_logs_in(lab, "client", v)
    assert_cannot_connect(lab, "client2", v)
    # Its close sequence closes it again.
    done = guardian_knock(lab, "client", lab.addr("server", v), [*family, "--close", *config])
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: not grants_of(lab, lab.addr("client", v)), GRANT_WAIT)
    assert_cannot_connect(lab, "client", v)


def test_guardian_knock_resolves_a_host_name(server: Server) -> None:
    lab = server.lab
    server.start(config_text())
    # "localhost" is resolved by the client; `iif lo` is let through by the gate anyway, but the
    # knock must still be seen on lo and grant the address it was sent to. Which address the
    # resolver picks depends on /etc/hosts (127.0.0.1 or ::1): the client says which it used.
    done = guardian_knock(lab, "server", "localhost", ["--sequence", ",".join(OPEN)])
    assert done.returncode == 0, done.stderr
    address = done.stdout.split()[1].rstrip(":")
    assert address in ("127.0.0.1", "::1"), done.stdout
    assert wait_grant(lab, address)


def test_guardian_knock_host_name_with_family_flag(server: Server) -> None:
    lab = server.lab
    server.start(config_text())
    done = guardian_knock(lab, "server", "localhost", ["-4", "--sequence", ",".join(OPEN)])
    assert done.returncode == 0, done.stderr
    assert "knocked 127.0.0.1:" in done.stdout
    assert wait_grant(lab, "127.0.0.1")


# -- what must not open ----------------------------------------------------------------------------


def assert_stays_closed(lab: Lab, guardian: GuardianHandle, host: str) -> None:
    time.sleep(NO_GRANT_WAIT)
    assert lab.addr(host) not in grants4(lab)
    assert f"grant_opened source={lab.addr(host)}" not in guardian.log_text()
    assert tcp_connect_result(lab, host, lab.addr("server"), 22, timeout=1.0) == "refused"


def test_wrong_order_does_not_open(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text())
    knock_ok(lab, "client", lab.addr("server"), ("7000/tcp", "9000/udp", "8000/tcp"))
    assert_stays_closed(lab, guardian, "client")
    knock_ok(lab, "client", lab.addr("server"), OPEN)  # the same source, right order: opens
    assert wait_grant(lab, lab.addr("client"))


def test_pause_longer_than_door_timeout_does_not_open(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text(timeout="2s"))
    target = lab.addr("server")
    knock_ok(lab, "client", target, OPEN[:1])
    time.sleep(2.5)
    knock_ok(lab, "client", target, OPEN[1:])
    assert_stays_closed(lab, guardian, "client")
    # The same pause within the timeout opens: it was the pause, nothing else.
    knock_ok(lab, "client", target, OPEN[:1])
    time.sleep(1.0)
    knock_ok(lab, "client", target, OPEN[1:])
    assert wait_grant(lab, lab.addr("client"))


def test_one_retransmitted_knock_still_opens(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text())
    knock_ok(lab, "client", lab.addr("server"), (OPEN[0], *OPEN))
    assert wait_grant(lab, lab.addr("client"))
    assert f"grant_opened source={lab.addr('client')} door=ssh" in guardian.log_text()
    assert_logs_in(lab, "client")


# An all-TCP door with a long timeout: a TCP SYN scan could walk it in order within the timeout if
# nothing stopped it (the control test below shows it does, without decoys).
def scan_config(decoy_band: int | None = None) -> str:
    return config_text(sequence=ALL_TCP, close=(), timeout="60s", decoy_band=decoy_band)


def test_sequential_scan_walks_a_door_without_decoys(server: Server) -> None:
    """Control: without decoys, `nmap -r` over the knock ports opens the door (knock#71), so the
    full-range scans below prove something when they leave the port closed."""
    lab = server.lab
    guardian = server.start(scan_config(decoy_band=0))
    full_scan(lab, "attacker", sequential=True, ports="6990-9010")
    assert wait_grant(lab, lab.addr("attacker"))
    assert f"grant_opened source={lab.addr('attacker')}" in guardian.log_text()


@pytest.mark.parametrize("sequential", [True, False], ids=["nmap-r-p-", "nmap-p-"])
def test_full_range_scan_does_not_open(server: Server, sequential: bool) -> None:
    lab = server.lab
    guardian = server.start(scan_config())
    elapsed = full_scan(lab, "attacker", sequential=sequential)
    print(f"full scan ({'sequential' if sequential else 'random'}) took {elapsed:.1f}s")
    assert_stays_closed(lab, guardian, "attacker")
    # The listener was alive all along: the same attacker's correct knock opens afterwards.
    knock_ok(lab, "attacker", lab.addr("server"), ALL_TCP)
    assert wait_grant(lab, lab.addr("attacker"))


# -- closing ---------------------------------------------------------------------------------------


def test_close_sequence_closes(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text())
    knock_ok(lab, "client", lab.addr("server"), OPEN)
    assert wait_grant(lab, lab.addr("client"))
    assert_logs_in(lab, "client")
    knock_ok(lab, "client", lab.addr("server"), CLOSE)
    assert wait_for(lambda: lab.addr("client") not in grants4(lab), GRANT_WAIT)
    assert_cannot_connect(lab, "client")
    assert f"grant_closed source={lab.addr('client')} door=ssh (close sequence)" in (
        guardian.log_text()
    )


def knock_and_time(lab: Lab, host: str = "client") -> tuple[float, float]:
    """Knock OPEN from `host`; (monotonic before, after) the knock client ran, grant seen."""
    before = time.monotonic()
    knock_ok(lab, host, lab.addr("server"), OPEN)
    after = time.monotonic()
    assert wait_grant(lab, lab.addr(host))
    return before, after


def assert_gone_at(gone: float | None, knocked: tuple[float, float], expected: float) -> None:
    """The element disappeared `expected` s after the knock, ± TOLERANCE (either knock bound)."""
    assert gone is not None, "the grant never disappeared"
    early, late = gone - knocked[1], gone - knocked[0]
    print(f"grant gone {early:.2f}..{late:.2f}s after the knock (expected {expected}s)")
    assert expected - TOLERANCE <= early and late <= expected + TOLERANCE


def assert_gone_at_kernel_expiry(gone: float | None, expiry: float) -> None:
    assert gone is not None, "the grant never disappeared"
    print(f"grant gone {gone - expiry:+.2f}s from the kernel's expiry time")
    assert abs(gone - expiry) <= TOLERANCE


def test_window_without_connection_closes_at_its_end(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text(window="3s"))
    knocked = knock_and_time(lab)
    gone = time_of_disappearance(lab, lab.addr("client"), timeout=3.0 + 3 * TOLERANCE)
    assert_gone_at(gone, knocked, 3.0)
    assert wait_for(
        lambda: (
            f"grant_closed source={lab.addr('client')} door=ssh (window ended)"
            in guardian.log_text()
        ),
        2.0,
    )
    assert_cannot_connect(lab, "client")


def test_kill_9_grant_expires_at_its_kernel_timeout(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text(window="3s"))
    knocked = knock_and_time(lab)
    expiry = kernel_expiry(lab, lab.addr("client"))
    assert guardian.kill() == -9
    gone = time_of_disappearance(lab, lab.addr("client"), timeout=3.0 + 3 * TOLERANCE)
    assert_gone_at(gone, knocked, 3.0)
    assert_gone_at_kernel_expiry(gone, expiry)
    assert table_exists(lab, "server")
    # The gate is still in force without its daemon: the port is closed to the client again.
    assert_cannot_connect(lab, "client")


def test_sigterm_exits_0_and_leaves_table_and_grants(server: Server) -> None:
    lab = server.lab
    guardian = server.start(config_text(window="4s"))
    knocked = knock_and_time(lab)
    expiry = kernel_expiry(lab, lab.addr("client"))
    assert guardian.stop(timeout=5.0) == 0
    assert table_exists(lab, "server")
    remaining = grants4(lab).get(lab.addr("client"))
    assert remaining is not None and 0 < remaining <= 4  # still there, with its timeout running
    assert_logs_in(lab, "client")  # the grant still works without the daemon
    gone = time_of_disappearance(lab, lab.addr("client"), timeout=4.0 + 3 * TOLERANCE)
    assert_gone_at(gone, knocked, 4.0)
    assert_gone_at_kernel_expiry(gone, expiry)


def test_restart_adopts_a_grant_and_keeps_its_expiry(server: Server) -> None:
    lab = server.lab
    config = config_text(window="6s")
    first = server.start(config)
    knocked = knock_and_time(lab)
    expiry = kernel_expiry(lab, lab.addr("client"))
    assert first.kill() == -9
    # Restart late enough that a re-added grant (a fresh 6 s) would visibly outlive the original.
    time.sleep(max(0.0, knocked[1] + 2.5 - time.monotonic()))
    second = server.start(config)
    assert "adopted 1 grant(s)" in second.log_text()
    elements = grants4(lab)
    assert list(elements) == [lab.addr("client")]
    left = elements[lab.addr("client")]
    assert left is not None and left <= 6.0 - 2.0  # the kernel's own timer, not a new window
    # Adopted as it was: the kernel's countdown was neither restarted nor changed.
    assert abs(kernel_expiry(lab, lab.addr("client")) - expiry) < 0.2
    gone = time_of_disappearance(lab, lab.addr("client"), timeout=6.0 + 3 * TOLERANCE)
    assert_gone_at(gone, knocked, 6.0)
    assert_gone_at_kernel_expiry(gone, expiry)
    # The new daemon tracked the adopted grant and closed it itself.
    assert wait_for(lambda: f"grant_closed source={lab.addr('client')}" in second.log_text(), 2.0)
