# The live `guardian status` dashboard: poll the control socket (4 Hz by default) over one
# connection, hand each snapshot to the pure renderer, let rich's Live draw it. The only I/O here is
# the socket, the clock between polls and the terminal. Ctrl-C ends it cleanly (exit 0). If the
# daemon is not there at start it says so and exits 1; if it goes away later the last frame stays
# on screen under a red line, and polling goes on until it is back or the operator quits.
from __future__ import annotations

import sys
import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from guardian.control_client import ControlClientError, ControlConnection
from guardian.snapshot import SnapshotError, StatusSnapshot, from_json
from guardian.ui.status import render_status

DEFAULT_INTERVAL = 0.25
EXIT_OK, EXIT_FAIL = 0, 1
# Lines a frame needs besides table rows: the header panel, and per table a title, a column header,
# a rule, a blank line; then the counters.
HEADER_LINES = 7
LINES_PER_TABLE = 4
COUNTER_LINES = 5


def fetch(connection: ControlConnection) -> StatusSnapshot:
    """One snapshot through an open connection. Raises ControlClientError or SnapshotError."""
    reply = connection.request({"cmd": "snapshot"})
    return from_json(reply.get("snapshot"))


def rows_per_table(snapshot: StatusSnapshot, height: int) -> int:
    """How many rows each table may have so that the whole frame fits the terminal."""
    tables = 2 + (snapshot.sessions is not None) + (snapshot.bans is not None)
    room = height - HEADER_LINES - COUNTER_LINES - LINES_PER_TABLE * tables
    return max(2, room // tables)


def frame(snapshot: StatusSnapshot, console: Console, problem: str | None = None) -> RenderableType:
    width, height = console.size
    body = render_status(snapshot, width, max_rows=rows_per_table(snapshot, height - bool(problem)))
    if problem is None:
        return body
    return Group(Text(f"{problem} (showing the last snapshot; retrying)", style="bold red"), body)


def run_live(
    path: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    console: Console | None = None,
    timeout: float = 2.0,
) -> int:
    console = console if console is not None else Console()
    connection = ControlConnection(path, timeout)
    try:
        try:
            snapshot = fetch(connection)
        except (ControlClientError, SnapshotError) as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAIL
        with Live(
            frame(snapshot, console),
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while True:
                time.sleep(interval)
                problem = None
                try:
                    snapshot = fetch(connection)
                except (ControlClientError, SnapshotError) as exc:
                    connection.close()  # reconnect on the next poll
                    problem = str(exc)
                live.update(frame(snapshot, console, problem), refresh=True)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        connection.close()
