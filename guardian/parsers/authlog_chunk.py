# The bulk path for auth.log text, pure: many lines at once (a multi-MB read of a syslog file) in,
# the SshdDetector's detections out — exactly what parse_syslog_line + SshdDetector.feed give
# line by line, several times faster. No I/O and no clock; the caller reads the file, keeps the
# partial last line of a read, and passes the reference for traditional timestamps.
#
# Theory of operation:
#   * One compiled regex (_SCAN), run by re.finditer over the whole text, finds the sshd lines of
#     the two formats auth.log files are written in (traditional "Mar  1 00:00:00 host sshd[PID]: "
#     and rsyslog's RFC 3339) and, in the same C-level pass, takes apart the message kinds that
#     make up nearly all of a brute force (Failed/Accepted, Invalid user, pam_unix's
#     authentication failure, Received disconnect, Connection closed/reset, Disconnected,
#     Unable to negotiate). Lines of other programs never reach Python.
#   * Each fast alternative accepts only a shape on which it provably agrees with the per-line
#     parser: user names and hosts without white space, a host not ending in ':', no trailing
#     white space, ports of at most 10 digits. Anything else — injection attempts included — is
#     matched by the catch-all alternative and parsed by sshd_messages.parse_message itself
#     (memoised: such messages repeat, e.g. pam's "session opened for user alice").
#   * Lines the regex does not match at all (other programs, and sshd lines in any other format:
#     RFC 5424, no host, odd white space) lie in the gaps between matches; a gap is searched for
#     "sshd" in C and only such lines go through parse_syslog_line, exactly as line by line.
#   * The time and address conversions are the per-line path's own memoised functions, and the
#     multi-line rules are SshdDetector's own (feed_fields: the fields, no SshdMessage built).
# API: scan_chunk(text, detector, reference) for text in hand; scan_byte_chunks(pieces, ...) for
# a byte stream read in pieces (decoding, partial last lines and memory bounds handled).
# tests/test_authlog_chunk.py checks equivalence with the per-line path on generated and
# adversarial logs, cut into chunks at every kind of boundary.
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from guardian.parsers.sshd import Detection, SshdDetector
from guardian.parsers.sshd_messages import (
    _FAILED_RULES,
    _PROBING_METHODS,
    Kind,
    Mode,
    SshdMessage,
    _host,
    parse_message,
)
from guardian.parsers.syslog_line import _rfc3339_time, parse_syslog_line, traditional_clock

__all__ = ["MAX_LINE", "ScanCounts", "scan_byte_chunks", "scan_chunk"]

MAX_LINE = 1 << 20  # scan_byte_chunks: a "line" longer than this is scanned in pieces

_HOST = r"\S*[^\s:]"  # no white space, and no ':' before the " port" that follows
_PORT = r"[0-9]{1,10}"
_D2 = "[0-9][0-9]"


def _ends_maybe_preauth(name: str) -> str:
    """The end of a message whose free text may end in " [preauth]": no trailing white space
    (the per-line parser would strip it), and group `name` set (empty) when it is pre-auth."""
    return rf"(?:(?<= \[preauth\])(?P<{name}>)|)(?<!\s)"


