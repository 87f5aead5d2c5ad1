# Acceptance tests of the foundation (issue 2, "Must show") for configuration, against the real
# product in the network-namespace lab: a broken config is refused naming file and line before the
# firewall is touched (ruleset byte-identical, with and without a table already there); SIGHUP
# applies a valid config whole, refuses an invalid one and keeps the old one working; a knockd.conf
# converted by `guardian import knockd` runs and works with Debian's `knock` client. One lab per
# module; each test leaves the server as it found it (daemons killed, ruleset and conntrack
# flushed).
from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from guardian.lab import GuardianHandle, Lab, knock, set_elements, try_ssh
from guardian.lab.guardian_proc import LabServer
from guardian.lab.nft import ruleset_text, table_exists

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 15.0  # a refused config exits at once; a daemon that does not is killed after this
GRANT_WAIT = 3.0
NO_GRANT_WAIT = 0.7
POLL = 0.05

OPEN = ("7000/tcp", "8000/tcp", "9000/udp")
CLOSE = ("9000/tcp", "8000/tcp", "7000/tcp")
NEW_OPEN = ("7100/tcp", "8100/tcp", "9100/udp")
NEW_CLOSE = ("9100/tcp", "8100/tcp", "7100/tcp")

HOST_FIREWALL = """\
table inet hostfw {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        tcp dport != 22 ct state new drop
    }
}
"""


def toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def config_text(sequence: Sequence[str] = OPEN, close: Sequence[str] = CLOSE) -> str:
    return f"""\
[guard]
ports = [22]
trusted = []
answer = "reset"

[access]
window = "30s"

[[door]]
name = "ssh"
sequence = {toml_list(sequence)}
timeout = "5s"
tcp_flags = "syn"
close = {toml_list(close)}
"""


GOOD = config_text()
SECOND_DOOR = '\n[[door]]\nname = "other"\nsequence = ["7000/tcp", "8000/tcp", "9000/udp"]\n'


def _broken(old: str, new: str, text: str = GOOD) -> str:
    assert old in text
    return text.replace(old, new, 1)


# name -> (config text, text of the offending line, the key the message must name)
BROKEN: dict[str, tuple[str, str, str]] = {
    "syntax": (_broken('window = "30s"', 'window = "30s'), 'window = "30s', "window"),
    "unknown-key": (
        _broken('answer = "reset"', 'answer = "reset"\ncolour = "blue"'),
        'colour = "blue"',
        "colour",
    ),
    "wrong-type": (_broken('timeout = "5s"', "timeout = 5"), "timeout = 5", "timeout"),
    "port-out-of-range": (
        _broken("ports = [22]", "ports = [22, 70000]"),
        "ports = [22, 70000]",
        "ports",
    ),
    "sequence-uses-guarded-port": (
        _broken('"8000/tcp", "9000/udp"]', '"22/tcp", "9000/udp"]'),
        'sequence = ["7000/tcp", "22/tcp", "9000/udp"]',
        "sequence",
    ),
    "two-doors-same-sequence": (GOOD + SECOND_DOOR, SECOND_DOOR.splitlines()[-1], "sequence"),
}


def line_of(text: str, line: str) -> int:
    """1-based number of the last line of `text` equal to `line` (the second door's comes last)."""
    numbers = [n for n, content in enumerate(text.splitlines(), 1) if content == line]
    assert numbers, f"{line!r} not in the config"
    return numbers[-1]


def assert_names_file_line_key(stderr: str, path: Path, line: int, key: str) -> None:
    """stderr holds "PATH:LINE: KEY: REASON" for this file and line, the key naming `key`."""
    found = re.search(rf"{re.escape(str(path))}:(\d+): (\S+): (\S.*)", stderr)
    assert found, f"no '{path}:LINE: KEY: REASON' in: {stderr!r}"
    assert int(found.group(1)) == line, stderr
    assert key in found.group(2), stderr


