# The control socket, server side: a unix stream socket speaking JSON lines (one request object per
# line in, one reply object per line out), living inside the daemon's one selector loop. It never
# blocks the loop, whatever a client does:
#
# - every socket is non-blocking; replies go out as far as the kernel takes them and the rest waits
#   in a per-client buffer; a client whose buffer would pass `max_buffer` is disconnected (a client
#   that never reads cannot grow the daemon's memory or stall anyone);
# - a request line longer than `max_request` gets an error and the connection is closed; garbage
#   (not UTF-8, not JSON, not an object, unknown command, bad arguments) gets {"ok": false, ...} and
#   the connection stays usable; a half-sent request simply waits for the rest;
# - at most BATCH requests of a client whose replies the kernel takes at once are handled per
#   wake-up; the rest wait until its socket is writable again, so one chatty client cannot starve
#   the knock watcher or other clients. A client that asks and never reads ends up parked there:
#   its socket stops being writable (a unix socket polls writable only while its send queue is
#   under a quarter of SO_SNDBUF), so the daemon neither reads nor answers it any more, its further
#   requests wait in the kernel, and nothing grows in the daemon (seen in the lab with a client
#   pipelining thousands of snapshot requests: 16 answered, then parked, the rest answered once it
#   read). One whose replies pile up in the daemon's buffer instead (an event stream it does not
#   read, or replies larger than the kernel takes) is dropped at max_buffer;
# - idle clients (no traffic for `idle_timeout`, not subscribed to events) are dropped when a new
#   client arrives, so slots held by stuck or half-sent clients come back without a timer in the
#   daemon (sweep() does the same on demand).
#
# Who may do what is decided once, at accept, from the kernel's word about the peer (SO_PEERCRED and
# SO_PEERGROUPS), never from anything the client says: uid 0 (or the daemon's own uid) may do
# everything; a member of `read_group` (primary or supplementary group of the connecting process)
# may use the read-only commands; anyone else gets one error line and is disconnected. The socket
# file's mode (0600, or 0660 with the group) already keeps others out; this is the second lock.
#
# Never pickle, never eval: requests are parsed with json.loads and checked field by field.
from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import json
import logging
import math
import os
import pwd
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from guardian.addresses import parse_address
from guardian.config import parse_duration

log = logging.getLogger("guardian.control")

READ_COMMANDS: frozenset[str] = frozenset({"snapshot", "grants", "sessions", "bans", "events"})
WRITE_COMMANDS: frozenset[str] = frozenset({"grant", "revoke", "ban", "unban", "reload"})
COMMANDS: frozenset[str] = READ_COMMANDS | WRITE_COMMANDS
SNAPSHOT_COMMANDS: frozenset[str] = frozenset({"snapshot", "grants", "sessions", "bans"})

DEFAULT_MAX_CLIENTS = 128  # above the 100 concurrent `guardian status` the issue asks to serve
DEFAULT_MAX_REQUEST = 64 * 1024
DEFAULT_MAX_BUFFER = 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_SNAPSHOT_TTL = 0.25  # one snapshot serves every client asking within this many seconds
BATCH = 16  # requests handled per client per wake-up
ACCEPTS_PER_WAKEUP = 64
RECV_SIZE = 65536
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python has no name for it

# Error codes in {"ok": false, "error": message, "code": code}.
E_BAD_REQUEST = "bad_request"
E_TOO_LARGE = "too_large"
E_DENIED = "denied"
E_READ_ONLY = "read_only"
E_BUSY = "busy"
E_FAILED = "failed"
E_INTERNAL = "internal"

JsonDict = dict[str, Any]


class ControlError(Exception):
    """Raised by a ControlHandler method to refuse a request; the message goes to the client."""


class ControlSocketError(Exception):
    """The control socket could not be set up (path, permissions, another daemon listening)."""


