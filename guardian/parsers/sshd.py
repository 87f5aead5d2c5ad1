# sshd's multi-line rules, pure and stateful: messages of one sshd connection (one PID) in, what
# they add up to out — failures to count, sessions opened and closed. It reads no clock: a line's
# wall-clock time is data passed in, used only to age out forgotten connections.
#
# Theory of operation (per PID; spec/sshd-events.md §4 "Counting, as the field does it"):
#   * Every line that names a host teaches the PID its address. A host-less failure ("Disconnecting:
#     Too many authentication failures", "User U not allowed because account is locked", the
#     aggressive table's kex lines) waits until the PID's address is known, then counts once.
#   * Some attempts are *held*: "Failed publickey/none for VALIDUSER" (a client with several keys,
#     and every client's first "none" probe) and PAM's "authentication failure" (its "Failed
#     password" twin follows after the fail delay). Held attempts count only when the connection
#     turns out hostile: MaxAuthTries is exhausted, or it used more than one user name. "Accepted
#     for U" forgets them — unless the connection tried other users first ("failed as A, Accepted
#     as B" still counts A's attempts, and the Accepted itself as one more).
#   * A "Failed password" consumes the held PAM attempt of the same user: one attempt, one count.
#   * A line that ends the connection (closed, reset, disconnected, Accepted) forgets the PID.
#   * Each line yields at most one failure Detection; `attempts` says how many attempts it stands
#     for (held and host-less ones released by this line included).
# Memory is bounded: at most `max_connections` PIDs (least recently used go first), each at most
# `max_age` seconds after its last line, a few users and held attempts each.
#
# The age check runs at the first line of each new whole second of log time (not one second after
# the previous check): its schedule then depends on the lines alone, so two detectors fed the same
# recent lines reach the same state whatever they saw long before — what lets a file be scanned in
# parallel pieces and each piece's start state be checked exactly (state(), parallel_scan).
#
# Speed (a 1 GB auth.log is millions of lines): feed_fields() is the rules' one entry point —
# feed() and feed_message() unpack into it, and the bulk scanner (authlog_chunk) calls it with a
# line's fields straight from its regex, building no SshdMessage; Detection is a NamedTuple.
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal, NamedTuple, TypeAlias

from guardian.addresses import IPAddress
from guardian.parsers.sshd_messages import Kind, Mode, SshdMessage, parse_message

__all__ = [
    "Detection",
    "DetectionKind",
    "DetectorState",
    "Kind",
    "Mode",
    "SshdDetector",
    "SshdMessage",
    "parse_message",
]

DetectionKind: TypeAlias = Literal["failure", "success", "session_closed"]

_MAX_USERS = 8
_MAX_HELD = 32
_MAX_PENDING = 32
# Sessions whose sshd said "Disconnected"/"Received disconnect", kept for PAM's "session closed"
# line that follows (it names no address). The two are consecutive lines of one process, so a
# short ring suffices; without PAM nothing follows and the ring forgets them (the oldest beyond
# 256, and any older than max_age).
_MAX_ENDED = 256
_PAM_HELD = "pam_unix_auth_failure"
_PAM_SESSION_CLOSED = "pam_session_closed"
_PASSWORD_RULES = frozenset({"failed_password", "failed_keyboard_interactive"})
_new = tuple.__new__  # builds a NamedTuple from a full tuple without its Python-level __new__


class Detection(NamedTuple):
    """What the multi-line rules concluded from one line.

    failure: `attempts` failed login attempts from `source` (None when sshd logged a host name,
    then in `host_name`: never resolved, so never banned). success: "Accepted". session_closed:
    an authenticated session ended (source/port from the line, or from its Accepted line).

    A NamedTuple, like SshdMessage: immutable and typed, and about five times cheaper to build
    than a frozen dataclass (a busy auth.log yields hundreds of thousands of these)."""

    kind: DetectionKind
    rule: str
    source: IPAddress | None
    port: int | None
    user: str | None
    pid: int | None
    wall_time: float | None
    attempts: int = 1
    host_name: str | None = None
    method: str | None = None


class _Connection:
    """One PID's state before authentication. A plain slotted class, not a dataclass: one is
    made per connection of a brute force, and this __init__ is about twice as fast."""

    __slots__ = (
        "held", "host_name", "pending", "pending_exhausted", "pending_rule", "port", "seen",
        "source", "users",
    )  # fmt: skip

    def __init__(self) -> None:
        self.source: IPAddress | None = None
        self.host_name: str | None = None
        self.port: int | None = None
        self.users: list[str] = []
        self.held: list[tuple[str | None, bool]] = []  # (user, is PAM's line)
        self.pending = 0
        self.pending_rule = ""
        self.pending_exhausted = False
        self.seen: float | None = None

    @property
    def has_address(self) -> bool:
        return self.source is not None or self.host_name is not None


