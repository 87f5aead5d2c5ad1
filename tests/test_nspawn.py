# The units under a real systemd: a debootstrapped Debian 12 booted with systemd-nspawn
# (guardian.lab.nspawn), where `guardian install` puts the units in place and systemd itself runs
# them: Type=notify start (READY=1), STATUS=, watchdog pings and a watchdog kill + restart,
# reload by SIGHUP, journal fields of a grant, and socket-activated sshd (Accept=yes). Everything
# happens in the container's own network namespace (--private-network). An environment that
# cannot build or boot the container makes these tests FAIL with what stopped it, never skip.
from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from guardian.journal_log import MESSAGE_IDS
from guardian.lab.nspawn import (
    GUARDIAN_BIN,
    Container,
    NspawnError,
    booted,
    ensure_rootfs,
    mirror_in_sources,
)
from tests.conftest import require_root

CONFIG = """\
[guard]
ports = [22]
# The socket-activation test connects over loopback while the guardian runs.
trusted = ["127.0.0.0/8"]

[[door]]
name = "main"
sequence = ["7000", "8000/udp", "9000"]

[ban]
sources = ["journal"]
"""
# The shipped WatchdogSec=30s would make the watchdog test wait a minute; the mechanism is the
# same at 3s (the daemon pings at WATCHDOG_USEC/2, whatever systemd passes).
DROP_IN = "[Service]\nWatchdogSec=3s\n"
WATCHDOG_SECONDS = 3
GRANTED = "192.0.2.9"


def show(container: Container, unit: str, *props: str) -> dict[str, str]:
    done = container.run(["systemctl", "show", unit, "-p", ",".join(props)])
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def wait_for(what: str, check: Callable[[], bool], timeout: float, container: Container) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    journal = container.journal("-u", "guardian.service", "-n", "40")
    pytest.fail(f"{what}: not within {timeout:.0f}s\n{journal}", pytrace=False)


def sshd_processes(container: Container) -> list[str]:
    script = (
        "import pathlib\n"
        "for p in pathlib.Path('/proc').iterdir():\n"
        "    try:\n"
        "        c = (p / 'comm').read_text().strip()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if p.name.isdigit() and c == 'sshd':\n"
        "        print(p.name)\n"
    )
    return container.run(["python3", "-c", script]).stdout.split()