class ControlHandler(Protocol):
    """What the daemon provides to the control socket. Each method returns a JSON-able object
    (merged into the reply next to "ok": true) or raises ControlError(message)."""

    def snapshot(self) -> JsonDict:
        """The current StatusSnapshot as JSON (guardian.snapshot.StatusSnapshot.to_json())."""
        ...

    def grant(self, source: str, duration: float) -> JsonDict: ...

    def revoke(self, source: str) -> JsonDict: ...

    def ban(self, source: str, duration: float | None) -> JsonDict: ...

    def unban(self, source: str) -> JsonDict: ...

    def reload(self) -> JsonDict: ...


class Access(Enum):
    NONE = "none"
    READ = "read"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class PeerCred:
    """The connecting process as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


@dataclass
class ControlStats:
    """Counters of the control socket, for the snapshot's counters and metrics."""

    accepted: int = 0
    refused: int = 0  # peers without access
    busy: int = 0  # refused because max_clients were connected
    requests: int = 0
    bad_requests: int = 0
    oversized: int = 0
    slow_disconnects: int = 0  # output buffer over max_buffer
    idle_disconnects: int = 0
    handler_errors: int = 0  # ControlError from the handler
    internal_errors: int = 0  # any other exception from the handler (a bug; logged)
    snapshots_built: int = 0  # snapshots made for requests; the rest were served from the cache


def access_for(
    cred: PeerCred, groups: frozenset[int], read_gid: int | None, owner_uid: int
) -> Access:
    """Pure: what a peer may do, given its credentials and supplementary groups."""
    if cred.uid in (0, owner_uid):
        return Access.FULL
    if read_gid is not None and (cred.gid == read_gid or read_gid in groups):
        return Access.READ
    return Access.NONE


def peer_credentials(sock: socket.socket) -> PeerCred:
    fmt = "3i"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    pid, uid, gid = struct.unpack(fmt, raw)
    return PeerCred(pid, uid, gid)


def peer_groups(sock: socket.socket, cred: PeerCred) -> frozenset[int]:
    """The peer's supplementary groups at connect() (SO_PEERGROUPS, taken atomically with the
    connection, unlike /proc/PID which may be another process by now). On kernels without it,
    the groups the user database gives the peer's uid."""
    for size in (4 * 64, 4 * 65536):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                break
            raise
        count = len(raw) // 4
        return frozenset(struct.unpack(f"{count}I", raw[: count * 4]))
    return _database_groups(cred.uid)


def _database_groups(uid: int) -> frozenset[int]:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    groups = {user.pw_gid}
    groups.update(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)
    return frozenset(groups)


