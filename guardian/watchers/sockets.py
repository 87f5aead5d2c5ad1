# The socket-table watcher: the established TCP connections to guarded ports, read from
# /proc/net/tcp and /proc/net/tcp6 at a slow interval. It is the reconciliation beside conntrack
# (which misses the end of connections created before events were enabled) and the whole session
# signal when conntrack is unavailable. It has no fd: the daemon calls poll() every `interval`.
#
# Why /proc parsing (spec/platform.md "Listing SSH sockets", and the numbers in the lab test):
# psutil.net_connections walks every /proc/*/fd (35-56 ms at 1000 sockets), `ss` costs a process
# start, sock_diag via pyroute2 is slower still; reading the two files and parsing only the
# ESTABLISHED rows of guarded local ports is a few ms. /proc/net is the *calling* process's
# namespace: the daemon runs in the server's, or passes proc_net=/proc/<pid>/net for another.
from __future__ import annotations

from pathlib import Path

from guardian.events import ConnectionId, ConnectionsListed
from guardian.parsers.proc_net_tcp import established_connections
from guardian.watchers import WatcherError

PROC_NET = Path("/proc/net")

STAT_KEYS = (
    "polls",  # listings produced
    "connections",  # live connections in the last listing
    "malformed",  # lines that could not be parsed, over all polls
    "missing_tcp6",  # polls that found no tcp6 file (IPv6 disabled): treated as empty
)


class SocketTableWatcher:
    """Timer-driven listing of established connections to the guarded ports (origin "sockets").

    ValueError for bad ports or a non-positive interval; WatcherError when /proc/net/tcp cannot
    be read."""

    def __init__(
        self, guarded_ports: tuple[int, ...], interval: float, *, proc_net: Path = PROC_NET
    ) -> None:
        ports = frozenset(guarded_ports)
        if not ports or any(not 0 < p < 65536 for p in ports):
            raise ValueError(f"guarded ports must be 1..65535, got {guarded_ports!r}")
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.guarded_ports = tuple(sorted(ports))
        self.interval = float(interval)  # seconds between polls; the daemon owns the timer
        self._ports = ports
        self._proc_net = proc_net
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    def poll(self) -> ConnectionsListed:
        """Read both tables now and return every live connection to a guarded port."""
        connections: set[ConnectionId] = set()
        for name in ("tcp", "tcp6"):
            text = self._read(name)
            if text is None:
                continue
            listing = established_connections(text, self._ports)
            connections |= listing.connections
            self._counts["malformed"] += listing.malformed
        self._counts["polls"] += 1
        self._counts["connections"] = len(connections)
        return ConnectionsListed(frozenset(connections), "sockets")

    def _read(self, name: str) -> str | None:
        path = self._proc_net / name
        try:
            with path.open("rb") as handle:
                # One read of a large buffer: the kernel emits whole lines per chunk, and fewer
                # syscalls matter at thousands of sockets.
                return handle.read().decode("ascii", errors="replace")
        except FileNotFoundError as error:
            if name == "tcp6":
                self._counts["missing_tcp6"] += 1
                return None
            raise WatcherError(f"socket table: {path} does not exist") from error
        except OSError as error:
            raise WatcherError(f"socket table: reading {path}: {error}") from error

    def stats(self) -> dict[str, int]:
        """Counters since construction (keys: STAT_KEYS)."""
        return dict(self._counts)