# Performance notes (CPython's re): every message alternative starts with a literal, so the
# engine skips it on the first character, and ends with an empty marker group that closes last
# (Match.lastindex names the kind); optional parts are written "(?:X|)", far cheaper than "X?".
_SCAN = re.compile(
    # A newline, then the timestamp: traditional "Mar  1 00:00:00" (day padded to two
    # characters) or RFC 3339, either with a fraction; one group, memoised by _Stamps ...
    rf"\n(?P<stamp>[A-Z][a-z][a-z] [ 0-9][0-9] {_D2}:{_D2}:{_D2}(?:\.[0-9]+|)"
    rf"|[0-9]{{4}}-{_D2}-{_D2}T{_D2}:{_D2}:{_D2}(?:\.[0-9]+|)(?:Z|[+-]{_D2}:{_D2}))"
    # ... host, sshd[PID] ...
    r" \S+ sshd(?:-session|)\[(?P<pid>[0-9]{1,10})\]: "
    # ... and the message: one of the fast kinds, else anything.
    r"(?:(?:Connection (?P<cv>closed|reset) by|Disconnected from) "
    r"(?:(?P<pre>authenticating user|invalid user|user) (?P<cu>\S+) |)"
    rf"(?P<ch>{_HOST}) port (?P<cp>{_PORT})(?P<cpre> \[preauth\]|)(?P<closed>)"
    # "pam_unix(sshd:...": the held PAM failure, or `noop`: messages that change nothing
    # whatever follows (parse_message: None or not_failure), pam's "check pass;" and
    # "session opened".
    r"|pam_unix\(sshd:(?:auth\): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    r"rhost=(?P<ph>\S+)(?:  user=(?P<pu>\S+)|)(?P<pam>)"
    r"|(?:auth\): check pass;|session\): session opened for user )[^\n]*(?P<noop>))"
    r"|(?:Failed(?P<failed>)|Accepted) (?P<method>[^\s:]+) for (?P<inv>invalid user |)"
    rf"(?P<au>[^\s:]+) from (?P<ah>{_HOST}) port (?P<ap>{_PORT}) ssh2(?:: [^\n]*[^\s\]]|)"
    r"(?P<auth>)"
    rf"|Received disconnect from (?P<rh>\S+) port (?P<rp>{_PORT}):(?P<rc>[0-9]{{1,10}}):"
    rf"[^\n]*{_ends_maybe_preauth('rpre')}(?P<received>)"
    rf"|Invalid user (?P<iu>\S+) from (?P<ih>{_HOST}) port (?P<ip>{_PORT})(?P<invalid>)"
    rf"|Unable to negotiate with (?P<nh>{_HOST}) port (?P<np>{_PORT}): [^\n]*(?<!\s)"
    r"(?P<unable>)"
    r"|(?P<other>[^\n]*))$",
    re.M,
)
_G = _SCAN.groupindex
_CLOSED, _PAM, _NOOP, _AUTH, _RECEIVED, _INVALID, _UNABLE, _OTHER = (
    _G[name] for name in ("closed", "pam", "noop", "auth", "received", "invalid", "unable", "other")
)


def _groups(*names: str) -> tuple[int, ...]:
    """Group numbers for one Match.group() call: the line's timestamp and PID, then the kind's."""
    return tuple(_G[name] for name in ("stamp", "pid", *names))


_CLOSED_GROUPS = _groups("cv", "pre", "cu", "ch", "cp", "cpre")
_PAM_GROUPS = _groups("ph", "pu")
_AUTH_GROUPS = _groups("failed", "method", "inv", "au", "ah", "ap")
_RECEIVED_GROUPS = _groups("rh", "rp", "rc", "rpre")
_INVALID_GROUPS = _groups("iu", "ih", "ip")
_UNABLE_GROUPS = _groups("nh", "np")
_OTHER_GROUPS = _groups("other")
_PID = _G["pid"]
_CONNECTION_RULES = {
    None: "disconnected",
    "closed": "connection_closed",
    "reset": "connection_reset",
}

_MEMO_LIMIT = 4096  # entries per memo
_MEMO_TEXT = 256  # longest message memoised
_memos: dict[str, dict[str, SshdMessage | None]] = {"normal": {}, "aggressive": {}}


class _Stamps:
    """Timestamp text as _SCAN captures it -> seconds since the epoch, for one reference; the
    arithmetic is parse_syslog_line's own. Whole stamps are memoised (thousands of lines share
    a second); a stamp with a fraction (rsyslog's RFC 3339 default has microseconds, so each is
    new) costs its second's memoised start plus the fraction."""

    __slots__ = ("_clock", "memo")

    def __init__(self, reference: datetime | None) -> None:
        self._clock = traditional_clock(reference)
        self.memo: dict[str, float | None] = {}

    def time(self, stamp: str) -> float | None:
        if stamp[0] > "9":  # traditional: "Mon DD HH:MM:SS[.frac]"
            second, frac, zone = stamp[:15], stamp[15:], ""
        elif stamp[-1] == "Z":  # RFC 3339: "YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm)"
            second, frac, zone = stamp[:19], stamp[19:-1], "Z"
        else:
            second, frac, zone = stamp[:19], stamp[19:-6], stamp[-6:]
        memo = self.memo
        key = second + zone
        if key in memo:
            seconds = memo[key]
        else:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            if zone:
                seconds = memo[key] = _rfc3339_time(second, None, zone)
            else:
                clock = self._clock
                seconds = memo[key] = clock.stamp(second) if clock is not None else None
        if frac and seconds is not None:
            seconds += float(frac)  # as _rfc3339_time and the traditional path add it
        return seconds


_stamps: dict[tuple[datetime | None, object, int], _Stamps] = {}


def _stamps_for(reference: datetime | None) -> _Stamps:
    key = (reference, None, 0) if reference is None else (
        reference, reference.tzinfo, reference.fold
    )  # fmt: skip
    stamps = _stamps.get(key)
    if stamps is None:
        if len(_stamps) >= 64:
            _stamps.clear()
        stamps = _stamps[key] = _Stamps(reference)
    return stamps


