# [sshd] on_demand in the lab: systemd-socket-activate (one `sshd -i` per connection) stands in
# for guardian-sshd.socket, started and stopped by the guardian through the [sshd] start/stop
# argv (two small scripts in the lab's directory: start runs it in the background and returns
# once port 22 listens, stop kills it). Must show: nothing listens on 22 in the server namespace
# before a knock (`ss -ltn`); knock -> ssh works, with sshd spawned for the connection; after
# logout + linger nothing listens again; nmap from another host sees the port as closed (exactly
# like an unused port) throughout.
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from guardian.lab import Lab, knock, nmap_port_state, ssh_argv, start_guardian

LINGER = 2.0
SEQUENCE = ["7000:tcp", "8000:tcp", "9000:udp"]

START = """#!/bin/sh
# Stand-in for `systemctl start guardian-sshd.socket`: one sshd -i per connection.
setsid systemd-socket-activate -l 0.0.0.0:22 --inetd -a /usr/sbin/sshd -i -f "$1" \
    </dev/null >>"$2" 2>&1 &
echo $! >"$3"
i=0
while [ $i -lt 100 ]; do
    ss -ltnH 'sport = :22' | grep -q . && exit 0
    sleep 0.05
    i=$((i + 1))
done
exit 1
"""

STOP = """#!/bin/sh
# Stand-in for `systemctl stop guardian-sshd.socket`.
[ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null
rm -f "$1"
i=0
while [ $i -lt 100 ]; do
    ss -ltnH 'sport = :22' | grep -q . || exit 0
    sleep 0.05
    i=$((i + 1))
done
exit 1
"""


def listening_on_22(lab: Lab) -> bool:
    done = lab.run("server", ["ss", "-ltnH", "sport = :22"], timeout=10)
    return bool(done.stdout.strip())


def wait_until(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_sshd_listens_only_while_a_grant_is_open(lab: Lab) -> None:
    assert lab.sshd is not None
    lab.sshd.stop()  # the lab's always-on sshd makes way for the on-demand one
    work = lab.workdir
    pidfile = work / "socket-activate.pid"
    start, stop = work / "sshd-start", work / "sshd-stop"
    start.write_text(START)
    stop.write_text(STOP)
    for script in (start, stop):
        script.chmod(0o755)
    config = f"""\
[guard]
ports = [22]

[access]
window = "20s"
linger = "{LINGER:g}s"

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]

[sshd]
on_demand = true
start = ["{start}", "{lab.sshd.config_path}", "{work / "socket-activate.log"}", "{pidfile}"]
stop = ["{stop}", "{pidfile}"]
"""
    server = lab.addr("server")
    try:
        guardian = start_guardian(lab, config)
        assert not listening_on_22(lab)
        assert nmap_port_state(lab, "attacker", server, 22) == "closed"
        assert nmap_port_state(lab, "client", server, 22) == "closed"

        assert knock(lab, "client", server, SEQUENCE).returncode == 0
        assert wait_until(lambda: listening_on_22(lab), 5.0), guardian.log_text()
        assert guardian.wait_for_log("sshd_started", 5.0)
        # The attacker (no grant) sees exactly what it saw before: closed.
        assert nmap_port_state(lab, "attacker", server, 22) == "closed"
        done = lab.run(
            "client",
            ssh_argv(lab.sshd, server, ["echo", "on-demand-ok"], ("-o", "ConnectTimeout=5")),
            timeout=30,
        )
        assert done.returncode == 0 and "on-demand-ok" in done.stdout, done.stderr
        # No sshd is left between connections: only systemd-socket-activate listens.
        owners = lab.run("server", ["ss", "-ltnpH", "sport = :22"], timeout=10).stdout
        assert "systemd-socket" in owners and "sshd" not in owners.replace("systemd-socket", "")

        # Logout, linger, the grant closes, and sshd's listener goes with it.
        assert guardian.wait_for_log("grant_closed", 30.0), guardian.log_text()
        assert wait_until(lambda: not listening_on_22(lab), 5.0), guardian.log_text()
        assert guardian.wait_for_log("sshd_stopped", 5.0)
        assert nmap_port_state(lab, "attacker", server, 22) == "closed"
        assert nmap_port_state(lab, "client", server, 22) == "closed"
        assert guardian.stop() == 0
    finally:
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def test_a_failed_start_is_retried_and_opens_nothing_else(lab: Lab) -> None:
    assert lab.sshd is not None
    lab.sshd.stop()
    marker = lab.workdir / "attempts"
    failing = lab.workdir / "sshd-start-fails"
    failing.write_text(f'#!/bin/sh\necho x >>"{marker}"\necho "no such unit" >&2\nexit 1\n')
    failing.chmod(0o755)
    config = f"""\
[guard]
ports = [22]

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]

[sshd]
on_demand = true
start = ["{failing}"]
stop = ["/bin/true"]
"""
    server = lab.addr("server")
    guardian = start_guardian(lab, config)
    assert knock(lab, "client", server, SEQUENCE).returncode == 0
    assert guardian.wait_for_log("sshd_failed start failed (exit status 1: no such unit)", 5.0)
    # Backoff 1 s, 2 s, ...: a second and third attempt within ~4 s.
    assert wait_until(lambda: Path(marker).exists() and len(marker.read_text().split()) >= 3, 8.0)
    assert not listening_on_22(lab)
    assert nmap_port_state(lab, "attacker", server, 22) == "closed"
    assert guardian.stop() == 0
