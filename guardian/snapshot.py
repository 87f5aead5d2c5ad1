# The status snapshot's wire schema: what the daemon tells `guardian status`, scripts and the
# metrics writer about itself, as frozen dataclasses with a JSON form. Everything that crosses the
# control socket as "the state" is declared here, so this file is the whole output vocabulary.
#
# Decisions, because the engine's clock is monotonic and a monotonic time means nothing in another
# process:
# - instants (`taken_at`, `opened_at`, `since`, `until`, an event's `at`) are wall-clock epoch
#   seconds, converted once in build_status() from the engine's monotonic clock;
# - durations (`uptime`, `time_left`) are relative seconds, valid as of `taken_at`;
# - a renderer computes "how long ago" as `taken_at - instant`, from the snapshot alone, so it
#   stays a pure function (DESIGN.md principle 7) and golden renders are reproducible.
#
# Sections the daemon may not have yet (sessions, bans, spa, on-demand sshd) are None when absent
# and a (possibly empty) tuple/object when present: "not tracked" and "none right now" differ.
# Readers ignore unknown keys, so adding a section never breaks an older `guardian status`; only
# an incompatible change bumps SCHEMA_VERSION.
#
# from_json() validates every field and raises SnapshotError naming the path of the bad field
# (`grants[3].source: expected an IP address`); it never lets a KeyError or TypeError escape.
from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from guardian.actions import Notice
from guardian.engine import EngineSnapshot

SCHEMA_VERSION = 1
RECENT_EVENTS = 50  # events kept for the dashboard's "recent events" (the stream has them all)

# Grant states the engine uses (guardian/engine/grants.py); others are carried as given.
GRANT_STATES: tuple[str, ...] = ("window", "in_session", "linger")

JsonDict = dict[str, Any]


class SnapshotError(ValueError):
    """A snapshot document that does not follow the schema; the message names the field."""


# ---- the schema ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatcherStatus:
    """One watcher (knock, conntrack, journal, ...): is it delivering, and if not, why."""

    name: str
    up: bool
    reason: str = ""
    off: bool = False  # not asked for (config or option): not delivering, and not a fault


@dataclass(frozen=True, slots=True)
class SshdStatus:
    """The on-demand sshd: state is a word like "stopped", "starting", "running"."""

    state: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SpaStatus:
    """Single Packet Authorization: where packets are captured ("udp/62201"; nothing listens),
    the stanza names, refusals per reason (engine/spa.py REFUSAL_REASONS) and the replay
    digests held (two per authentic packet: its wire text and its decrypted contents)."""

    listen: str
    stanzas: tuple[str, ...] = ()
    refusals: Mapping[str, int] = field(default_factory=dict)
    replays: int = 0


@dataclass(frozen=True, slots=True)
class Header:
    """The daemon itself, at the instant the snapshot was taken."""

    version: str
    pid: int
    taken_at: float  # epoch seconds
    uptime: float  # seconds
    config_path: str
    table_installed: bool
    watchers: tuple[WatcherStatus, ...] = ()
    sshd: SshdStatus | None = None  # None: no on-demand sshd configured (or not supported yet)


@dataclass(frozen=True, slots=True)
class GrantInfo:
    """A source allowed through the gate. door is the door, SPA stanza, "operator" or "adopted"."""

    source: str
    door: str
    state: str  # "window", "in_session", "linger" (see GRANT_STATES)
    sessions: int
    opened_at: float  # epoch seconds
    expires_at: float  # epoch seconds: the current deadline of the state (window end, linger end)
    time_left: float  # seconds, as of taken_at
    pending: int = 0  # connections from the source still authenticating (within login grace)