@dataclass(slots=True)
class ScanCounts:
    """Running totals a caller may keep across chunks (the auth.log watcher's statistics)."""

    lines: int = 0  # whole lines scanned (and a final unterminated one)
    sshd_lines: int = 0  # lines written by sshd or sshd-session
    untimed: int = 0  # detections whose line's timestamp could not be placed (wall_time None)
    errors: int = 0  # lines whose parsing raised (a parser bug: the line is skipped)


def scan_chunk(
    text: str,
    detector: SshdDetector,
    reference: datetime | None = None,
    *,
    final: bool = False,
    counts: ScanCounts | None = None,
) -> tuple[list[Detection], int]:
    """Feed the whole lines of `text` (split on "\n" only) to `detector`, in order.

    Returns (detections, consumed): `consumed` is the offset just past the last "\n"; the
    caller keeps text[consumed:], a partial line, and puts it in front of the next chunk. With
    final=True the unterminated last line is parsed too (consumed == len(text)): for text that
    ends at a line boundary anyway, like the auth.log follower's reads.

    reference: as for parse_syslog_line (an aware datetime, "now" in the log's zone), needed
    only for traditional timestamps. Never raises on any text."""
    consumed = len(text) if final else text.rfind("\n") + 1
    if consumed == 0:
        return [], 0
    out: list[Detection] = []
    mode: Mode = detector.mode
    strict: Kind = "failure" if mode == "aggressive" else "helper"  # aggressive-table kinds
    memo = _memos[mode]
    stamps = _stamps_for(reference)
    seconds, stamp_time = stamps.memo.get, stamps.time
    feed, feed_message = detector.feed_fields, detector.feed_message
    find = text.find
    host_of = _host
    matched = errors = 0
    previous = 0  # where the text not yet looked at starts
    # The hot loop, written for CPython's interpreter: each branch passes its constants straight
    # to feed_fields (the SshdMessage parse_message would build, field by field; see _SCAN).
    for m in _SCAN.finditer(text, 0, consumed):
        start, end = m.span()
        if start != previous and find("sshd", previous, start) >= 0:
            errors += _per_line(text[previous:start], detector, reference, out, counts)
        previous = end
        matched += 1
        kind = m.lastindex
        try:
            if kind == _CLOSED:
                stamp, pid, verb, preamble, user, host, port, pre = m.group(*_CLOSED_GROUPS)
                parsed = host_of(host)
                if parsed is None:
                    continue
                detections = feed(
                    int(pid),
                    strict if pre else "session_closed" if preamble == "user" else "helper",
                    _CONNECTION_RULES[verb], parsed[0], int(port), user, None, parsed[1],
                    False, False, True, seconds(stamp) or stamp_time(stamp),
                )  # fmt: skip
            elif kind == _NOOP:
                continue
            elif kind == _AUTH:
                stamp, pid, failed, method, inv, user, host, port = m.group(*_AUTH_GROUPS)
                parsed = host_of(host)
                if parsed is None:
                    continue
                if failed is None:  # Accepted
                    if inv:
                        continue  # "Accepted ... for invalid user": not sshd's
                    detections = feed(
                        int(pid), "success", "accepted", parsed[0], int(port), user, method,
                        parsed[1], False, False, True, seconds(stamp) or stamp_time(stamp),
                    )  # fmt: skip
                else:
                    base = method.partition("/")[0]
                    rule = _FAILED_RULES.get(base) or (
                        "failed_keyboard_interactive"
                        if base == "keyboard-interactive"
                        else "failed_other"
                    )
                    held = not inv and base in _PROBING_METHODS
                    detections = feed(
                        int(pid), "helper" if held else "failure", rule, parsed[0], int(port),
                        user, method, parsed[1], held, False, False,
                        seconds(stamp) or stamp_time(stamp),
                    )  # fmt: skip
            elif kind == _PAM:
                stamp, pid, host, user = m.group(*_PAM_GROUPS)
                parsed = host_of(host)
                if parsed is None:
                    continue
                detections = feed(
                    int(pid), "helper", "pam_unix_auth_failure", parsed[0], None, user, None,
                    parsed[1], True, False, False, seconds(stamp) or stamp_time(stamp),
                )  # fmt: skip
            elif kind == _RECEIVED:
                stamp, pid, host, port, code, pre = m.group(*_RECEIVED_GROUPS)
                if code == "3":  # its rule reads the client's text: the full parser decides
                    msg = parse_message(text[m.end(_PID) + 3 : end], mode)
                    if msg is None:
                        continue
                    detections = feed_message(int(pid), msg, seconds(stamp) or stamp_time(stamp))
                else:
                    parsed = host_of(host)
                    if parsed is None:
                        continue
                    if code == "14":
                        received_kind, rule = strict, "disconnect_no_auth_methods"
                    elif code == "11" and pre is None:
                        received_kind, rule = "session_closed", "received_disconnect"
                    else:
                        received_kind, rule = "helper", "received_disconnect"
                    detections = feed(
                        int(pid), received_kind, rule, parsed[0], int(port), None, None,
                        parsed[1], False, False, True, seconds(stamp) or stamp_time(stamp),
                    )  # fmt: skip
            elif kind == _INVALID:
                stamp, pid, user, host, port = m.group(*_INVALID_GROUPS)
                parsed = host_of(host)
                if parsed is None:
                    continue
                detections = feed(
                    int(pid), "failure", "invalid_user", parsed[0], int(port), user, None,
                    parsed[1], False, False, False, seconds(stamp) or stamp_time(stamp),
                )  # fmt: skip
            elif kind == _UNABLE:
                stamp, pid, host, port = m.group(*_UNABLE_GROUPS)
                parsed = host_of(host)
                if parsed is None:
                    continue
                detections = feed(
                    int(pid), strict, "negotiation_failed", parsed[0], int(port), None, None,
                    parsed[1], False, False, True, seconds(stamp) or stamp_time(stamp),
                )  # fmt: skip
            else:  # _OTHER: the full parser, memoised by message text
                stamp, pid, message = m.group(*_OTHER_GROUPS)
                msg = memo.get(message, _UNKNOWN)
                if msg is _UNKNOWN:
                    msg = parse_message(message, mode)
                    if len(message) <= _MEMO_TEXT:  # the memo's size stays bounded
                        if len(memo) >= _MEMO_LIMIT:
                            memo.clear()
                        memo[message] = msg
                if msg is None:
                    continue
                detections = feed_message(int(pid), msg, seconds(stamp) or stamp_time(stamp))
            if detections:
                out += detections
        except Exception:  # one line must never stop the scan (as line by line)
            errors += 1
    if previous != consumed and find("sshd", previous, consumed) >= 0:
        errors += _per_line(text[previous:consumed], detector, reference, out, counts)
    if counts is not None:
        counts.lines += text.count("\n", 0, consumed) + (text[consumed - 1] != "\n")
        counts.sshd_lines += matched
        counts.errors += errors
        counts.untimed += sum(1 for d in out if d.wall_time is None)
    return out, consumed


