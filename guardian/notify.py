# sd_notify, stdlib only: tell the service manager READY=1, STATUS=..., WATCHDOG=1, RELOADING=1
# and STOPPING=1 over the datagram socket named by $NOTIFY_SOCKET ("@name" is Linux's abstract
# namespace). Without $NOTIFY_SOCKET (not started by systemd) every call does nothing. The
# variables are taken out of the environment once read, so commands the daemon starts (the
# [sshd] start/stop argv, sshd itself) cannot speak for it; a watchdog whose $WATCHDOG_PID names
# another process is not ours to feed. Sending never blocks and never raises: a service manager
# that went away must not take the daemon with it.
from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("guardian")

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(name: str) -> str | bytes:
    """$NOTIFY_SOCKET as an address for socket.sendto: "@x" is the abstract socket "\\0x"."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC (systemd's advice), or None
    when there is no watchdog for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """The daemon's line to the service manager; a no-op when there is none."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog  # seconds between pings, or None
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        address = socket_address(name) if name else None
        watchdog = watchdog_interval(env, os.getpid()) if address is not None else None
        if unset:
            for variable in _VARIABLES:
                env.pop(variable, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of NAME=value lines; True when it went out."""
        if self._sock is None or self.address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            self.failed += 1
            if self.failed <= 3:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(text.split())
