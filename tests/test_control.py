# The control socket's protocol, with a real unix socket in a temp dir and a real selector loop
# driven by the test (guardian.control.ControlServer and a fake handler; no daemon): replies,
# garbage, oversized and half-sent requests, clients that never read, event streams, 100
# concurrent clients, the socket file's life cycle. Peer credentials with a real unprivileged user
# are in test_control_peercred.py.
from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardian.control import (
    Access,
    ControlServer,
    ControlSocketError,
    PeerCred,
    access_for,
    encode,
)
from tests.test_control_support import FakeHandler, pump

JsonDict = dict[str, Any]


class Client:
    """A raw, non-blocking client socket; lines are read by pumping the server's loop."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, selector: selectors.BaseSelector, cmd: JsonDict) -> JsonDict:
        self.send(json.dumps(cmd).encode() + b"\n")
        [reply] = self.lines(selector, 1)
        return reply

    def _fill(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.buf += data

    def lines(
        self, selector: selectors.BaseSelector, count: int, timeout: float = 5.0
    ) -> list[JsonDict]:
        def enough() -> bool:
            self._fill()
            return self.buf.count(b"\n") >= count or self.eof

        pump(selector, enough, timeout)
        out = []
        for _ in range(count):
            line, sep, rest = self.buf.partition(b"\n")
            if not sep:
                break
            out.append(json.loads(line))
            self.buf = rest
        assert len(out) == count, f"got {len(out)} of {count} lines (eof={self.eof})"
        return out

    def closed_by_server(self, selector: selectors.BaseSelector, timeout: float = 5.0) -> bool:
        def gone() -> bool:
            self._fill()
            return self.eof

        pump(selector, gone, timeout)
        return self.eof

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "guardian" / "control.sock"


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
def loop(
    sock_path: Path, handler: FakeHandler, request: pytest.FixtureRequest
) -> Iterator[tuple[ControlServer, selectors.BaseSelector]]:
    options = getattr(request, "param", {})
    server = ControlServer(str(sock_path), handler, **options)
    selector = selectors.DefaultSelector()
    server.open()
    server.register(selector)
    try:
        yield server, selector
    finally:
        server.close()
        selector.close()


Loop = tuple[ControlServer, selectors.BaseSelector]


# ---- the socket file ----------------------------------------------------------------------------


def test_socket_file_is_private_and_parent_dir_created(loop: Loop, sock_path: Path) -> None:
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o755


def test_close_removes_the_socket_file(sock_path: Path, handler: FakeHandler) -> None:
    server = ControlServer(str(sock_path), handler)
    server.open()
    server.close()
    assert not sock_path.exists()


def test_a_stale_socket_is_replaced(sock_path: Path, handler: FakeHandler) -> None:
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # bound, never listening: what a killed daemon leaves behind
    dead.close()
    server = ControlServer(str(sock_path), handler)
    server.open()
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(sock_path))  # the new one listens
        probe.close()
    finally:
        server.close()


def test_a_live_socket_is_left_alone(loop: Loop, sock_path: Path, handler: FakeHandler) -> None:
    second = ControlServer(str(sock_path), handler)
    with pytest.raises(ControlSocketError, match="another guardian is already listening"):
        second.open()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_a_path_that_is_not_a_socket_is_not_touched(sock_path: Path, handler: FakeHandler) -> None:
    sock_path.parent.mkdir(parents=True)
    sock_path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(str(sock_path), handler).open()
    assert sock_path.read_text() == "precious"


def test_an_unknown_read_group_is_an_error(sock_path: Path, handler: FakeHandler) -> None:
    with pytest.raises(ControlSocketError, match="does not exist"):
        ControlServer(str(sock_path), handler, read_group="gs11-no-such-group").open()


def test_close_leaves_a_socket_file_that_is_no_longer_ours(
    sock_path: Path, handler: FakeHandler
) -> None:
    server = ControlServer(str(sock_path), handler)
    server.open()
    os.unlink(sock_path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(sock_path))
    try:
        server.close()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        other.close()


# ---- requests and replies -----------------------------------------------------------------------


def test_read_commands(loop: Loop, sock_path: Path, handler: FakeHandler) -> None:
    _, selector = loop
    client = Client(sock_path)
    reply = client.request(selector, {"cmd": "snapshot"})
    assert reply == {"ok": True, "snapshot": handler.doc}
    for section in ("grants", "sessions", "bans"):
        assert client.request(selector, {"cmd": section}) == {
            "ok": True,
            section: handler.doc[section],
        }
    client.close()


def test_pipelined_requests_are_answered_in_order_with_their_ids(
    loop: Loop, sock_path: Path
) -> None:
    _, selector = loop
    client = Client(sock_path)
    lines = [json.dumps({"cmd": "grants", "id": i}) for i in range(40)]
    client.send(("\n\n".join(lines) + "\n").encode())  # blank lines in between are ignored
    replies = client.lines(selector, 40)
    assert [r["id"] for r in replies] == list(range(40))
    assert all(r["ok"] for r in replies)


def test_write_commands_reach_the_handler(
    loop: Loop, sock_path: Path, handler: FakeHandler
) -> None:
    _, selector = loop
    client = Client(sock_path)
    reply = client.request(
        selector, {"cmd": "grant", "source": "::ffff:192.0.2.7", "duration": "2m"}
    )
    assert reply == {"ok": True, "source": "192.0.2.7", "duration": 120.0}
    reply = client.request(selector, {"cmd": "ban", "source": "198.51.100.0/24"})
    assert reply["ok"] and handler.calls[-1] == ("ban", "198.51.100.0/24", None)
    reply = client.request(selector, {"cmd": "ban", "source": "2001:db8::1", "duration": 60})
    assert handler.calls[-1:] == [("ban", "2001:db8::1", 60.0)]


def test_handler_errors_become_error_replies(loop: Loop, sock_path: Path) -> None:
    server, selector = loop
    client = Client(sock_path)
    reply = client.request(selector, {"cmd": "revoke", "source": "192.0.2.7"})
    assert reply == {"ok": False, "error": "192.0.2.7 has no grant", "code": "failed"}
    # A bug in the handler (an exception, a reply that is not JSON) must not end the daemon.
    assert client.request(selector, {"cmd": "reload"})["code"] == "internal"
    assert client.request(selector, {"cmd": "unban", "source": "192.0.2.7"})["code"] == "internal"
    assert client.request(selector, {"cmd": "snapshot"})["ok"] is True
    assert server.stats.handler_errors == 1 and server.stats.internal_errors == 2


GARBAGE = [
    (b"hello\n", "request is not JSON"),
    (b"\xff\xfe\xfd\n", "request is not UTF-8"),
    (b"[1, 2]\n", "a request is one JSON object per line"),
    (b'"snapshot"\n', "a request is one JSON object per line"),
    (b"{}\n", 'the request has no "cmd"'),
    (b'{"cmd": 7}\n', 'the request has no "cmd"'),
    (b'{"cmd": "rm -rf /"}\n', "unknown command 'rm -rf /'"),
    (b'{"cmd": "snapshot"\n', "request is not JSON"),
    (b"[" * 50000 + b"\n", "request is not JSON"),  # nesting deep enough to blow the recursion
    (b'{"cmd": "grants", "n": ' + b"9" * 20000 + b"}\n", "request is not JSON"),
    (b"cos\nsystem\n(S'echo pwned'\ntR.\n", "request is not JSON"),  # a pickle: just garbage
    (b'{"cmd": "grant"}\n', '"source" (an IP address, as a string) is required'),
    (b'{"cmd": "grant", "source": "example.com", "duration": 5}\n', "is not an IP address"),
    (b'{"cmd": "grant", "source": "192.0.2.1"}\n', '"duration" (seconds'),
    (b'{"cmd": "grant", "source": "192.0.2.1", "duration": -5}\n', "must be a positive"),
    (b'{"cmd": "grant", "source": "192.0.2.1", "duration": NaN}\n', "must be a positive"),
    (b'{"cmd": "grant", "source": "192.0.2.1", "duration": true}\n', '"duration" (seconds'),
    (b'{"cmd": "grant", "source": "192.0.2.1", "duration": "soon"}\n', "not a duration"),
    (b'{"cmd": "revoke", "source": "192.0.2.0/24"}\n', "is not an IP address"),
]


@pytest.mark.parametrize(("line", "error"), GARBAGE, ids=[str(i) for i in range(len(GARBAGE))])
def test_garbage_gets_an_error_and_the_connection_stays_usable(
    loop: Loop, sock_path: Path, handler: FakeHandler, line: bytes, error: str
) -> None:
    server, selector = loop
    client = Client(sock_path)
    client.send(line)
    lines = line.count(b"\n")
    replies = client.lines(selector, lines)
    assert all(r["ok"] is False and r["code"] == "bad_request" for r in replies)
    assert any(r["error"].startswith(error) or error in r["error"] for r in replies), replies
    assert client.request(selector, {"cmd": "snapshot"})["ok"] is True
    assert not [c for c in handler.calls if c[0] != "snapshot"]  # bad requests never reach it
    assert server.stats.bad_requests == lines


@pytest.mark.parametrize("loop", [{"max_request": 1024}], indirect=True)
@pytest.mark.parametrize("newline", [False, True])
def test_an_oversized_request_gets_an_error_and_is_disconnected(
    loop: Loop, sock_path: Path, newline: bool
) -> None:
    server, selector = loop
    client = Client(sock_path)
    client.send(b'{"cmd": "snapshot", "pad": "' + b"x" * 5000 + (b'"}\n' if newline else b""))
    [reply] = client.lines(selector, 1)
    assert reply == {"ok": False, "error": "request longer than 1024 bytes", "code": "too_large"}
    assert client.closed_by_server(selector)
    assert server.stats.oversized == 1 and server.client_count == 0
    # The server goes on serving others.
    assert Client(sock_path).request(selector, {"cmd": "grants"})["ok"] is True


def test_a_half_sent_request_waits_for_the_rest(loop: Loop, sock_path: Path) -> None:
    server, selector = loop
    client = Client(sock_path)
    client.send(b'{"cmd": "gra')
    pump(selector, timeout=0.2)
    client._fill()
    assert client.buf == b"" and not client.eof and server.client_count == 1
    other = Client(sock_path)  # meanwhile others are served
    assert other.request(selector, {"cmd": "bans"})["ok"] is True
    client.send(b'nts"}\n')
    assert client.lines(selector, 1)[0]["ok"] is True


def test_the_last_request_may_end_at_eof_without_a_newline(loop: Loop, sock_path: Path) -> None:
    """`printf '{"cmd":"grants"}' | socat - UNIX-CONNECT:...`: answered, then closed."""
    _, selector = loop
    client = Client(sock_path)
    client.send(b'{"cmd": "grants"}')
    client.sock.shutdown(socket.SHUT_WR)
    assert client.lines(selector, 1)[0]["ok"] is True
    assert client.closed_by_server(selector)


def test_idle_clients_are_swept_when_a_new_one_comes(sock_path: Path, handler: FakeHandler) -> None:
    now = [1000.0]
    server = ControlServer(str(sock_path), handler, idle_timeout=60.0, clock=lambda: now[0])
    selector = selectors.DefaultSelector()
    server.open()
    server.register(selector)
    try:
        stuck = Client(sock_path)
        stuck.send(b'{"cmd": "sna')  # half-sent, forever
        subscriber = Client(sock_path)
        subscriber.request(selector, {"cmd": "events"})
        pump(selector, lambda: server.client_count == 2, 2.0)
        now[0] += 61.0
        fresh = Client(sock_path)
        assert fresh.request(selector, {"cmd": "grants"})["ok"] is True
        assert stuck.closed_by_server(selector)
        assert server.stats.idle_disconnects == 1
        assert server.subscriber_count == 1  # subscribers idle by nature: kept
    finally:
        server.close()
        selector.close()


@pytest.mark.parametrize("loop", [{"max_clients": 2}], indirect=True)
def test_too_many_clients_get_busy(loop: Loop, sock_path: Path) -> None:
    server, selector = loop
    first, second = Client(sock_path), Client(sock_path)
    pump(selector, lambda: server.client_count == 2, 2.0)
    third = Client(sock_path)
    [reply] = third.lines(selector, 1)
    assert reply["code"] == "busy" and third.closed_by_server(selector)
    assert (
        first.request(selector, {"cmd": "grants"})["ok"]
        and second.request(selector, {"cmd": "grants"})["ok"]
    )


def test_one_snapshot_serves_many_requests_until_a_change(
    loop: Loop, sock_path: Path, handler: FakeHandler
) -> None:
    server, selector = loop
    client = Client(sock_path)
    for _ in range(5):
        client.request(selector, {"cmd": "snapshot"})
    assert handler.count("snapshot") == 1  # within snapshot_ttl
    client.request(selector, {"cmd": "grant", "source": "192.0.2.9", "duration": 5})
    client.request(selector, {"cmd": "snapshot"})
    assert handler.count("snapshot") == 2  # a write command invalidates
    server.invalidate()
    client.request(selector, {"cmd": "grants"})
    assert handler.count("snapshot") == 3


# ---- slow and hostile clients -------------------------------------------------------------------


@pytest.mark.parametrize("loop", [{"max_buffer": 256 * 1024, "snapshot_ttl": 0.0}], indirect=True)
def test_a_client_that_never_reads_is_dropped_and_never_blocks_the_loop(
    loop: Loop, sock_path: Path, handler: FakeHandler
) -> None:
    server, selector = loop
    size = len(encode({"ok": True, "snapshot": handler.doc}))
    hog = Client(sock_path)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    requests = b'{"cmd": "snapshot"}\n' * 200  # ~200 x 20 KiB of replies, never read
    sent = 0
    try:
        while sent < len(requests):
            sent += hog.sock.send(requests[sent:])
    except BlockingIOError:
        pass
    longest = pump(selector, lambda: server.stats.slow_disconnects >= 1, timeout=10.0)
    assert server.stats.slow_disconnects == 1
    assert longest < 0.5, f"one wake-up took {longest:.3f}s"
    assert size * 200 > 256 * 1024  # the test did ask for more than the cap
    # And the loop serves others all along.
    assert Client(sock_path).request(selector, {"cmd": "grants"})["ok"] is True
    hog.close()


@pytest.mark.parametrize("loop", [{"max_buffer": 64 * 1024}], indirect=True)
def test_events_reach_subscribers_and_a_stalled_subscriber_is_dropped(
    loop: Loop, sock_path: Path
) -> None:
    server, selector = loop
    reader, stalled, bystander = Client(sock_path), Client(sock_path), Client(sock_path)
    assert reader.request(selector, {"cmd": "events"}) == {"ok": True, "stream": "events"}
    assert stalled.request(selector, {"cmd": "events"})["ok"] is True
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert bystander.request(selector, {"cmd": "grants"})["ok"] is True
    assert server.subscriber_count == 2

    event = {
        "at": 1.0,
        "kind": "knock_completed",
        "source": "192.0.2.7",
        "door": "ssh",
        "detail": "",
    }
    server.publish(event)
    assert reader.lines(selector, 1) == [event]

    started = time.monotonic()
    for i in range(3000):  # ~300 KiB for a subscriber that reads nothing
        server.publish({**event, "at": float(i), "detail": "x" * 64})
        if i % 100 == 0:
            reader.lines(selector, 100 if i else 1)  # the reader keeps up
    assert time.monotonic() - started < 5.0  # publish never waited for anyone
    assert server.stats.slow_disconnects == 1 and server.subscriber_count == 1
    assert stalled.closed_by_server(selector)
    bystander._fill()
    assert bystander.buf == b""  # non-subscribers get no events


def test_publish_survives_an_event_that_is_not_json(loop: Loop, sock_path: Path) -> None:
    server, selector = loop
    client = Client(sock_path)
    client.request(selector, {"cmd": "events"})
    server.publish({"bad": float("nan")})
    server.publish({"kind": "fine"})
    assert client.lines(selector, 1) == [{"kind": "fine"}]


@pytest.mark.parametrize("loop", [{"snapshot_ttl": 0.0}], indirect=True)
def test_100_concurrent_clients_are_all_served_and_the_loop_stays_responsive(
    loop: Loop, sock_path: Path, handler: FakeHandler
) -> None:
    server, selector = loop
    # A stand-in for the knock watcher: another fd in the same loop that must keep being served.
    knock_r, knock_w = socket.socketpair()
    knock_r.setblocking(False)
    knocks: list[float] = []

    def on_knock(_mask: int) -> None:
        knock_r.recv(64)
        knocks.append(time.monotonic())

    selector.register(knock_r, selectors.EVENT_READ, on_knock)
    clients = [Client(sock_path) for _ in range(100)]
    try:
        for client in clients:
            client.send(b'{"cmd": "snapshot"}\n{"cmd": "grants"}\n')
        knock_w.send(b"k")
        sent_at = time.monotonic()

        def all_served() -> bool:
            for c in clients:
                c._fill()
            return all(c.buf.count(b"\n") >= 2 for c in clients)

        longest = pump(selector, all_served, timeout=20.0)
        assert all_served()
        assert server.client_count == 100
        for client in clients:
            replies = [json.loads(line) for line in client.buf.splitlines()]
            assert replies[0] == {"ok": True, "snapshot": handler.doc}
            assert replies[1]["ok"] and replies[1]["grants"] == handler.doc["grants"]
        assert knocks and knocks[0] - sent_at < 1.0
        assert longest < 1.0, f"one wake-up took {longest:.3f}s"
    finally:
        selector.unregister(knock_r)
        knock_r.close()
        knock_w.close()
        for client in clients:
            client.close()


def test_a_chatty_client_is_served_in_batches(loop: Loop, sock_path: Path) -> None:
    """1000 pipelined requests are all answered, a batch per wake-up, while another client that
    asks once is answered long before the chatty one is done."""
    _, selector = loop
    chatty, polite = Client(sock_path), Client(sock_path)
    chatty.send(b'{"cmd": "grants"}\n' * 1000)
    polite.send(b'{"cmd": "bans"}\n')
    assert polite.lines(selector, 1)[0]["ok"] is True
    chatty._fill()
    assert chatty.buf.count(b"\n") < 1000
    assert len(chatty.lines(selector, 1000, timeout=20.0)) == 1000


# ---- access (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "gid", "groups", "read_gid", "expected"),
    [
        (0, 0, frozenset(), None, Access.FULL),
        (0, 50, frozenset(), 900, Access.FULL),
        (4242, 4242, frozenset(), None, Access.FULL),  # the daemon's own uid
        (1000, 1000, frozenset(), None, Access.NONE),
        (1000, 1000, frozenset({27, 100}), 900, Access.NONE),
        (1000, 900, frozenset(), 900, Access.READ),  # primary group
        (1000, 1000, frozenset({100, 900}), 900, Access.READ),  # supplementary group
    ],
)
def test_access_for(
    uid: int, gid: int, groups: frozenset[int], read_gid: int | None, expected: Access
) -> None:
    assert access_for(PeerCred(1, uid, gid), groups, read_gid, owner_uid=4242) is expected
