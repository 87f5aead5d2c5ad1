# Surviving `nft flush ruleset` (what nftables.service does when it starts or reloads): the daemon
# notices the table is gone, on its socket-table tick (every 2 s here: --no-conntrack) or at once
# when a batch fails on the missing table, and re-installs it with every grant and ban for the
# time they have left.
from __future__ import annotations

import time

from guardian.control_client import request
from guardian.lab import Lab, set_elements, start_guardian
from guardian.lab.nft import flush_ruleset

CONFIG = """\
[guard]
ports = [22]

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]
"""


def table_exists(lab: Lab) -> bool:
    done = lab.run("server", ["nft", "list", "table", "inet", "guardian"], timeout=10)
    return done.returncode == 0


def wait_until_table(lab: Lab, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if table_exists(lab):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def test_table_comes_back_with_grants_and_bans(lab: Lab) -> None:
    guardian = start_guardian(lab, CONFIG, extra_args=["--no-conntrack"])
    sock = str(guardian.socket_path)
    request(sock, {"cmd": "grant", "source": "10.7.7.7", "duration": "10m"})
    request(sock, {"cmd": "ban", "source": "10.6.6.6", "duration": "1h"})
    assert guardian.wait_for_log("ban source=10.6.6.6", 5.0)

    flush_ruleset(lab, "server")
    assert not table_exists(lab)
    took = wait_until_table(lab, 6.0)  # the tick is 2 s without conntrack
    assert took is not None, guardian.log_text()
    assert guardian.wait_for_log("table_restored", 3.0)
    assert "10.7.7.7" in set_elements(lab, "server", "allow4")
    assert "1 grant(s) and 1 ban(s)" in guardian.log_text()
    listing = lab.run("server", ["nft", "list", "table", "inet", "guardian"], timeout=10).stdout
    assert "10.6.6.6" in listing

    # A batch that fails on the missing table restores it at once (and carries the new grant).
    flush_ruleset(lab, "server")
    request(sock, {"cmd": "grant", "source": "10.8.8.8", "duration": "10m"})
    took = wait_until_table(lab, 1.5)
    assert took is not None and took < 1.5, guardian.log_text()
    assert {"10.7.7.7", "10.8.8.8"} <= set(set_elements(lab, "server", "allow4"))
    assert guardian.stop() == 0