# An authenticated session's (source, host_name, port, user): a plain tuple, unpacked by index.
_Session: TypeAlias = tuple[IPAddress | None, str | None, int | None, str | None]
# A session in the _ended ring, and the log time its first close line came (None: untimed).
_Ended: TypeAlias = tuple[_Session, float | None]
# What state() returns: everything the rules' future output depends on, in plain values.
_ConnectionState: TypeAlias = tuple[
    IPAddress | None,  # source
    str | None,  # host_name
    int | None,  # port
    tuple[str, ...],  # users
    tuple[tuple[str | None, bool], ...],  # held
    int,  # pending
    str,  # pending_rule
    bool,  # pending_exhausted
    float | None,  # seen
]
DetectorState: TypeAlias = tuple[
    Mode,
    int,  # max_connections
    float,  # max_age
    int,  # max_sessions
    float | None,  # the latest log time
    float,  # the next age check
    tuple[tuple[int, _ConnectionState], ...],
    tuple[tuple[int, _Session], ...],
    tuple[tuple[int, _Ended], ...],
]


class SshdDetector:
    """Feed sshd messages per PID; get failures, successes and session ends back."""

    __slots__ = (
        "_connections", "_ended", "_latest", "_next_expiry", "_sessions", "max_age",
        "max_connections", "max_sessions", "mode",
    )  # fmt: skip

    def __init__(
        self,
        mode: Mode = "normal",
        *,
        max_connections: int = 4096,
        max_age: float = 900.0,
        max_sessions: int = 4096,
    ) -> None:
        self.mode: Mode = mode
        self.max_connections = max_connections
        self.max_age = max_age  # > LoginGraceTime (120 s default): pre-auth state is over by then
        self.max_sessions = max_sessions
        self._connections: OrderedDict[int, _Connection] = OrderedDict()
        self._latest: float | None = None  # the latest wall time fed
        self._next_expiry = float("-inf")  # log time of the next age check (once a log second)
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._ended: OrderedDict[int, _Ended] = OrderedDict()  # see _MAX_ENDED

    @property
    def tracked(self) -> int:
        """How many PIDs' pre-authentication state is held (for tests and status)."""
        return len(self._connections)

    @property
    def sessions_held(self) -> int:
        """How many authenticated sessions' details are held (open ones, and the _ended ring)."""
        return len(self._sessions) + len(self._ended)

    def state(self) -> DetectorState:
        """Everything this detector's future detections depend on besides the lines to come,
        as plain comparable, picklable values: two detectors (same mode and limits) with equal
        states give the same detections for the same lines. parallel_scan checks with it that a
        piece scanned from a warm-up reached the state the scan before it left."""
        return (
            self.mode,
            self.max_connections,
            self.max_age,
            self.max_sessions,
            self._latest,
            self._next_expiry,
            tuple((pid, _connection_state(conn)) for pid, conn in self._connections.items()),
            tuple(self._sessions.items()),
            tuple(self._ended.items()),
        )

    def restore(self, state: DetectorState) -> None:
        """Take over a state() of another detector (same mode and limits, else ValueError)."""
        limits, (latest, next_expiry, conns, sessions, ended) = state[:4], state[4:]
        if limits != (self.mode, self.max_connections, self.max_age, self.max_sessions):
            raise ValueError("a state of a detector with another mode or other limits")
        self._latest = latest
        self._next_expiry = next_expiry
        self._connections = OrderedDict((pid, _connection_from(fields)) for pid, fields in conns)
        self._sessions = OrderedDict(sessions)
        self._ended = OrderedDict(ended)

    @property
    def latest(self) -> float | None:
        """The latest log time fed (None before the first timed line)."""
        return self._latest

    def feed(
        self, pid: int | None, message: str, wall_time: float | None = None
    ) -> list[Detection]:
        """One sshd MESSAGE of process `pid` (None: no per-connection state, as for lines
        without a PID)."""
        parsed = parse_message(message, self.mode)
        if parsed is None:
            return []
        return self.feed_message(pid, parsed, wall_time)

    def feed_message(
        self, pid: int | None, msg: SshdMessage, wall_time: float | None = None
    ) -> list[Detection]:
        """Like feed(), for a message already parsed (in this detector's mode)."""
        kind = msg.kind
        if kind == "not_failure":
            return []
        if pid is None:
            self._clock(wall_time)
            return self._stateless(msg, wall_time)
        return self.feed_fields(
            pid, kind, msg.rule, msg.source, msg.port, msg.user, msg.method, msg.host_name,
            msg.held, msg.exhausted, msg.closes, wall_time,
        )  # fmt: skip

    def feed_fields(
        self,
        pid: int,
        kind: Kind,
        rule: str,
        source: IPAddress | None,
        port: int | None,
        user: str | None,
        method: str | None,
        host_name: str | None,
        held: bool,
        exhausted: bool,
        closes: bool,
        wall_time: float | None,
    ) -> list[Detection]:
        """feed_message() for a message of a known PID given as the SshdMessage fields the
        rules read (kind is never "not_failure" here). For bulk parsers (authlog_chunk), which
        take a line's fields straight from a regex match and need not build an SshdMessage."""
        # Written for CPython's interpreter (a busy auth.log feeds millions of lines through
        # here): the kinds most lines have first, no helper calls on the common paths.
        if wall_time is not None:
            self._latest = wall_time
            if wall_time >= self._next_expiry:
                self._expire(wall_time)
                self._next_expiry = math.floor(wall_time) + 1.0
        if kind == "session_closed":
            # With PAM, "session closed" is the session's last line (after "Received
            # disconnect" and "Disconnected from user"); without PAM those two are. The first
            # close line moves the session to the short _ended ring, where the later ones find
            # it: a sshd without PAM leaves nothing behind per session (it used to leave its
            # entry until 4,096 newer sessions pushed it out).
            self._connections.pop(pid, None)
            session = self._sessions.pop(pid, None)
            if rule == _PAM_SESSION_CLOSED:
                if session is None:
                    ended = self._ended.pop(pid, None)
                    if ended is not None:
                        session = ended[0]
            elif session is not None:
                ring = self._ended
                ring.pop(pid, None)  # (a reused PID's old entry: the new one goes to the end)
                ring[pid] = (session, self._latest)
                if len(ring) > _MAX_ENDED:
                    ring.popitem(last=False)
            else:
                ended = self._ended.get(pid)
                if ended is not None:
                    session = ended[0]
            if session is not None:
                if source is None and host_name is None:
                    source, host_name, port = session[0], session[1], session[2]
                if user is None:
                    user = session[3]
            closed = ("session_closed", rule, source, port, user, pid, wall_time, 1, host_name)
            return [_new(Detection, (*closed, None))]
        if kind == "success":
            return self._accepted(pid, rule, source, port, user, method, host_name, wall_time)

        # ---- before authentication (failure, helper, hostless_failure) ----
        connections = self._connections
        conn = connections.get(pid)
        if conn is None:
            if closes and not held and kind == "helper":
                return []  # the end of a connection we know nothing about: nothing to resolve
            conn = connections[pid] = _Connection()
            if len(connections) > self.max_connections:
                self._evict()
        elif not closes:  # (a closing line removes it below)
            connections.move_to_end(pid)
        conn.seen = self._latest  # a line without a time counts as seen at the latest time known
        if source is not None or host_name is not None:
            conn.source, conn.host_name = source, host_name
            if port is not None:
                conn.port = port
        users = conn.users
        if user is not None and user not in users and len(users) < _MAX_USERS:
            users.append(user)

        attempts = 0
        release = exhausted
        conn_held = conn.held
        if kind == "failure":
            attempts = 1
            if conn_held and rule in _PASSWORD_RULES:
                _consume_pam(conn_held, user)
        elif kind == "hostless_failure":
            conn.pending = min(conn.pending + 1, _MAX_PENDING)
            conn.pending_rule = rule
            conn.pending_exhausted |= exhausted
            release = False
        elif held and len(conn_held) < _MAX_HELD:
            conn_held.append((user, rule == _PAM_HELD))

        if conn.source is not None or conn.host_name is not None:  # conn.has_address
            if conn.pending:
                if not attempts:
                    rule = conn.pending_rule  # the failure is the host-less line's
                attempts += conn.pending
                release |= conn.pending_exhausted
                conn.pending, conn.pending_exhausted = 0, False
            if conn_held and (release or len(users) > 1):
                if not attempts:
                    rule = "several_users"
                attempts += len(conn_held)
                conn_held.clear()

        if closes:
            del connections[pid]
        if not attempts:
            return []
        if source is None and host_name is None:  # the failure is the connection's
            source, host_name, port = conn.source, conn.host_name, conn.port
        if user is None and users:
            user = users[-1]
        return [
            _new(
                Detection,
                ("failure", rule, source, port, user, pid, wall_time, attempts, host_name, method),
            )
        ]

    # ---- the rules after authentication -----------------------------------------------------

    def _accepted(
        self,
        pid: int,
        rule: str,
        source: IPAddress | None,
        port: int | None,
        user: str | None,
        method: str | None,
        host_name: str | None,
        wall_time: float | None,
    ) -> list[Detection]:
        out: list[Detection] = []
        conn = self._connections.pop(pid, None)
        if conn is not None:
            attempts = conn.pending  # host-less failures before: the address is known now
            users = conn.users
            if users and (user is None or users.count(user) != len(users)):
                # Failed as one user, Accepted as another: the earlier attempts stand.
                attempts += len(conn.held) + 1
            if attempts:
                out.append(
                    self._failure(pid, "accepted_other_user", source, port, user, method,
                                  host_name, conn, attempts, wall_time)
                )  # fmt: skip
        out.append(
            _new(
                Detection,
                ("success", rule, source, port, user, pid, wall_time, 1, host_name, method),
            )
        )
        sessions = self._sessions
        sessions[pid] = (source, host_name, port, user)
        sessions.move_to_end(pid)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        return out

    def _stateless(self, msg: SshdMessage, wall_time: float | None) -> list[Detection]:
        if msg.kind == "failure":
            return [
                Detection(
                    "failure",
                    msg.rule,
                    msg.source,
                    msg.port,
                    msg.user,
                    None,
                    wall_time,
                    host_name=msg.host_name,
                    method=msg.method,
                )
            ]
        if msg.kind in ("success", "session_closed"):
            kind: DetectionKind = "success" if msg.kind == "success" else "session_closed"
            return [
                Detection(
                    kind,
                    msg.rule,
                    msg.source,
                    msg.port,
                    msg.user,
                    None,
                    wall_time,
                    host_name=msg.host_name,
                    method=msg.method,
                )
            ]
        return []

    # ---- bookkeeping ------------------------------------------------------------------------

    def _clock(self, wall_time: float | None) -> None:
        """A line's time: the latest seen, and (at most once a log second) the age check."""
        if wall_time is not None:
            self._latest = wall_time
            if wall_time >= self._next_expiry:
                self._expire(wall_time)
                self._next_expiry = math.floor(wall_time) + 1.0

    @staticmethod
    def _failure(
        pid: int,
        rule: str,
        source: IPAddress | None,
        port: int | None,
        user: str | None,
        method: str | None,
        host_name: str | None,
        conn: _Connection,
        attempts: int,
        wall_time: float | None,
    ) -> Detection:
        """A failure of this line, or (when the line names no address) of its connection."""
        if source is None and host_name is None:
            source, host_name, port = conn.source, conn.host_name, conn.port
        if user is None and conn.users:
            user = conn.users[-1]
        return _new(
            Detection,
            ("failure", rule, source, port, user, pid, wall_time, attempts, host_name, method),
        )

    def _evict(self) -> None:
        """Forget the least recently used connections beyond max_connections."""
        while len(self._connections) > self.max_connections:
            self._connections.popitem(last=False)

    def _expire(self, now: float) -> None:
        # Least recently used first, so the oldest lines are at the front (of the ring too).
        horizon = now - self.max_age
        ring = self._ended
        while ring:
            at = next(iter(ring.values()))[1]
            if at is None or at >= horizon:
                break
            ring.popitem(last=False)
        connections = self._connections
        while connections:
            pid = next(iter(connections))
            seen = connections[pid].seen
            if seen is None or seen >= horizon:
                return
            del connections[pid]


def _connection_from(fields: _ConnectionState) -> _Connection:
    conn = _Connection()
    (
        conn.source, conn.host_name, conn.port, users, held, conn.pending, conn.pending_rule,
        conn.pending_exhausted, conn.seen,
    ) = fields  # fmt: skip
    conn.users = list(users)
    conn.held = list(held)
    return conn


def _connection_state(conn: _Connection) -> _ConnectionState:
    return (
        conn.source, conn.host_name, conn.port, tuple(conn.users), tuple(conn.held), conn.pending,
        conn.pending_rule, conn.pending_exhausted, conn.seen,
    )  # fmt: skip


def _consume_pam(held: list[tuple[str | None, bool]], user: str | None) -> None:
    """A "Failed password for U" is the same attempt as a held PAM failure of U (or of an
    unknown user: pam_unix names no user it cannot find)."""
    for i, (held_user, is_pam) in enumerate(held):
        if is_pam and (held_user is None or held_user == user):
            del held[i]
            return