_UNKNOWN = SshdMessage("not_failure", "")  # memo sentinel: never a parse result (no rule "")


def scan_byte_chunks(
    chunks: Iterable[bytes],
    detector: SshdDetector,
    reference: datetime | None = None,
    *,
    counts: ScanCounts | None = None,
    max_line: int = MAX_LINE,
) -> Iterator[list[Detection]]:
    """scan_chunk over a byte stream read in pieces, e.g. iter(partial(file.read, 1 << 20), b""):
    each piece's whole lines are decoded (UTF-8, invalid bytes replaced, as the auth.log
    watcher decodes) and scanned; the partial last line waits for the next piece; the end of
    the stream ends it. Yields one list of detections per piece (possibly empty).

    Memory stays bounded by a piece plus max_line: a partial line grown beyond max_line bytes
    (no syslog daemon writes one; rsyslog's default limit is 8 KiB) is scanned as it is."""
    tail = b""
    for chunk in chunks:
        data = tail + chunk if tail else chunk
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > max_line:
            cut = len(data)
        tail = data[cut:]
        if cut:
            text = data[:cut].decode("utf-8", "replace")
            yield scan_chunk(text, detector, reference, final=True, counts=counts)[0]
        else:
            yield []
    if tail:
        text = tail.decode("utf-8", "replace")
        yield scan_chunk(text, detector, reference, final=True, counts=counts)[0]


def _per_line(
    text: str,
    detector: SshdDetector,
    reference: datetime | None,
    out: list[Detection],
    counts: ScanCounts | None,
) -> int:
    """The slow path for the lines between two matches: the per-line parser itself. Returns
    how many lines raised."""
    errors = 0
    for line in text.split("\n"):
        if "sshd" not in line:
            continue
        try:
            record = parse_syslog_line(line, reference=reference)
            if record is None:
                continue
            if counts is not None:
                counts.sshd_lines += 1
            out += detector.feed(record.pid, record.message, record.wall_time)
        except Exception:  # as in scan_chunk
            errors += 1
    return errors
