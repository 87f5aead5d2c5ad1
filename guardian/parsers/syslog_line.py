# One auth.log line, pure: text -> SyslogRecord(wall_time, host, identifier, pid, message) for
# sshd's lines (identifiers `sshd` and `sshd-session`), None for every other line. No clock is
# read: a traditional timestamp has no year and no zone, so the caller passes `reference` (its
# idea of "now", an aware datetime in the log's zone) and the year and zone come from there.
#
# Formats: RFC 3339 (Debian 12's rsyslog: `2025-03-01T00:00:00.048394+00:00 host sshd[PID]: msg`),
# traditional (`Mar  1 00:00:00 host sshd[PID]: msg`, also without host and the `[sshd]:` forms
# older syslogds wrote) and RFC 5424 (`<38>1 2019-07-08T17:40:16.9-04:00 host sshd 57915 - - msg`).
#
# Speed: a line that does not mention "sshd" costs one substring search; timestamps are converted
# through small memo dicts (bounded), since thousands of lines share each second.
from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo
from typing import NamedTuple

IDENTIFIERS = ("sshd", "sshd-session")

# After the timestamp: "[host ]ident[PID]: msg", "[host ]ident: msg", "[ident]: msg", "[ident] msg".
_TAIL = (
    r"(?:(?P<host>\S+) )?\[?(?P<ident>sshd(?:-session)?)\]?(?:\[(?P<pid>\d{1,10})\])?:? "
    r"(?P<msg>.*)"
)
_TRADITIONAL = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)(?P<frac>\.\d+)? " + _TAIL,
    re.S,
)
_RFC3339 = re.compile(
    r"(?P<sec>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?P<frac>\.\d+)?(?P<zone>Z|z|[+-]\d\d:?\d\d)? "
    + _TAIL,
    re.S,
)
# RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG; SD is "-" or [..][..], values quoted
# (a quoted value may hold "]").
_RFC5424 = re.compile(
    r"<\d{1,3}>1 (?P<ts>\S+) (?P<host>\S+) (?P<ident>sshd(?:-session)?) (?P<pid>\d{1,10}|-) \S+ "
    r'(?:-|(?:\[(?:[^\]"\\]|"(?:[^"\\]|\\.)*")*\])+)(?: (?P<msg>.*))?',
    re.S,
)
_STAMP = re.compile(
    r"(?P<sec>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?P<frac>\.\d+)?(?P<zone>Z|z|[+-]\d\d:\d\d)"
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_FUTURE_SLACK = timedelta(days=1)  # clocks disagree a little; a date further ahead is last year's


class SyslogRecord(NamedTuple):
    """An sshd line of a syslog file. `wall_time` is seconds since the epoch (None when
    the line's timestamp cannot be placed: a traditional line without a reference)."""

    wall_time: float | None
    host: str | None
    identifier: str
    pid: int | None
    message: str


def parse_syslog_line(line: str, *, reference: datetime | None = None) -> SyslogRecord | None:
    """Parse one line (a trailing newline is ignored); None unless sshd or sshd-session wrote it.

    reference: an aware datetime, "now" in the zone the log is written in (use a ZoneInfo zone,
    not a fixed offset, so daylight saving is right); needed only for traditional timestamps."""
    if "sshd" not in line:
        return None
    if line[-1:] == "\n":
        line = line[:-1]
    first = line[:1]
    if first.isdigit():
        fast = _rsyslog_fast(line)
        if fast is not None:
            return fast
        m = _RFC3339.match(line)
        if m is None:
            return None
        when = _rfc3339_time(m["sec"], m["frac"], m["zone"])
    elif first == "<":
        return _rfc5424(line)
    else:
        m = _TRADITIONAL.match(line)
        if m is None:
            return None
        when = _traditional_time(m, reference)
    pid = m["pid"]
    return SyslogRecord(when, m["host"], m["ident"], int(pid) if pid else None, m["msg"])


_IDENTIFIER_SET = frozenset(IDENTIFIERS)


def _rsyslog_fast(line: str) -> SyslogRecord | None:
    """Debian's rsyslog line, "STAMP HOST IDENT[PID]: MSG", split without a regex (None: use
    the general path)."""
    stamp, _, rest = line.partition(" ")
    host, _, rest = rest.partition(" ")
    tag, _, msg = rest.partition(" ")
    if tag[-2:] != "]:":
        return None
    ident, _, pid = tag[:-2].partition("[")
    if ident not in _IDENTIFIER_SET or not (pid.isdigit() and pid.isascii() and len(pid) <= 10):
        return None
    if len(stamp) < 20 or stamp[4] != "-" or stamp[10] not in ("T", " "):
        return None
    if stamp[-1:] in ("Z", "z"):
        zone, frac = "Z", stamp[19:-1]
    elif stamp[-6:-5] in ("+", "-") and stamp[-3:-2] == ":":
        zone, frac = stamp[-6:], stamp[19:-6]
    else:
        return None
    if frac and not (frac[0] == "." and frac[1:].isdigit() and frac.isascii()):
        return None
    return SyslogRecord(_rfc3339_time(stamp[:19], frac or None, zone), host, ident, int(pid), msg)


def _rfc5424(line: str) -> SyslogRecord | None:
    m = _RFC5424.match(line)
    if m is None:
        return None
    pid = m["pid"]
    msg = m["msg"] or ""
    if msg.startswith("\ufeff"):  # RFC 5424 marks UTF-8 messages with a BOM
        msg = msg[1:]
    return SyslogRecord(
        _rfc3339_stamp(m["ts"]), m["host"], m["ident"], int(pid) if pid != "-" else None, msg
    )


# Timestamps repeat: thousands of lines share each second. Conversions are memoised per second
# (a bounded dict, emptied when full); the fraction is added back. Log time moves forward, so a
# few dozen recent seconds (or a few hundred hours) are all a memo needs; a larger one only
# grows (see authlog_chunk._TIME_MEMO_LIMIT).
_SECONDS_LIMIT = 64
_CACHE_LIMIT = 256  # hours per TraditionalClock
_rfc3339_cache: dict[tuple[str, str | None], float | None] = {}


def _rfc3339_time(seconds: str, frac: str | None, zone: str | None) -> float | None:
    key = (seconds, zone)
    base = _rfc3339_cache.get(key)
    if base is None and key not in _rfc3339_cache:
        if len(_rfc3339_cache) >= _SECONDS_LIMIT:
            _rfc3339_cache.clear()
        base = _rfc3339_cache[key] = _rfc3339_seconds(seconds, zone)
    if base is None or frac is None:
        return base
    return base + float(frac)


def _rfc3339_seconds(seconds: str, zone: str | None) -> float | None:
    if zone is None:
        return None  # no zone: cannot be placed
    try:
        return datetime.fromisoformat(seconds + ("+00:00" if zone in "Zz" else zone)).timestamp()
    except ValueError:
        return None


def _rfc3339_stamp(stamp: str) -> float | None:
    m = _STAMP.fullmatch(stamp)
    if m is None:
        return None
    return _rfc3339_time(m["sec"], m["frac"], m["zone"])


def _traditional_time(m: re.Match[str], reference: datetime | None) -> float | None:
    clock = traditional_clock(reference)
    if clock is None:
        return None
    # "Mon DD HH:MM:SS" is one contiguous slice of the line
    seconds = clock.stamp(m.string[m.start("mon") : m.end("hms")])
    frac = m["frac"]
    if seconds is None or not frac:
        return seconds
    return seconds + float(frac)


class TraditionalClock:
    """Places traditional timestamps ("Mar  1 00:00:00": no year, no zone) for one reference.

    The year is the reference's, or the one before when that would put the line more than a day
    after the reference (December's lines read in January). Speed: within an hour whose UTC
    offset does not change, a time is the hour's first second plus minutes and seconds, so the
    zone is asked once per hour ("Mon DD HH", memoised by its text) and "MM:SS" is a table
    lookup; the hours around a daylight-saving change, invalid dates and other digits than
    0-9 take the plain datetime computation (_traditional_seconds' definition)."""

    __slots__ = ("_hours", "_limit", "_reference", "_year", "_zone")

    def __init__(self, reference: datetime) -> None:
        zone = reference.tzinfo
        if zone is None:
            raise ValueError("reference must be an aware datetime")
        self._reference = reference
        self._zone: tzinfo = zone
        self._year = reference.year
        self._limit = reference.timestamp() + _FUTURE_SLACK.total_seconds()
        # "Mon DD HH" -> first second of that hour in the reference's year and the year before
        # (None: that hour is not linear, or not a real hour)
        self._hours: dict[str, tuple[float | None, float | None]] = {}

    def stamp(self, text: str) -> float | None:
        """Seconds since the epoch of "Mon DD HH:MM:SS" (as the line regexes match it: the day
        padded with spaces or a 0, or not), None when it names no real local time."""
        hour = self._hours.get(text[:-6])  # "Mon DD HH"
        if hour is None:
            hour = self._hour(text[:-6])
        offset = _MINUTE_SECOND.get(text[-5:])
        start = hour[0]
        if start is None or offset is None:
            return self._exact(text)
        seconds = start + offset
        if seconds > self._limit:  # more than a day ahead: last year's
            start = hour[1]
            if start is None:
                return self._exact(text)
            seconds = start + offset
        return seconds

    def minute(self, text: str) -> float | None:
        """The first second of the minute "Mon DD HH:MM" when stamp() of each of its seconds
        "Mon DD HH:MM:SS" (SS 00-59) is exactly that plus SS, else None: for callers that place
        many stamps, one lookup per minute. True when the hour is linear and the whole minute
        lies in the reference's year (not more than a day ahead of the reference)."""
        hour = self._hours.get(text[:-3])  # "Mon DD HH"
        if hour is None:
            hour = self._hour(text[:-3])
        start, minutes = hour[0], _MINUTES.get(text[-2:])
        if start is None or minutes is None:
            return None
        start += minutes
        return start if start + 59 <= self._limit else None

    def _hour(self, text: str) -> tuple[float | None, float | None]:
        month = _MONTHS.get(text[:3])
        day, _, hour = text[3:].lstrip(" ").partition(" ")
        starts: tuple[float | None, float | None] = (None, None)
        digits = day.isascii() and day.isdigit() and hour.isascii() and hour.isdigit()
        if month is not None and digits and len(hour) == 2:
            starts = (
                self._linear_hour(self._year, month, int(day), hour),
                self._linear_hour(self._year - 1, month, int(day), hour),
            )
        if len(self._hours) >= _CACHE_LIMIT:
            self._hours.clear()
        self._hours[text] = starts
        return starts

    def _linear_hour(self, year: int, month: int, day: int, hour: str) -> float | None:
        """The hour's first second when its UTC offset is the same all through it, else None."""
        first = _local_seconds(year, month, day, f"{hour}:00:00", self._zone)
        if first is None:
            return None
        middle = _local_seconds(year, month, day, f"{hour}:30:00", self._zone)
        last = _local_seconds(year, month, day, f"{hour}:59:59", self._zone)
        if middle is None or last is None or middle - first != 1800 or last - first != 3599:
            return None
        return first

    def _exact(self, text: str) -> float | None:
        day, _, hms = text[3:].lstrip(" ").partition(" ")
        try:
            return _traditional_seconds(text[:3], day, hms, self._reference)
        except ValueError:  # int() of a day that is no number
            return None


_MINUTE_SECOND = {f"{m:02d}:{s:02d}": m * 60 + s for m in range(60) for s in range(60)}
_MINUTES = {f"{m:02d}": m * 60 for m in range(60)}
# Clocks for the few references in use at a time (see authlog_chunk._REFERENCES_KEPT): each
# remembers the hours it placed, and the auth.log watcher takes a new reference every hour.
_CLOCKS_KEPT = 4
_clocks: dict[tuple[datetime, tzinfo | None, int], TraditionalClock] = {}


def traditional_clock(reference: datetime | None) -> TraditionalClock | None:
    """The (memoised) clock for a reference; None without an aware reference. Keyed by zone and
    fold too: aware datetimes of different zones compare equal when they name the same instant,
    but place traditional timestamps differently."""
    if reference is None or reference.tzinfo is None:
        return None
    key = (reference, reference.tzinfo, reference.fold)
    clock = _clocks.get(key)
    if clock is None:
        if len(_clocks) >= _CLOCKS_KEPT:
            _clocks.clear()
        clock = _clocks[key] = TraditionalClock(reference)
    return clock


def _traditional_seconds(mon: str, day: str, hms: str, reference: datetime) -> float | None:
    """The definition TraditionalClock implements quickly (kept for tests): the reference's
    year, or the one before when that would put the line more than a day after the reference."""
    month = _MONTHS.get(mon)
    zone = reference.tzinfo
    if month is None or zone is None:
        return None
    seconds = _local_seconds(reference.year, month, int(day), hms, zone)
    if seconds is not None and seconds > reference.timestamp() + _FUTURE_SLACK.total_seconds():
        seconds = _local_seconds(reference.year - 1, month, int(day), hms, zone)
    return seconds


def _local_seconds(year: int, month: int, day: int, hms: str, zone: tzinfo) -> float | None:
    try:
        hour, minute, second = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
        return datetime(year, month, day, hour, minute, second, tzinfo=zone).timestamp()
    except (ValueError, OverflowError):  # Feb 29 in a common year, hour 24, year 0, ...
        return None


__all__ = [
    "IDENTIFIERS",
    "SyslogRecord",
    "TraditionalClock",
    "parse_syslog_line",
    "traditional_clock",
]
