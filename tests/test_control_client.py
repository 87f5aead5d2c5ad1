# The control client against a real ControlServer (its loop in a background thread of the test),
# and against the ways a daemon can be absent: no socket file, a stale one, one that never answers.
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from guardian.control_client import (
    ConnectionLost,
    ControlClientError,
    ControlConnection,
    DaemonNotRunning,
    RequestFailed,
    request,
    stream,
)
from tests.test_control_support import FakeHandler, running_server


def test_no_socket_means_not_running(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with pytest.raises(DaemonNotRunning) as info:
        request(str(path), {"cmd": "snapshot"})
    assert str(info.value) == f"guardian is not running (no socket at {path})"


def test_a_stale_socket_means_not_running(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(DaemonNotRunning, match="nobody listens on"):
        request(str(path), {"cmd": "snapshot"})


def test_a_daemon_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(ControlClientError, match="did not answer in time"):
            request(str(path), {"cmd": "snapshot"}, timeout=0.3)
        assert time.monotonic() - started < 2.0
    finally:
        mute.close()


def test_requests_and_errors(tmp_path: Path) -> None:
    handler = FakeHandler()
    path = tmp_path / "control.sock"
    with running_server(path, handler):
        assert request(str(path), {"cmd": "grants"})["grants"] == handler.doc["grants"]
        with pytest.raises(RequestFailed) as info:
            request(str(path), {"cmd": "revoke", "source": "192.0.2.1"})
        assert info.value.code == "failed" and str(info.value) == "192.0.2.1 has no grant"
        with pytest.raises(RequestFailed, match="unknown command"):
            request(str(path), {"cmd": "format-disk"})
        with pytest.raises(ControlClientError, match="not JSON-able"):
            request(str(path), {"cmd": "grants", "x": object()})


def test_one_connection_serves_many_requests(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with running_server(path) as loop, ControlConnection(str(path)) as connection:
        for _ in range(20):
            assert connection.request({"cmd": "bans"})["ok"] is True
        assert loop.server.stats.accepted == 1 and loop.server.stats.requests == 20


def test_an_oversized_request_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with running_server(path, max_request=100), ControlConnection(str(path)) as connection:
        with pytest.raises(RequestFailed) as info:
            connection.request({"cmd": "grants", "pad": "x" * 500})
        assert info.value.code == "too_large"
        # The connection was closed by the daemon; the next request opens a new one.
        assert connection.request({"cmd": "grants"})["ok"] is True


def test_stream_yields_published_events_and_ends_when_the_daemon_goes(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    events = [{"at": float(i), "kind": "knock_completed", "source": "192.0.2.7"} for i in range(3)]
    received = []
    with running_server(path) as loop:
        it = stream(str(path), {"cmd": "events"})

        def publish_when_subscribed() -> None:
            if loop.server.subscriber_count:
                for event in events:
                    loop.server.publish(event)
            else:
                loop.call(publish_when_subscribed)

        loop.call(publish_when_subscribed)
        for _ in events:
            received.append(next(it))
        assert received == events
        loop.call(loop.server.close)  # the daemon stops
        with pytest.raises(ConnectionLost, match="ended the stream"):
            next(it)


def test_stream_reports_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        next(stream(str(tmp_path / "nothing.sock"), {"cmd": "events"}))
