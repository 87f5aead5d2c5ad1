# Acceptance tests of issue 9's everyone door in the network-namespace lab: the real daemon, a real
# sshd, Debian's `knock`, real ssh. A door with open_to = "everyone" opens the guarded port to
# client AND client2 at once; it closes at its window's end (± 1 s) even while a session started
# through it goes on (and that session keeps going); a re-knock never extends it; and it never
# outlives its window across a guardian kill -9 and restart (the kernel holds the time left, the
# new daemon adopts it). Bans still apply while it is open. Every wait is bounded.
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guardian.lab import Lab, knock, set_elements, ssh_argv
from guardian.lab import tcp_connect_result as connect_result
from guardian.lab.guardian_proc import LabServer

REPO = Path(__file__).resolve().parents[1]
SOURCE_DOOR = ("7000/tcp", "8000/tcp", "9000/tcp")
EVERYONE_DOOR = ("7100/tcp", "7200/tcp", "7300/tcp")
TOLERANCE = 1.0  # the "± 1 s" for window ends
POLL = 0.05
OPEN_WAIT = 3.0


def config_text(window: str) -> str:
    return f"""\
[guard]
ports = [22]
answer = "reset"

[access]
window = "30s"

[[door]]
name = "ssh"
sequence = {json.dumps(list(SOURCE_DOOR))}
timeout = "5s"

[[door]]
name = "everyone"
sequence = {json.dumps(list(EVERYONE_DOOR))}
timeout = "5s"
open_to = "everyone"
window = "{window}"
"""


def everyone(lab: Lab) -> dict[str, float | None]:
    return set_elements(lab, "server", "everyone")


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def knock_everyone(lab: Lab, host: str = "client") -> float:
    """Knock the everyone door; monotonic() right after the last knock left (the window's start
    is between the call and this instant, within the knock tool's own few milliseconds)."""
    done = knock(lab, host, lab.addr("server"), EVERYONE_DOOR)
    assert done.returncode == 0, done.stderr
    return time.monotonic()


def closing_time(lab: Lab, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not everyone(lab):
            return time.monotonic()
        time.sleep(POLL)
    return None


def long_session(lab: Lab, host: str, seconds: int) -> subprocess.Popen[bytes]:
    """An ssh session from `host` that lives `seconds`, then prints "still-here"."""
    assert lab.sshd is not None
    argv = ssh_argv(
        lab.sshd,
        lab.addr("server"),
        ["sleep", str(seconds), ";", "echo", "still-here"],
        ("-o", "ConnectTimeout=2"),
    )
    return lab.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def server(lab_module: Lab) -> Iterator[LabServer]:
    with LabServer(lab_module) as helper:
        yield helper


def test_everyone_door_opens_for_both_clients_and_closes_at_its_window_despite_a_session(
    server: LabServer,
) -> None:
    lab = server.lab
    window = 6.0
    guardian = server.start(config_text(f"{window:g}s"))
    target = lab.addr("server")
    # Before: the port is shut to both (a reset, like an unused port).
    assert connect_result(lab, "client", target, 22, timeout=1.0) == "refused"
    assert connect_result(lab, "client2", target, 22, timeout=1.0) == "refused"
    before = time.monotonic()
    knocked = knock_everyone(lab, "client")
    assert wait_for(lambda: bool(everyone(lab)), OPEN_WAIT)
    # Both clients at once, though only client knocked; and no per-source grant was made.
    assert connect_result(lab, "client", target, 22, timeout=1.0) == "connected"
    assert connect_result(lab, "client2", target, 22, timeout=1.0) == "connected"
    assert set_elements(lab, "server", "allow4") == {}
    # client2 starts a session that outlives the window.
    session = long_session(lab, "client2", int(window) + 3)
    try:
        closed = closing_time(lab, window + 5)
        assert closed is not None, "the everyone window never closed"
        # The kernel element was added between `before` and `knocked`: closed at window ± 1 s.
        assert before + window - TOLERANCE <= closed <= knocked + window + TOLERANCE, (
            closed - before
        )
        # Closed for new connections from both clients ...
        assert connect_result(lab, "client", target, 22, timeout=1.0) == "refused"
        assert connect_result(lab, "client2", target, 22, timeout=1.0) == "refused"
        # ... while the session started in the window goes on to its end.
        out, err = session.communicate(timeout=window + 15)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(timeout=5)
    assert session.returncode == 0, err
    assert out.decode().strip() == "still-here"
    log = guardian.log_text()
    # Loud: WARNING lines for both ends.
    assert "WARNING everyone_opened source=" in log and "door=everyone" in log
    assert "WARNING everyone_closed door=everyone (window ended)" in log


def test_everyone_window_is_never_extended_by_a_reknock_or_a_restart(server: LabServer) -> None:
    lab = server.lab
    window = 8.0
    config = config_text(f"{window:g}s")
    first = server.start(config)
    before = time.monotonic()
    knocked = knock_everyone(lab, "client")
    assert wait_for(lambda: bool(everyone(lab)), OPEN_WAIT)
    time.sleep(1.5)
    # A re-knock (by the other client) while it is open: no extension.
    knock_everyone(lab, "client2")
    assert first.wait_for_log("not extended", timeout=3.0)
    # kill -9, then a new daemon: it adopts what the kernel has left, and does not extend it.
    first.kill()
    second = server.start(config)
    assert second.wait_for_log("everyone_opened door=everyone (found open in the kernel", 3.0)
    status = subprocess.run(
        [sys.executable, "-m", "guardian", "status", "--json", "-s", str(second.socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["everyone"]["door"] == "everyone"
    assert 0 < doc["everyone"]["time_left"] <= window - 1.5
    knock_everyone(lab, "client")  # and a re-knock after the restart does not extend it either
    closed = closing_time(lab, window + 5)
    assert closed is not None
    assert before + window - TOLERANCE <= closed <= knocked + window + TOLERANCE, closed - before
    assert second.wait_for_log("everyone_closed door=everyone (window ended)", 3.0)
    assert connect_result(lab, "client2", lab.addr("server"), 22, timeout=1.0) == "refused"


def test_bans_still_apply_while_the_everyone_door_is_open(server: LabServer) -> None:
    lab = server.lab
    guardian = server.start(config_text("20s"))
    target = lab.addr("server")
    knock_everyone(lab, "client")
    assert wait_for(lambda: bool(everyone(lab)), OPEN_WAIT)
    ban = [sys.executable, "-m", "guardian", "ban", lab.addr("client2"), "--for", "1m"]
    done = subprocess.run(
        [*ban, "-s", str(guardian.socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: lab.addr("client2") in set_elements(lab, "server", "ban4"), 3.0)
    assert connect_result(lab, "client2", target, 22, timeout=1.0) == "timeout"  # dropped
    assert connect_result(lab, "client", target, 22, timeout=1.0) == "connected"