def test_mirror_is_read_from_one_line_and_deb822_sources() -> None:
    one_line = (
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb [signed-by=/k.gpg arch=amd64] http://ftp.example.org/debian bookworm main\n"
    )
    assert mirror_in_sources(one_line) == "http://ftp.example.org/debian"
    deb822 = (
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n\n"
        "Types: deb\n# http://snapshot.debian.org/archive/debian/x\n"
        "URIs: http://mirror.example.net/debian/\nSuites: bookworm bookworm-updates\n"
    )
    assert mirror_in_sources(deb822) == "http://mirror.example.net/debian/"
    assert mirror_in_sources("deb http://ftp.example.org/debian bullseye main\n") is None


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    require_root()
    try:
        tarball, build_seconds = ensure_rootfs()
        with booted("guardian-nsp", tarball) as (box, boot_seconds):
            print(f"nspawn: rootfs build {build_seconds:.0f}s, boot {boot_seconds:.1f}s")
            box.write("/etc/guardian/guardian.toml", CONFIG, 0o640)
            box.write("/etc/systemd/system/guardian.service.d/nspawn-test.conf", DROP_IN)
            box.run([GUARDIAN_BIN, "check", "-c", "/etc/guardian/guardian.toml"])
            box.run([GUARDIAN_BIN, "install", "--prefix", "/", "--guardian-bin", GUARDIAN_BIN])
            box.run(["systemctl", "daemon-reload"])
            yield box
    except NspawnError as exc:
        pytest.fail(f"systemd-nspawn container: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def running(container: Container) -> Container:
    """guardian.service started by systemd: `systemctl start` of a Type=notify unit returns only
    once READY=1 arrived (or fails)."""
    started = container.run(["systemctl", "start", "guardian.service"], timeout=60, check=False)
    if started.returncode != 0:
        journal = container.journal("-u", "guardian.service", "-n", "60")
        pytest.fail(f"systemctl start guardian.service failed: {started.stderr}\n{journal}")
    return container


@pytest.mark.lab
def test_installed_units_are_what_systemd_loads(container: Container) -> None:
    props = show(container, "guardian.service", "Type", "ExecStart", "FragmentPath", "DropInPaths")
    assert props["Type"] == "notify"
    assert props["FragmentPath"] == "/etc/systemd/system/guardian.service"
    assert f"path={GUARDIAN_BIN} " in props["ExecStart"]
    assert props["DropInPaths"].endswith("nspawn-test.conf")
    # install kept the operator's config (the one written before it ran).
    assert (container.root / "etc/guardian/guardian.toml").read_text() == CONFIG


@pytest.mark.lab
def test_notify_ready_status_and_watchdog_pings(running: Container) -> None:
    props = show(
        running,
        "guardian.service",
        "ActiveState",
        "SubState",
        "StatusText",
        "WatchdogUSec",
        "MainPID",
        "NRestarts",
        "WatchdogTimestampMonotonic",
    )
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["StatusText"], "no STATUS= text reached systemd"
    assert props["WatchdogUSec"] == f"{WATCHDOG_SECONDS}s"
    table = running.run(["nft", "list", "table", "inet", "guardian"], check=False)
    assert table.returncode == 0, table.stderr
    # Two watchdog periods later the unit lives on, same process, and systemd saw new pings.
    time.sleep(2 * WATCHDOG_SECONDS + 1)
    later = show(
        running,
        "guardian.service",
        "ActiveState",
        "MainPID",
        "NRestarts",
        "WatchdogTimestampMonotonic",
    )
    assert later["ActiveState"] == "active"
    assert later["MainPID"] == props["MainPID"]
    assert later["NRestarts"] == props["NRestarts"] == "0"
    assert int(later["WatchdogTimestampMonotonic"]) > int(props["WatchdogTimestampMonotonic"])


@pytest.mark.lab
def test_reload_is_sighup_and_keeps_the_process(running: Container) -> None:
    before = show(running, "guardian.service", "MainPID")["MainPID"]
    running.run(["systemctl", "reload", "guardian.service"])
    wait_for(
        "the daemon logs the reload",
        lambda: (
            "reloaded /etc/guardian/guardian.toml"
            in running.journal("-u", "guardian.service", "-o", "cat")
        ),
        10,
        running,
    )
    assert show(running, "guardian.service", "MainPID")["MainPID"] == before


@pytest.mark.lab
def test_grant_is_logged_with_journal_fields(running: Container) -> None:
    script = (
        "import json, sys\n"
        "from guardian.control_client import request\n"
        "print(json.dumps(request('/run/guardian/control.sock',"
        f" {{'cmd': 'grant', 'source': '{GRANTED}', 'duration': 30}})))\n"
    )
    reply = json.loads(running.run(["python3", "-c", script]).stdout)
    assert reply.get("ok") is True

    def grant_records() -> list[dict[str, str]]:
        out = running.journal("-u", "guardian.service", "GUARDIAN_EVENT=grant_opened", "-o", "json")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    wait_for("a GUARDIAN_EVENT=grant_opened record", lambda: bool(grant_records()), 10, running)
    record = grant_records()[-1]
    assert record["SOURCE_ADDRESS"] == GRANTED
    assert record["MESSAGE_ID"] == MESSAGE_IDS["grant_opened"]
    assert record["DOOR"] == "operator"  # what the control socket's grants are filed under
    assert record["_SYSTEMD_UNIT"] == "guardian.service"


@pytest.mark.lab
def test_watchdog_kills_a_stalled_loop_and_systemd_restarts_it(running: Container) -> None:
    before = show(running, "guardian.service", "MainPID", "NRestarts")
    running.run(["systemctl", "kill", "-s", "SIGSTOP", "guardian.service"])

    def restarted() -> bool:
        now = show(running, "guardian.service", "ActiveState", "MainPID", "NRestarts")
        return (
            now["ActiveState"] == "active"
            and int(now["NRestarts"]) > int(before["NRestarts"])
            and now["MainPID"] not in ("0", before["MainPID"])
        )

    # WatchdogSec, the kill, RestartSec=2s and a new READY=1: well under 30s.
    wait_for("a watchdog kill and a restart", restarted, 30, running)
    journal = running.journal("-u", "guardian.service", "-o", "cat")
    assert "Watchdog timeout" in journal
    assert "Failed with result 'watchdog'" in journal
    table = running.run(["nft", "list", "table", "inet", "guardian"], check=False)
    assert table.returncode == 0, table.stderr


@pytest.mark.lab
def test_socket_activated_sshd_one_instance_per_connection(running: Container) -> None:
    assert sshd_processes(running) == []
    running.run(["systemctl", "start", "guardian-sshd.socket"])
    listening = running.run(["ss", "-Hltnp", "sport = :22"]).stdout
    assert '"systemd",pid=1,' in listening, listening
    assert sshd_processes(running) == [], "sshd runs before any connection"

    # A client inside the container holds one connection open until its stdin closes.
    client = subprocess.Popen(
        [
            "nsenter", "-t", str(running.leader), "-a", "python3", "-c",
            "import socket, sys\n"
            "s = socket.create_connection(('127.0.0.1', 22), timeout=10)\n"
            "print(s.recv(256).decode(errors='replace').strip(), flush=True)\n"
            "sys.stdin.read()\n"
            "s.close()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stdin is not None
        ready, _, _ = select.select([client.stdout], [], [], 15)
        banner = client.stdout.readline() if ready else ""
        assert banner.startswith("SSH-2.0-OpenSSH"), f"no SSH banner: {banner!r}"
        instances = running.run(
            ["systemctl", "list-units", "--no-legend", "--plain", "guardian-sshd@*"]
        ).stdout
        assert "guardian-sshd@" in instances and " running " in instances, instances
        assert sshd_processes(running), "no sshd process while a connection is open"
        client.stdin.close()
        client.wait(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)

    wait_for("sshd to exit after the connection", lambda: not sshd_processes(running), 15, running)
    running.run(["systemctl", "stop", "guardian-sshd.socket"])
    assert running.run(["ss", "-Hltn", "sport = :22"]).stdout.strip() == ""
