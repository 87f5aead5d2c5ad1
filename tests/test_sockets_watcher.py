# Tests of guardian/watchers/sockets.py without root: the watcher reads tcp and tcp6 from the
# directory it is given (here a temporary stand-in for /proc/net), merges both families into one
# ConnectionsListed with origin "sockets", tolerates a missing tcp6 (IPv6 disabled) and reports a
# missing tcp as a WatcherError. The lab test (test_conntrack_lab.py) runs it on a real /proc/net.
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

from guardian.events import ConnectionsListed
from guardian.parsers.proc_net_tcp import encode_address
from guardian.watchers import WatcherError
from guardian.watchers.sockets import SocketTableWatcher

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def line(local: str, lport: int, remote: str, rport: int, state: int) -> str:
    return (
        f"   0: {encode_address(ipaddress.ip_address(local))}:{lport:04X} "
        f"{encode_address(ipaddress.ip_address(remote))}:{rport:04X} {state:02X} "
        "00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 0 0 10 -1\n"
    )


@pytest.fixture
def proc_net(tmp_path: Path) -> Path:
    (tmp_path / "tcp").write_text(
        HEADER
        + line("0.0.0.0", 22, "0.0.0.0", 0, 0x0A)
        + line("192.0.2.1", 22, "192.0.2.2", 40000, 0x01)
        + line("192.0.2.1", 2222, "192.0.2.2", 40001, 0x01)  # not guarded
        + line("192.0.2.1", 22, "192.0.2.3", 40002, 0x08)  # CLOSE_WAIT: closing
        + "this line is broken\n"
    )
    (tmp_path / "tcp6").write_text(
        HEADER
        + line("2001:db8::1", 22, "2001:db8::2", 50000, 0x01)
        + line("::ffff:192.0.2.1", 22, "::ffff:192.0.2.4", 50001, 0x01)
        + line("2001:db8::1", 50002, "2001:db8::9", 22, 0x01)  # outgoing to a remote :22
    )
    return tmp_path


def test_poll_lists_established_connections_of_both_families(proc_net: Path) -> None:
    watcher = SocketTableWatcher((22,), 5.0, proc_net=proc_net)
    assert watcher.interval == 5.0
    listing = watcher.poll()
    ip = ipaddress.ip_address
    assert listing == ConnectionsListed(
        frozenset(
            {
                (ip("192.0.2.2"), 40000, 22),
                (ip("2001:db8::2"), 50000, 22),
                (ip("192.0.2.4"), 50001, 22),
            }
        ),
        "sockets",
    )
    stats = watcher.stats()
    assert (stats["polls"], stats["connections"], stats["malformed"]) == (1, 3, 1)


def test_missing_tcp6_is_empty_and_missing_tcp_is_an_error(proc_net: Path) -> None:
    (proc_net / "tcp6").unlink()
    watcher = SocketTableWatcher((22, 2222), 1.0, proc_net=proc_net)
    assert len(watcher.poll().connections) == 2
    assert watcher.stats()["missing_tcp6"] == 1
    (proc_net / "tcp").unlink()
    with pytest.raises(WatcherError, match="does not exist"):
        watcher.poll()


@pytest.mark.parametrize(
    ("ports", "interval"), [((), 1.0), ((0,), 1.0), ((70000,), 1.0), ((22,), 0.0), ((22,), -1.0)]
)
def test_bad_arguments(ports: tuple[int, ...], interval: float) -> None:
    with pytest.raises(ValueError):
        SocketTableWatcher(ports, interval)


@pytest.mark.skipif(sys.platform != "linux", reason="reads this process's /proc/net")
def test_the_real_proc_net_is_readable() -> None:
    # Whatever this namespace holds, a poll must parse every line of it.
    watcher = SocketTableWatcher((22,), 1.0)
    watcher.poll()
    assert watcher.stats()["malformed"] == 0