def resolve_group(name: str) -> int:
    """A group name (or a numeric gid) to its gid; ControlSocketError if there is no such group."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ControlSocketError(f"control socket: group {name!r} does not exist") from None


def encode(obj: object) -> bytes:
    """One JSON line. Strict JSON: NaN and infinities are refused (ValueError), as are non-JSON
    objects (TypeError)."""
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")


def error_reply(message: str, code: str) -> JsonDict:
    return {"ok": False, "error": message, "code": code}


class _BadRequest(Exception):
    def __init__(self, message: str, code: str = E_BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    cred: PeerCred
    access: Access
    last_active: float
    inbuf: bytearray
    outbuf: bytearray
    subscribed: bool = False
    eof: bool = False
    closed: bool = False
    mask: int = 0  # what the selector currently watches for (0 = not registered)

    def has_work(self) -> bool:
        """A complete request is waiting (or, after EOF, a last one without its newline)."""
        return b"\n" in self.inbuf or (self.eof and bool(self.inbuf.strip()))


class ControlServer:
    """The daemon's control socket. open(), register(selector), publish(event) ..., close()."""

    def __init__(
        self,
        path: str,
        handler: ControlHandler,
        *,
        read_group: str | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_request: int = DEFAULT_MAX_REQUEST,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        snapshot_ttl: float = DEFAULT_SNAPSHOT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.handler = handler
        self.read_group = read_group
        self.max_clients = max_clients
        self.max_request = max_request
        self.max_buffer = max_buffer
        self.idle_timeout = idle_timeout
        self.snapshot_ttl = snapshot_ttl
        self.clock = clock
        self.stats = ControlStats()
        self._read_gid: int | None = None
        self._owner_uid = os.geteuid()
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we bound
        self._selector: selectors.BaseSelector | None = None
        self._clients: dict[int, _Client] = {}
        self._cached: tuple[float, JsonDict] | None = None
        # Encoded replies to the snapshot commands, built from _cached: 100 dashboards polling at
        # 4 Hz cost one snapshot and one json.dumps per snapshot_ttl, not 400 a second.
        self._encoded: dict[str, bytes] = {}

    # ---- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Create the socket file (mode 0600, or 0660 owned by read_group) and listen.

        A stale socket file (nobody listening) is replaced; a live one, or a path that is not a
        socket, is left alone and ControlSocketError says why."""
        if self.read_group is not None:
            self._read_gid = resolve_group(self.read_group)
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(parent):
                os.makedirs(parent, mode=0o755, exist_ok=True)
                os.chmod(parent, 0o755)  # noqa: S103 -- a world-searchable /run dir, like sshd's
            self._remove_stale()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            raise ControlSocketError(f"control socket {self.path}: {_reason(exc)}") from exc
        bound = False
        try:
            # The file is born 0600 (the umask is process-wide, and this process has one thread),
            # so there is no instant at which a stranger could connect before the chmod/chown.
            old_umask = os.umask(0o177)
            try:
                sock.bind(self.path)
                bound = True
            finally:
                os.umask(old_umask)
            if self._read_gid is not None:
                os.chown(self.path, -1, self._read_gid)
                os.chmod(self.path, 0o660)
            else:
                os.chmod(self.path, 0o600)
            sock.listen(128)
            st = os.stat(self.path)
        except OSError as exc:
            sock.close()
            if bound:  # bound but not finished: leave no half-set-up file behind
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise ControlSocketError(f"control socket {self.path}: {_reason(exc)}") from exc
        self._identity = (st.st_dev, st.st_ino)
        self._listener = sock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(
                f"control socket {self.path}: the path exists and is not a socket; not touching it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            # Nobody listens: a leftover of a daemon that died. Replace it.
            log.info("removing stale control socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except OSError:
            pass  # a timeout or a full backlog: someone is there
        finally:
            probe.close()
        raise ControlSocketError(
            f"control socket {self.path}: another guardian is already listening there"
        )

    def register(self, selector: selectors.BaseSelector) -> None:
        """Watch the listener in the daemon's selector; clients are added to it as they come."""
        if self._listener is None:
            raise ControlSocketError("control socket: register() before open()")
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self._on_listener)

    def close(self) -> None:
        """Disconnect every client, stop listening, remove the socket file if it is still ours."""
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener is not None:
            if self._selector is not None:
                _unregister(self._selector, self._listener)
            self._listener.close()
            self._listener = None
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)
            except OSError:
                pass
        self._selector = None

    # ---- what the daemon calls ------------------------------------------------------------------

    def publish(self, event: JsonDict) -> None:
        """Send one event object to every client subscribed with {"cmd": "events"}."""
        subscribers = [c for c in self._clients.values() if c.subscribed]
        if not subscribers:
            return
        try:
            data = encode(event)
        except (TypeError, ValueError) as exc:
            log.error("control: event not sent, not JSON-able: %s", exc)
            return
        for client in subscribers:
            self._send(client, data)

    def invalidate(self) -> None:
        """Forget the cached snapshot: the next request builds a fresh one (call after changes)."""
        self._cached = None
        self._encoded.clear()

    def sweep(self, now: float | None = None) -> int:
        """Drop clients idle longer than idle_timeout (event subscribers excepted). Returns how
        many. Runs by itself at each new connection; a daemon may also call it from a timer."""
        now = self.clock() if now is None else now
        idle = [
            c
            for c in self._clients.values()
            if not c.subscribed and now - c.last_active > self.idle_timeout
        ]
        for client in idle:
            self.stats.idle_disconnects += 1
            self._drop(client)
        return len(idle)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def subscriber_count(self) -> int:
        return sum(1 for c in self._clients.values() if c.subscribed)

    # ---- accepting ------------------------------------------------------------------------------

    def _on_listener(self, _mask: int) -> None:
        if self._listener is None:
            return
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: leave the connection in the backlog, try at the next wake-up.
                log.warning("control: accept failed: %s", _reason(exc))
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        now = self.clock()
        try:
            cred = peer_credentials(sock)
            access = access_for(
                cred, self._groups_if_needed(sock, cred), self._read_gid, self._owner_uid
            )
        except OSError as exc:
            log.warning("control: cannot read peer credentials: %s", _reason(exc))
            sock.close()
            return
        if access is Access.NONE:
            self.stats.refused += 1
            if self.stats.refused <= 10 or self.stats.refused % 1000 == 0:
                log.warning(
                    "control: refused uid %d (pid %d): not root and not in the read group",
                    cred.uid,
                    cred.pid,
                )
            self._refuse(sock, self._denied_message(cred), E_DENIED)
            return
        if len(self._clients) >= self.max_clients:
            self.sweep(now)
        if len(self._clients) >= self.max_clients:
            self.stats.busy += 1
            self._refuse(sock, f"too many clients ({self.max_clients}); try again later", E_BUSY)
            return
        self.stats.accepted += 1
        client = _Client(sock, cred, access, now, bytearray(), bytearray())
        self._clients[sock.fileno()] = client
        self._set_interest(client, selectors.EVENT_READ)
        self.sweep(now)

    def _groups_if_needed(self, sock: socket.socket, cred: PeerCred) -> frozenset[int]:
        if self._read_gid is None or cred.uid in (0, self._owner_uid) or cred.gid == self._read_gid:
            return frozenset()
        return peer_groups(sock, cred)

    def _denied_message(self, cred: PeerCred) -> str:
        group = f" and not in group {self.read_group!r}" if self.read_group else ""
        return f"permission denied: uid {cred.uid} is not root{group}"

    def _refuse(self, sock: socket.socket, message: str, code: str) -> None:
        # One line fits any fresh socket's buffer: send it and close, no state kept.
        with contextlib.suppress(OSError):
            sock.send(encode(error_reply(message, code)), socket.MSG_NOSIGNAL)
        sock.close()

    # ---- a client's wake-up ---------------------------------------------------------------------

    def _callback(self, client: _Client) -> Callable[[int], None]:
        def on_ready(mask: int) -> None:
            self._on_client(client, mask)

        return on_ready

    def _on_client(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_READ and not client.closed:
            self._read(client)
        if mask & selectors.EVENT_WRITE and not client.closed:
            self._flush(client)
        if not client.closed:
            self._work(client)
        if not client.closed:
            self._update_interest(client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.last_active = self.clock()
        if not data:
            client.eof = True
            return
        client.inbuf += data

    def _work(self, client: _Client) -> None:
        """Handle the complete requests waiting; refuse a line that outgrew max_request.

        When the kernel took every reply so far, stop after BATCH requests and come back when the
        socket is writable (fairness: one chatty client does not hold the loop; one that never
        reads stays parked there, see the module comment). When replies are waiting in outbuf,
        go on: a client that does not read reaches max_buffer and is dropped, instead of sitting
        on a full buffer with requests parked forever. Either way the work of one wake-up is
        bounded by one recv's worth of requests."""
        handled = 0
        while not client.closed:
            if handled >= BATCH and not client.outbuf:
                return
            handled += 1
            newline = client.inbuf.find(b"\n")
            if newline < 0:
                if len(client.inbuf) > self.max_request:
                    self._oversized(client)
                    return
                if not client.eof or not client.inbuf.strip():
                    return
                newline = len(client.inbuf)  # EOF: the last request may lack its newline
            if newline > self.max_request:
                self._oversized(client)
                return
            line = bytes(client.inbuf[:newline])
            del client.inbuf[: newline + 1]
            self._handle_line(client, line)

    def _oversized(self, client: _Client) -> None:
        self.stats.oversized += 1
        self._queue(
            client,
            error_reply(f"request longer than {self.max_request} bytes", E_TOO_LARGE),
        )
        self._drop(client)

    def _update_interest(self, client: _Client) -> None:
        pending = client.has_work()
        want = 0
        if not client.eof and not pending:
            want |= selectors.EVENT_READ
        if client.outbuf or pending:
            # Writable soon means: flush, and also handle the requests left over from the batch.
            want |= selectors.EVENT_WRITE
        if want == 0 and not client.subscribed:
            self._drop(client)  # the client said all it had to say and got every answer
            return
        self._set_interest(client, want)

    def _set_interest(self, client: _Client, want: int) -> None:
        if self._selector is None or want == client.mask:
            return
        if client.mask == 0:
            self._selector.register(client.sock, want, self._callback(client))
        elif want == 0:
            self._selector.unregister(client.sock)
        else:
            self._selector.modify(client.sock, want, self._callback(client))
        client.mask = want

    # ---- output ---------------------------------------------------------------------------------

    def _queue(self, client: _Client, reply: JsonDict) -> None:
        self._send(client, self._encode_reply(reply))

    def _encode_reply(self, reply: JsonDict) -> bytes:
        try:
            return encode(reply)
        except (TypeError, ValueError) as exc:
            self.stats.internal_errors += 1
            log.error("control: a reply is not JSON-able: %s", exc)
            return encode(error_reply("internal error (see the daemon's log)", E_INTERNAL))

    def _send(self, client: _Client, data: bytes) -> None:
        if client.closed:
            return
        if client.outbuf and len(client.outbuf) + len(data) > self.max_buffer:
            # It is not reading. One reply may be large on its own; a backlog may not.
            self.stats.slow_disconnects += 1
            log.info("control: dropped a client (uid %d) that does not read", client.cred.uid)
            self._drop(client)
            return
        client.outbuf += data
        self._flush(client)
        if not client.closed and client.outbuf and not client.mask & selectors.EVENT_WRITE:
            self._set_interest(client, client.mask | selectors.EVENT_WRITE)

    def _flush(self, client: _Client) -> None:
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(client)
                return
            del client.outbuf[:sent]
            client.last_active = self.clock()

    def _drop(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.mask and self._selector is not None:
            _unregister(self._selector, client.sock)
        client.mask = 0
        self._clients.pop(client.sock.fileno(), None)
        client.sock.close()

    # ---- requests -------------------------------------------------------------------------------

    def _handle_line(self, client: _Client, line: bytes) -> None:
        if not line.strip():
            return  # blank lines are keep-alives, not errors
        self.stats.requests += 1
        request_id: object = None
        cacheable = False
        try:
            request = _parse_request(line)
            request_id = _request_id(request)
            cacheable = request_id is None and request["cmd"] in SNAPSHOT_COMMANDS
            if cacheable and self._fresh() and request["cmd"] in self._encoded:
                self._send(client, self._encoded[request["cmd"]])
                return
            reply = self._dispatch(client, request)
        except _BadRequest as exc:
            self.stats.bad_requests += 1
            reply = error_reply(str(exc), exc.code)
        if request_id is not None:
            reply["id"] = request_id
        data = self._encode_reply(reply)
        if cacheable and reply.get("ok") is True and self._fresh():
            self._encoded[request["cmd"]] = data
        self._send(client, data)

    def _dispatch(self, client: _Client, request: JsonDict) -> JsonDict:
        cmd = request["cmd"]
        if cmd in WRITE_COMMANDS and client.access is not Access.FULL:
            raise _BadRequest(
                f"permission denied: {cmd!r} needs root (read-only access)", E_READ_ONLY
            )
        if cmd == "events":
            client.subscribed = True
            return {"ok": True, "stream": "events"}
        # Arguments are checked before the handler runs: a bad one is the client's error.
        calls: dict[str, Callable[[], JsonDict]] = {
            "snapshot": lambda: {"snapshot": self._snapshot()},
            "grants": lambda: {"grants": self._snapshot().get("grants")},
            "sessions": lambda: {"sessions": self._snapshot().get("sessions")},
            "bans": lambda: {"bans": self._snapshot().get("bans")},
            "reload": self.handler.reload,
        }
        if cmd == "grant":
            source, duration = _source_arg(request), _required_duration(request)
            calls[cmd] = lambda: self.handler.grant(source, duration)
        elif cmd == "revoke":
            source = _source_arg(request)
            calls[cmd] = lambda: self.handler.revoke(source)
        elif cmd == "ban":
            source, maybe = _source_arg(request, network=True), _optional_duration(request)
            calls[cmd] = lambda: self.handler.ban(source, maybe)
        elif cmd == "unban":
            source = _source_arg(request, network=True)
            calls[cmd] = lambda: self.handler.unban(source)
        return self._call_handler(cmd, calls[cmd])

    def _call_handler(self, cmd: str, call: Callable[[], JsonDict]) -> JsonDict:
        try:
            result = call()
        except ControlError as exc:
            self.stats.handler_errors += 1
            return error_reply(str(exc), E_FAILED)
        except Exception:
            # A bug in the daemon's handler must not take the daemon down with it.
            self.stats.internal_errors += 1
            log.exception("control: %s failed", cmd)
            return error_reply("internal error (see the daemon's log)", E_INTERNAL)
        finally:
            if cmd in WRITE_COMMANDS:
                self.invalidate()  # the next snapshot shows what this command changed
        return {"ok": True, **{k: v for k, v in result.items() if k != "ok"}}

    def _fresh(self) -> bool:
        return self._cached is not None and self.clock() - self._cached[0] < self.snapshot_ttl

    def _snapshot(self) -> JsonDict:
        if self._cached is not None and self._fresh():
            return self._cached[1]
        doc = self.handler.snapshot()
        self.stats.snapshots_built += 1
        self._cached = (self.clock(), doc)
        self._encoded.clear()
        return doc


# ---- request parsing (pure) -------------------------------------------------------------------


def _parse_request(line: bytes) -> JsonDict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest("request is not UTF-8") from None
    try:
        request = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _BadRequest(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _BadRequest('a request is one JSON object per line, like {"cmd": "snapshot"}')
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise _BadRequest('the request has no "cmd" (a string)')
    if cmd not in COMMANDS:
        raise _BadRequest(f"unknown command {cmd[:40]!r} (known: {', '.join(sorted(COMMANDS))})")
    return request


def _request_id(request: JsonDict) -> object:
    """A client's "id" is echoed in its reply, so pipelined requests can be matched."""
    value = request.get("id")
    if isinstance(value, str) and len(value) <= 100:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _source_arg(request: JsonDict, *, network: bool = False) -> str:
    value = request.get("source")
    if not isinstance(value, str):
        raise _BadRequest('"source" (an IP address, as a string) is required')
    try:
        return str(parse_address(value))
    except ValueError:
        pass
    if network:
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            pass
    kind = "an IP address or network" if network else "an IP address"
    raise _BadRequest(f'"source": {value[:60]!r} is not {kind}')


MAX_DURATION = 10 * 365 * 86400  # seconds: beyond any ban or grant anyone means


def _required_duration(request: JsonDict) -> float:
    value = request.get("duration")
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except ValueError as exc:
            raise _BadRequest(f'"duration": {exc}') from None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _BadRequest('"duration" (seconds, or a string like "10m") is required')
    # JSON integers have no size limit: 10**400 would overflow math.isfinite(), so compare first.
    if (isinstance(value, int) and value <= 0) or (
        isinstance(value, float) and not (math.isfinite(value) and value > 0)
    ):
        raise _BadRequest('"duration" must be a positive number of seconds')
    if value > MAX_DURATION:
        raise _BadRequest(f'"duration" must be at most {MAX_DURATION} seconds (10 years)')
    return float(value)


def _optional_duration(request: JsonDict) -> float | None:
    """Absent or null: the handler's default (for a ban: the escalation policy's)."""
    return None if request.get("duration") is None else _required_duration(request)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _unregister(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(sock)
