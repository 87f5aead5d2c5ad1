# The control socket, client side: what `guardian status`, `guardian grants` and scripts use to
# talk to the daemon. One JSON object per line each way (see guardian/control.py). Every failure
# becomes a ControlClientError whose message is meant for the operator as it stands:
# "guardian is not running (no socket at /run/guardian/control.sock)", "permission denied ...".
from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

JsonDict = dict[str, Any]

MAX_REPLY = 64 * 1024 * 1024  # a snapshot of a very busy daemon is a few MiB; never more than this
DEFAULT_TIMEOUT = 5.0


class ControlClientError(Exception):
    """Talking to the daemon failed; str(exc) is a message for the operator."""


class DaemonNotRunning(ControlClientError):
    """No socket file, or nobody listening on it."""


class PermissionDenied(ControlClientError):
    """The socket file's mode, or the daemon's peer-credential check, said no."""


class RequestFailed(ControlClientError):
    """The daemon answered {"ok": false}; code says why (bad_request, failed, too_large, ...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ConnectionLost(ControlClientError):
    """The daemon closed the connection before answering (or ended an event stream)."""


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise DaemonNotRunning(f"guardian is not running (no socket at {path})") from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonNotRunning(f"guardian is not running (nobody listens on {path})") from None
    except PermissionError:
        sock.close()
        raise PermissionDenied(
            f"permission denied on {path}: run as root, or as a member of the guardian's read group"
        ) from None
    except TimeoutError:
        sock.close()
        raise ControlClientError(f"guardian did not accept a connection on {path}") from None
    except OSError as exc:
        sock.close()
        raise ControlClientError(f"cannot connect to {path}: {exc.strerror or exc}") from None
    return sock


def _check(reply: JsonDict) -> JsonDict:
    if reply.get("ok") is True:
        return reply
    message = str(reply.get("error") or "the daemon refused the request")
    code = str(reply.get("code") or "failed")
    if code in ("denied", "read_only"):
        raise PermissionDenied(message)
    raise RequestFailed(message, code)


class _LineReader:
    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self._path = path
        self._buf = bytearray()

    def read(self, deadline: float | None) -> JsonDict | None:
        """The next object, or None at a clean end of stream. Raises ControlClientError."""
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                if line.strip():
                    return self._parse(line)
                continue
            if len(self._buf) > MAX_REPLY:
                raise ControlClientError(f"reply from {self._path} is larger than {MAX_REPLY}")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlClientError(f"guardian did not answer in time ({self._path})")
                self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ControlClientError(
                    f"guardian did not answer in time ({self._path})"
                ) from None
            except OSError as exc:
                if self._buf.strip():
                    return self._parse(bytes(self._buf))  # what came before the reset
                raise ConnectionLost(
                    f"connection to guardian lost: {exc.strerror or exc}"
                ) from None
            if not data:
                if self._buf.strip():
                    line, self._buf = bytes(self._buf), bytearray()
                    return self._parse(line)
                return None
            self._buf += data

    def _parse(self, line: bytes) -> JsonDict:
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            raise ControlClientError(
                f"guardian sent something that is not JSON ({self._path})"
            ) from None
        if not isinstance(doc, dict):
            raise ControlClientError(f"guardian sent a reply that is not an object ({self._path})")
        return doc


class ControlConnection:
    """One connection used for many requests (the live dashboard polls through one)."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: _LineReader | None = None

    def request(self, cmd: JsonDict) -> JsonDict:
        """Send one request and return its reply (ok: true), or raise ControlClientError."""
        if self._sock is None or self._reader is None:
            self._sock = _connect(self.path, self.timeout)
            self._reader = _LineReader(self._sock, self.path)
        deadline = time.monotonic() + self.timeout
        try:
            reply = _exchange(self._sock, self._reader, cmd, deadline, self.path)
        except ControlClientError:
            self.close()
            raise
        try:
            return _check(reply)
        except ControlClientError:
            if reply.get("code") in ("denied", "too_large", "busy"):
                self.close()  # the daemon closes these connections
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None

    def __enter__(self) -> ControlConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _encode(cmd: JsonDict) -> bytes:
    try:
        return (json.dumps(cmd, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ControlClientError(f"request is not JSON-able: {exc}") from None


def _exchange(
    sock: socket.socket, reader: _LineReader, cmd: JsonDict, deadline: float, path: str
) -> JsonDict:
    """Send a request, read its reply. A daemon that refused us at accept has already sent one
    error line and closed: the send may fail (EPIPE), but that line is still there to read."""
    data = _encode(cmd)
    send_error: OSError | None = None
    try:
        sock.sendall(data)
    except OSError as exc:
        send_error = exc
    reply = reader.read(deadline)
    if reply is None:
        why = "" if send_error is None else f": {send_error.strerror or send_error}"
        raise ConnectionLost(f"guardian closed the connection ({path}){why}")
    return reply


def request(path: str, cmd: JsonDict, timeout: float = DEFAULT_TIMEOUT) -> JsonDict:
    """One request on a fresh connection: the reply object (with "ok": true)."""
    with ControlConnection(path, timeout) as connection:
        return connection.request(cmd)


def stream(path: str, cmd: JsonDict, timeout: float = DEFAULT_TIMEOUT) -> Iterator[JsonDict]:
    """Send a streaming request (e.g. {"cmd": "events"}) and yield every object that follows the
    acknowledgement, for as long as the daemon sends them. Raises ConnectionLost when the daemon
    ends the stream (it stopped, or dropped us for not reading fast enough)."""
    sock = _connect(path, timeout)
    try:
        reader = _LineReader(sock, path)
        _check(_exchange(sock, reader, cmd, time.monotonic() + timeout, path))
        sock.settimeout(None)
        while True:
            item = reader.read(None)
            if item is None:
                raise ConnectionLost(f"guardian ended the stream ({path})")
            yield item
    finally:
        sock.close()