@dataclass(frozen=True, slots=True)
class EveryoneInfo:
    """An everyone door's open window: the guarded ports open to EVERY source until expires_at
    (a hard bound: never extended). Absent from the wire when none is open."""

    door: str
    opened_at: float  # epoch seconds
    expires_at: float  # epoch seconds
    time_left: float  # seconds, as of taken_at


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A connection to a guarded port, and the sshd login on it once authenticated."""

    source: str
    sport: int
    dport: int  # 0 while only the journal knows the connection
    user: str | None  # None until sshd says who logged in
    since: float  # epoch seconds
    authenticated: bool
    origin: str  # which watcher saw it first: "conntrack", "sockets", "journal"
    auth: str = ""  # the engine's word: "pending", "accepted", "assumed", "expired" ("": unknown)


@dataclass(frozen=True, slots=True)
class BanInfo:
    """A banned source (an address or a network)."""

    source: str
    reason: str
    since: float  # epoch seconds
    until: float | None  # epoch seconds; None = until unbanned
    offence: int  # 1 for a first ban, 2 for the second, ... (escalation)


@dataclass(frozen=True, slots=True)
class EventInfo:
    """Something that happened (a Notice of the engine, a ban, an SPA verdict), for the stream."""

    at: float  # epoch seconds
    kind: str
    source: str | None = None
    door: str = ""
    detail: str = ""

    def to_json(self) -> JsonDict:
        return {
            "at": self.at,
            "kind": self.kind,
            "source": self.source,
            "door": self.door,
            "detail": self.detail,
        }

    @staticmethod
    def from_json(doc: object) -> EventInfo:
        return _event(doc, "event")


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    header: Header
    grants: tuple[GrantInfo, ...] = ()
    sessions: tuple[SessionInfo, ...] | None = None
    bans: tuple[BanInfo, ...] | None = None
    spa: SpaStatus | None = None
    events: tuple[EventInfo, ...] = ()  # oldest first
    counters: Mapping[str, int] = field(default_factory=dict)  # monotonic counts since start
    gauges: Mapping[str, float] = field(default_factory=dict)  # current levels (attempts, ...)
    everyone: EveryoneInfo | None = None  # an everyone door's open window

    def to_json(self) -> JsonDict:
        doc = self._to_json()
        if self.everyone is not None:  # only when open: snapshots without one are unchanged
            e = self.everyone
            doc["everyone"] = {
                "door": e.door,
                "opened_at": e.opened_at,
                "expires_at": e.expires_at,
                "time_left": e.time_left,
            }
        return doc

    def _to_json(self) -> JsonDict:
        h = self.header
        return {
            "schema": SCHEMA_VERSION,
            "header": {
                "version": h.version,
                "pid": h.pid,
                "taken_at": h.taken_at,
                "uptime": h.uptime,
                "config_path": h.config_path,
                "table_installed": h.table_installed,
                "watchers": [
                    {"name": w.name, "up": w.up, "reason": w.reason, "off": w.off}
                    for w in h.watchers
                ],
                "sshd": None
                if h.sshd is None
                else {"state": h.sshd.state, "detail": h.sshd.detail},
            },
            "grants": [
                {
                    "source": g.source,
                    "door": g.door,
                    "state": g.state,
                    "sessions": g.sessions,
                    "opened_at": g.opened_at,
                    "expires_at": g.expires_at,
                    "time_left": g.time_left,
                    "pending": g.pending,
                }
                for g in self.grants
            ],
            "sessions": None
            if self.sessions is None
            else [
                {
                    "source": s.source,
                    "sport": s.sport,
                    "dport": s.dport,
                    "user": s.user,
                    "since": s.since,
                    "authenticated": s.authenticated,
                    "origin": s.origin,
                    "auth": s.auth,
                }
                for s in self.sessions
            ],
            "bans": None
            if self.bans is None
            else [
                {
                    "source": b.source,
                    "reason": b.reason,
                    "since": b.since,
                    "until": b.until,
                    "offence": b.offence,
                }
                for b in self.bans
            ],
            "spa": None
            if self.spa is None
            else {
                "listen": self.spa.listen,
                "stanzas": list(self.spa.stanzas),
                "refusals": dict(self.spa.refusals),
                "replays": self.spa.replays,
            },
            "events": [e.to_json() for e in self.events],
            "counters": dict(self.counters),
            "gauges": dict(self.gauges),
        }

    @staticmethod
    def from_json(doc: object) -> StatusSnapshot:
        return from_json(doc)


# ---- validation (from_json) ------------------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Typed access to one JSON object; every failure is a SnapshotError naming the field path."""

    def __init__(self, doc: object, path: str) -> None:
        if not isinstance(doc, dict):
            raise SnapshotError(f"{path}: expected an object, got {_kind(doc)}")
        self.doc: dict[str, object] = doc
        self.path = path

    def _get(self, key: str, optional: bool) -> object:
        if key not in self.doc:
            if optional:
                return None
            raise SnapshotError(f"{self.path}.{key}: missing")
        return self.doc[key]

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def text(self, key: str, *, nonempty: bool = False) -> str:
        value = self._get(key, False)
        if not isinstance(value, str):
            raise SnapshotError(f"{self.where(key)}: expected a string, got {_kind(value)}")
        if nonempty and not value:
            raise SnapshotError(f"{self.where(key)}: must not be empty")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._get(key, True)
        if value is None:
            return None
        if not isinstance(value, str):
            raise SnapshotError(f"{self.where(key)}: expected a string or null, got {_kind(value)}")
        return value

    def flag(self, key: str) -> bool:
        return self._bool(self._get(key, False), key)

    def opt_flag(self, key: str) -> bool | None:
        """A flag a daemon of an older version may leave out (None then)."""
        value = self._get(key, True)
        return None if value is None else self._bool(value, key)

    def _bool(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise SnapshotError(f"{self.where(key)}: expected true or false, got {_kind(value)}")
        return value

    def integer(self, key: str, *, low: int = 0, high: int | None = None) -> int:
        return _int(self._get(key, False), self.where(key), low, high)

    def number(self, key: str) -> float:
        return _num(self._get(key, False), self.where(key))

    def opt_number(self, key: str) -> float | None:
        value = self._get(key, True)
        return None if value is None else _num(value, self.where(key))

    def items(self, key: str, item: Callable[[object, str], T]) -> tuple[T, ...]:
        value = self._get(key, False)
        if not isinstance(value, list):
            raise SnapshotError(f"{self.where(key)}: expected a list, got {_kind(value)}")
        return tuple(item(v, f"{self.where(key)}[{i}]") for i, v in enumerate(value))

    def opt_items(self, key: str, item: Callable[[object, str], T]) -> tuple[T, ...] | None:
        """An optional section: absent or null means "not tracked" (None), not "empty"."""
        return None if self._get(key, True) is None else self.items(key, item)

    def child(self, key: str) -> _Reader:
        return _Reader(self._get(key, False), self.where(key))

    def opt_child(self, key: str) -> _Reader | None:
        return None if self._get(key, True) is None else self.child(key)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _int(value: object, where: str, low: int = 0, high: int | None = None) -> int:
    # bool is an int in Python but not in JSON's eyes: true is not a port number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise SnapshotError(f"{where}: expected an integer, got {_kind(value)}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise SnapshotError(f"{where}: {value} is out of range (must be {bounds})")
    return value


def _num(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SnapshotError(f"{where}: expected a number, got {_kind(value)}")
    try:
        number = float(value)  # an integer beyond a float's range raises OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SnapshotError(f"{where}: expected a finite number")
    return number


def _address(text: str, where: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise SnapshotError(f"{where}: expected an IP address, got {text!r}") from None
    return text


def _address_or_network(text: str, where: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SnapshotError(f"{where}: expected an IP address or network, got {text!r}") from None
    return text


def _string_item(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise SnapshotError(f"{where}: expected a string, got {_kind(value)}")
    return value


def _watcher(doc: object, path: str) -> WatcherStatus:
    r = _Reader(doc, path)
    name, up, reason = r.text("name", nonempty=True), r.flag("up"), r.text("reason")
    return WatcherStatus(name, up, reason, r.opt_flag("off") or False)


def _grant(doc: object, path: str) -> GrantInfo:
    r = _Reader(doc, path)
    return GrantInfo(
        source=_address(r.text("source"), r.where("source")),
        door=r.text("door"),
        state=r.text("state", nonempty=True),
        sessions=r.integer("sessions"),
        opened_at=r.number("opened_at"),
        expires_at=r.number("expires_at"),
        time_left=r.number("time_left"),
        pending=r.integer("pending") if "pending" in r.doc else 0,
    )


def _session(doc: object, path: str) -> SessionInfo:
    r = _Reader(doc, path)
    return SessionInfo(
        source=_address(r.text("source"), r.where("source")),
        sport=r.integer("sport", high=65535),
        dport=r.integer("dport", high=65535),
        user=r.opt_text("user"),
        since=r.number("since"),
        authenticated=r.flag("authenticated"),
        origin=r.text("origin"),
        auth=r.opt_text("auth") or "",
    )


def _ban(doc: object, path: str) -> BanInfo:
    r = _Reader(doc, path)
    return BanInfo(
        source=_address_or_network(r.text("source"), r.where("source")),
        reason=r.text("reason"),
        since=r.number("since"),
        until=r.opt_number("until"),
        offence=r.integer("offence", low=1),
    )


def _event(doc: object, path: str) -> EventInfo:
    r = _Reader(doc, path)
    return EventInfo(
        at=r.number("at"),
        kind=r.text("kind", nonempty=True),
        source=r.opt_text("source"),
        door=r.text("door"),
        detail=r.text("detail"),
    )


def _int_map(doc: object, path: str) -> dict[str, int]:
    r = _Reader(doc, path)
    return {key: r.integer(key) for key in r.doc}


def _num_map(doc: object, path: str) -> dict[str, float]:
    r = _Reader(doc, path)
    return {key: r.number(key) for key in r.doc}


def from_json(doc: object) -> StatusSnapshot:
    """Validate and load a snapshot document (as json.loads returned it). Raises SnapshotError."""
    r = _Reader(doc, "snapshot")
    schema = r.integer("schema")
    if schema != SCHEMA_VERSION:
        raise SnapshotError(
            f"snapshot.schema: version {schema} is not supported (this guardian reads version "
            f"{SCHEMA_VERSION}); the daemon and the command line are from different releases"
        )
    h = r.child("header")
    sshd = h.opt_child("sshd")
    spa = r.opt_child("spa")
    every = r.opt_child("everyone")
    header = Header(
        version=h.text("version"),
        pid=h.integer("pid"),
        taken_at=h.number("taken_at"),
        uptime=h.number("uptime"),
        config_path=h.text("config_path"),
        table_installed=h.flag("table_installed"),
        watchers=h.items("watchers", _watcher),
        sshd=None if sshd is None else SshdStatus(sshd.text("state"), sshd.text("detail")),
    )
    return StatusSnapshot(
        header=header,
        grants=r.items("grants", _grant),
        sessions=r.opt_items("sessions", _session),
        bans=r.opt_items("bans", _ban),
        spa=None
        if spa is None
        else SpaStatus(
            spa.text("listen"),
            spa.items("stanzas", _string_item),
            _int_map(spa.doc.get("refusals", {}), spa.where("refusals")),
            spa.integer("replays") if "replays" in spa.doc else 0,
        ),
        events=r.items("events", _event),
        counters=_int_map(r.doc.get("counters", {}), r.where("counters")),
        gauges=_num_map(r.doc.get("gauges", {}), r.where("gauges")),
        everyone=None
        if every is None
        else EveryoneInfo(
            every.text("door"),
            every.number("opened_at"),
            every.number("expires_at"),
            every.number("time_left"),
        ),
    )


# ---- building a snapshot in the daemon -------------------------------------------------------


def build_status(
    engine: EngineSnapshot,
    *,
    wall_now: float,
    started_at: float,
    version: str,
    pid: int,
    config_path: str,
    table_installed: bool,
    watchers: Sequence[WatcherStatus] = (),
    sshd: SshdStatus | None = None,
    bans: Sequence[BanInfo] | None = None,
    spa: SpaStatus | None = None,
    events: Sequence[EventInfo] = (),
    extra_counters: Mapping[str, int] | None = None,
    extra_gauges: Mapping[str, float] | None = None,
) -> StatusSnapshot:
    """The wire snapshot from the engine's snapshot and what only the daemon knows. Pure.

    `engine.now` and `started_at` are on the engine's monotonic clock; `wall_now` is the wall
    clock (time.time()) read at the same instant, used once to turn monotonic instants into epoch
    seconds."""
    offset = wall_now - engine.now
    sessions = tuple(
        SessionInfo(
            source=str(s.source),
            sport=s.sport,
            dport=s.dport,
            user=s.user or None,
            since=s.since + offset,
            authenticated=s.authenticated,
            origin=s.origin,
            auth=str(s.auth),
        )
        for s in engine.sessions
    )
    grants = tuple(
        GrantInfo(
            source=str(g.source),
            door=g.door,
            state=str(g.state),
            sessions=g.sessions,
            opened_at=g.opened_at + offset,
            expires_at=g.expires_at + offset,
            time_left=g.time_left,
            pending=g.pending,
        )
        for g in engine.grants
    )
    counters = dict(engine.counters)
    # Which watcher reported how many failures (journal, btmp, authlog): one attempt reported by
    # all three counts once in failures_counted but shows in each of these.
    counters.update({f"failures_seen_{o}": n for o, n in sorted(engine.failures_by_origin.items())})
    counters.update(extra_counters or {})
    return StatusSnapshot(
        header=Header(
            version=version,
            pid=pid,
            taken_at=wall_now,
            uptime=max(0.0, engine.now - started_at),
            config_path=config_path,
            table_installed=table_installed,
            watchers=tuple(watchers),
            sshd=sshd,
        ),
        grants=grants,
        sessions=sessions,
        bans=None if bans is None else tuple(bans),
        spa=spa,
        events=tuple(events),
        counters=counters,
        gauges={
            "attempts": float(engine.attempts),
            "attempt_records": float(engine.attempt_records),
            "timer_entries": float(engine.timer_entries),
            **(extra_gauges or {}),
        },
        everyone=None
        if engine.everyone is None
        else EveryoneInfo(
            door=engine.everyone.door,
            opened_at=engine.everyone.since + offset,
            expires_at=engine.everyone.until + offset,
            time_left=max(0.0, engine.everyone.until - engine.now),
        ),
    )


def event_from_notice(notice: Notice, at: float) -> EventInfo:
    """An engine Notice as a stream event; `at` is the wall clock (time.time()) when it came out."""
    return EventInfo(
        at=at,
        kind=notice.kind,
        source=None if notice.source is None else str(notice.source),
        door=notice.door,
        detail=notice.detail,
    )


class RecentEvents:
    """The last `size` events, oldest first: the dashboard's "recent events" (bounded memory)."""

    def __init__(self, size: int = RECENT_EVENTS) -> None:
        self._events: deque[EventInfo] = deque(maxlen=size)

    def add(self, event: EventInfo) -> None:
        self._events.append(event)

    def items(self) -> tuple[EventInfo, ...]:
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)
