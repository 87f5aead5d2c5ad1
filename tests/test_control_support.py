# Shared pieces for the control-socket tests: a fake ControlHandler (the protocol is under test,
# not the daemon), a bounded selector loop driven by the test itself, and the same loop in a
# background thread for tests whose client side blocks (control_client, the CLI commands). Only
# the test uses a thread; the server code runs in whichever single thread drives the loop.
from __future__ import annotations

import selectors
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guardian.control import ControlError, ControlServer
from tests.test_ui_samples import busy_snapshot

JsonDict = dict[str, Any]


class FakeHandler:
    """Implements guardian.control.ControlHandler and records every call."""

    def __init__(self, snapshot: JsonDict | None = None) -> None:
        self.doc = snapshot if snapshot is not None else busy_snapshot().to_json()
        self.calls: list[tuple[Any, ...]] = []

    def snapshot(self) -> JsonDict:
        self.calls.append(("snapshot",))
        return self.doc

    def grant(self, source: str, duration: float) -> JsonDict:
        self.calls.append(("grant", source, duration))
        return {"source": source, "duration": duration}

    def revoke(self, source: str) -> JsonDict:
        self.calls.append(("revoke", source))
        raise ControlError(f"{source} has no grant")

    def ban(self, source: str, duration: float | None) -> JsonDict:
        self.calls.append(("ban", source, duration))
        return {"source": source, "offence": 1}

    def unban(self, source: str) -> JsonDict:
        self.calls.append(("unban", source))
        return {"bad": {1, 2}}  # not JSON-able: a daemon bug the server must survive

    def reload(self) -> JsonDict:
        self.calls.append(("reload",))
        raise RuntimeError("a bug in the daemon")

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)


def pump(
    selector: selectors.BaseSelector,
    until: Callable[[], bool] = lambda: False,
    timeout: float = 5.0,
    step: float = 0.01,
) -> float:
    """Run the loop (select, call each key's callback) until `until()` or `timeout`; returns the
    longest single wake-up in seconds, so tests can show no callback ever blocked."""
    deadline = time.monotonic() + timeout
    longest = 0.0
    while time.monotonic() < deadline:
        if until():
            return longest
        ready = selector.select(step)
        started = time.monotonic()
        for key, mask in ready:
            key.data(mask)
        longest = max(longest, time.monotonic() - started)
    return longest


class ServerThread:
    """A ControlServer driven by a loop in a background thread (for blocking clients)."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gs11-loop", daemon=True)
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn in the loop thread at its next wake-up (publish() from a test, say)."""
        with self._lock:
            self._calls.append(fn)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, mask in self.selector.select(0.02):
                key.data(mask)
            with self._lock:
                calls, self._calls = self._calls, []
            for fn in calls:
                fn()

    def start(self) -> None:
        self.server.open()
        self.server.register(self.selector)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()
        self.selector.close()


@contextmanager
def running_server(
    path: Path, handler: FakeHandler | None = None, **options: Any
) -> Iterator[ServerThread]:
    loop = ServerThread(ControlServer(str(path), handler or FakeHandler(), **options))
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