def guardian_cmd(
    lab: Lab, args: Sequence[str], host: str = "server", timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "guardian", *args]
    try:
        return lab.run(host, argv, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`guardian {' '.join(args)}` still ran after {timeout}s")


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def grants4(lab: Lab) -> dict[str, float | None]:
    return set_elements(lab, "server", "allow4")


def wait_grant(lab: Lab, address: str, timeout: float = GRANT_WAIT) -> bool:
    return wait_for(lambda: address in grants4(lab), timeout)


_NFT_TIME_PART = re.compile(r"(\d+)(ms|d|h|m|s)")
_NFT_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def kernel_expiry(lab: Lab, address: str) -> float:
    """monotonic() at which the kernel drops `address`'s IPv4 grant, from the text listing (ms;
    the JSON one has whole seconds only). The clock is read before nft runs."""
    before = time.monotonic()
    done = lab.run("server", ["nft", "list", "set", "inet", "guardian", "allow4"])
    assert done.returncode == 0, done.stderr
    found = re.search(rf"(?<![\w.]){re.escape(address)} timeout \S+ expires (\w+)", done.stdout)
    assert found, f"no timed element for {address}: {done.stdout}"
    parts = _NFT_TIME_PART.findall(found.group(1))
    assert "".join(n + u for n, u in parts) == found.group(1), found.group(1)
    return before + sum(int(n) * _NFT_UNIT[u] for n, u in parts)


def knock_ok(lab: Lab, host: str, steps: Sequence[str]) -> None:
    done = knock(lab, host, lab.addr("server"), steps)
    assert done.returncode == 0, f"knock failed: {done.stdout} {done.stderr}"


@pytest.fixture
def server(lab_module: Lab) -> Iterator[LabServer]:
    with LabServer(lab_module) as helper:
        yield helper


# -- a broken config touches nothing ---------------------------------------------------------------


# The guardian that ran before the broken config: unlike every broken file (answer "reset", port
# 22, nothing trusted), so that applying any part of a broken file would change the ruleset.
EARLIER = (
    GOOD.replace('answer = "reset"', 'answer = "drop"')
    .replace("ports = [22]", "ports = [22, 2222]")
    .replace("trusted = []", 'trusted = ["198.51.100.0/24", "2001:db8:ffff::/48"]')
)


def prepare_ruleset(server: LabServer, state: str) -> None:
    """'empty': no table at all. 'stopped': a host firewall table and the table a guardian left
    behind when it was stopped (SIGTERM keeps it)."""
    if state == "stopped":
        done = server.lab.run("server", ["nft", "-f", "-"], input=HOST_FIREWALL)
        assert done.returncode == 0, done.stderr
        assert EARLIER != GOOD
        assert server.start(EARLIER).stop() == 0
        assert table_exists(server.lab, "server")


@pytest.mark.parametrize("state", ["empty", "stopped"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_is_refused_and_touches_nothing(
    server: LabServer, case: str, state: str
) -> None:
    lab = server.lab
    text, bad_line, key = BROKEN[case]
    path = lab.workdir / f"broken-{case}-{state}.toml"
    path.write_text(text)
    line = line_of(text, bad_line)
    prepare_ruleset(server, state)
    before = ruleset_text(lab, "server")

    done = guardian_cmd(lab, ["run", "-c", str(path)])
    assert done.returncode != 0
    assert_names_file_line_key(done.stderr, path, line, key)
    assert ruleset_text(lab, "server") == before

    checked = guardian_cmd(lab, ["check", "-c", str(path)])
    assert checked.returncode != 0
    assert_names_file_line_key(checked.stderr, path, line, key)
    assert ruleset_text(lab, "server") == before


def test_check_accepts_the_good_config(server: LabServer) -> None:
    """Control for the broken cases: the same file unbroken is accepted."""
    path = server.lab.workdir / "good.toml"
    path.write_text(GOOD)
    done = guardian_cmd(server.lab, ["check", "-c", str(path)])
    assert done.returncode == 0, done.stderr
    assert 'sequence = ["7000/tcp", "8000/tcp", "9000/udp"]' in done.stdout


# -- SIGHUP ----------------------------------------------------------------------------------------


def reload(guardian: GuardianHandle, text: str, expect: str) -> None:
    """Write `text` over the daemon's config file, SIGHUP it, wait for `expect` in its log."""
    offset = len(guardian.log_text())
    guardian.config_path.write_text(text)
    guardian.hup()
    assert guardian.wait_for_log(expect, timeout=5.0, after=offset), guardian.log_text()[offset:]
    assert guardian.returncode is None, "the daemon exited on SIGHUP"


def test_sighup_applies_a_valid_new_config_and_keeps_grants(server: LabServer) -> None:
    lab = server.lab
    guardian = server.start(GOOD)
    knock_ok(lab, "client", OPEN)
    assert wait_grant(lab, lab.addr("client"))
    expiry = kernel_expiry(lab, lab.addr("client"))

    reload(guardian, config_text(NEW_OPEN, NEW_CLOSE), "reloaded")

    # The existing grant stayed, with its kernel timeout still running (not restarted, not gone).
    assert abs(kernel_expiry(lab, lab.addr("client")) - expiry) < 0.2
    assert try_ssh(lab, "client", lab.addr("server"))
    # The old sequence no longer opens; the new one does.
    knock_ok(lab, "client2", OPEN)
    time.sleep(NO_GRANT_WAIT)
    assert lab.addr("client2") not in grants4(lab)
    knock_ok(lab, "client2", NEW_OPEN)
    assert wait_grant(lab, lab.addr("client2"))
    assert try_ssh(lab, "client2", lab.addr("server"))
    # And the new close sequence closes.
    knock_ok(lab, "client2", NEW_CLOSE)
    assert wait_for(lambda: lab.addr("client2") not in grants4(lab), GRANT_WAIT)


def test_sighup_refuses_an_invalid_config_and_keeps_the_old_one(server: LabServer) -> None:
    lab = server.lab
    guardian = server.start(GOOD)
    before = ruleset_text(lab, "server")
    text, bad_line, _key = BROKEN["port-out-of-range"]

    reload(guardian, text, "reload refused")

    refused = [ln for ln in guardian.log_text().splitlines() if "reload refused" in ln]
    assert f"{guardian.config_path}:{line_of(text, bad_line)}: " in refused[-1]
    assert ruleset_text(lab, "server") == before
    # The old config still works: its door opens, and only for the knocking source.
    knock_ok(lab, "client", OPEN)
    assert wait_grant(lab, lab.addr("client"))
    assert try_ssh(lab, "client", lab.addr("server"))
    assert not try_ssh(lab, "client2", lab.addr("server"))


# -- import knockd ---------------------------------------------------------------------------------

KNOCKD_CONF = """\
[options]
    Interface = eth0

[openSSH]
    sequence    = 7000,8000,9000
    seq_timeout = 5
    command     = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
    tcpflags    = syn

[closeSSH]
    sequence    = 9000,8000,7000
    seq_timeout = 5
    command     = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
    tcpflags    = syn
"""


def test_imported_knockd_conf_runs_and_works(server: LabServer) -> None:
    lab = server.lab
    source = lab.workdir / "knockd.conf"
    source.write_text(KNOCKD_CONF)
    done = guardian_cmd(lab, ["import", "knockd", str(source)])
    assert done.returncode == 0, done.stderr
    # The shell commands cannot be carried over, and it says so rather than dropping them.
    assert "iptables -A INPUT" in done.stderr and "iptables -D INPUT" in done.stderr

    converted = lab.workdir / "imported.toml"
    converted.write_text(done.stdout)
    checked = guardian_cmd(lab, ["check", "-c", str(converted)])
    assert checked.returncode == 0, checked.stderr

    guardian = server.start(done.stdout)
    assert not try_ssh(lab, "client", lab.addr("server"))
    knock_ok(lab, "client", ("7000/tcp", "8000/tcp", "9000/tcp"))
    assert wait_grant(lab, lab.addr("client"))
    assert try_ssh(lab, "client", lab.addr("server"))
    assert not try_ssh(lab, "client2", lab.addr("server"))
    knock_ok(lab, "client", ("9000/tcp", "8000/tcp", "7000/tcp"))
    assert wait_for(lambda: lab.addr("client") not in grants4(lab), GRANT_WAIT)
    assert not try_ssh(lab, "client", lab.addr("server"))
    assert f"grant_closed source={lab.addr('client')}" in guardian.log_text()
