# Prometheus metrics from a StatusSnapshot: the text exposition format (version 0.0.4), written as
# a file for node_exporter's textfile collector. render_prometheus() is pure (the snapshot in, the
# text out); write_textfile() replaces the file atomically (temp file in the same directory, fsync,
# rename), so the collector never reads half a file.
#
# Every engine counter becomes `guardian_<name>_total` (a counter); gauges, grants per state,
# sessions, bans and watcher health are gauges. Grants are counted for every known state even when
# zero, so a dashboard's series do not vanish when the last grant ends.
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable

from guardian.snapshot import GRANT_STATES, StatusSnapshot

PREFIX = "guardian_"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """A Prometheus-safe metric name: [a-zA-Z_][a-zA-Z0-9_]*."""
    clean = _NAME_BAD.sub("_", name)
    return clean if clean and not clean[0].isdigit() else f"_{clean}"


def label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and line feed (the format's three escapes)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> str | None:
        """Declare a metric family; None if the name is taken (a family is declared once)."""
        full = PREFIX + metric_name(name)
        if full in self.names:
            return None
        self.names.add(full)
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        return full

    def sample(
        self, full: str | None, value: float, labels: Iterable[tuple[str, str]] = ()
    ) -> None:
        if full is None:
            return
        pairs = ",".join(f'{k}="{label_value(v)}"' for k, v in labels)
        self.lines.append(
            f"{full}{{{pairs}}} {_number(value)}" if pairs else f"{full} {_number(value)}"
        )


def render_prometheus(snapshot: StatusSnapshot) -> str:
    h = snapshot.header
    out = _Out()
    name = out.family("info", "gauge", "Version of the running guardian (always 1).")
    out.sample(name, 1, [("version", h.version)])
    name = out.family("uptime_seconds", "gauge", "Seconds since the daemon started.")
    out.sample(name, h.uptime)
    name = out.family("snapshot_timestamp_seconds", "gauge", "When these values were taken.")
    out.sample(name, h.taken_at)
    name = out.family("table_installed", "gauge", "1 if the nftables table is installed.")
    out.sample(name, int(h.table_installed))
    wanted = [w for w in h.watchers if not w.off]  # one turned off by config is not "down"
    if wanted:
        help_text = "1 if the watcher delivers events (watchers turned off are not listed)."
        name = out.family("watcher_up", "gauge", help_text)
        for w in wanted:
            out.sample(name, int(w.up), [("watcher", w.name)])
    if h.sshd is not None:
        name = out.family("sshd_running", "gauge", "1 if the on-demand sshd is running.")
        out.sample(name, int(h.sshd.state == "running"))

    by_state = Counter(g.state for g in snapshot.grants)
    name = out.family("grants", "gauge", "Sources allowed through the gate, by grant state.")
    for state in sorted(set(GRANT_STATES) | set(by_state)):
        out.sample(name, by_state.get(state, 0), [("state", state)])
    if snapshot.sessions is not None:
        authed = sum(1 for s in snapshot.sessions if s.authenticated)
        name = out.family("sessions", "gauge", "Connections to guarded ports, by authentication.")
        out.sample(name, authed, [("authenticated", "true")])
        out.sample(name, len(snapshot.sessions) - authed, [("authenticated", "false")])
    if snapshot.bans is not None:
        name = out.family("bans", "gauge", "Sources currently banned.")
        out.sample(name, len(snapshot.bans))

    for key in sorted(snapshot.gauges):
        name = out.family(key, "gauge", f"Engine gauge {key}.")
        out.sample(name, snapshot.gauges[key])
    for key in sorted(snapshot.counters):
        name = out.family(f"{key}_total", "counter", f"Count of {key.replace('_', ' ')}.")
        out.sample(name, snapshot.counters[key])
    return "\n".join(out.lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace `path` with `text` atomically. Raises OSError (the old file stays as it was)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # node_exporter runs as its own user and must read it
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # The rename itself survives a crash only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
