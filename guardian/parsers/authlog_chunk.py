# The bulk path for auth.log text, pure: many lines at once (a multi-MB read of a syslog file) in,
# the SshdDetector's detections out — exactly what parse_syslog_line + SshdDetector.feed give
# line by line, several times faster. No I/O and no clock; the caller reads the file, keeps the
# partial last line of a read, and passes the reference for traditional timestamps. The auth.log
# watcher and `guardian replay` read through it.
#
# Theory of operation:
#   * One compiled regex (_SCAN), run by re.finditer over the whole text, finds the sshd lines of
#     the two formats auth.log files are written in (traditional "Mar  1 00:00:00 host sshd[PID]: "
#     and rsyslog's RFC 3339) and, in the same C-level pass, takes apart the message kinds that
#     make up nearly all of a brute force (Failed/Accepted, Invalid user, pam_unix's
#     authentication failure and session lines, Received disconnect, Connection closed/reset,
#     Disconnected, Unable to negotiate). Lines of other programs never reach Python.
#   * Each fast alternative accepts only a shape on which it provably agrees with the per-line
#     parser: user names and hosts without white space, a host not ending in ':', no trailing
#     white space, ports of at most 10 digits. Anything else — injection attempts included — is
#     matched by the catch-all alternative and parsed by sshd_messages.parse_message itself
#     (memoised: such messages repeat).
#   * The regex takes the timestamp loosely (15 characters and what follows up to a space): its
#     exact shape is checked when a stamp is first seen (_Stamps.time), then the stamp's time is
#     remembered, so each line pays one dictionary lookup (and a run of lines of one second, one
#     string comparison). A stamp of another shape sends its line to the per-line parser.
#   * Lines the regex does not match at all (other programs, and sshd lines in any other format:
#     RFC 5424, no host, odd white space) lie in the gaps between matches; a gap is searched for
#     "sshd" in C and only such lines go through parse_syslog_line, exactly as line by line.
#   * The conversions are the per-line path's own (memoised), and the multi-line rules are
#     SshdDetector's own (feed_fields: the fields, no SshdMessage built).
#   * scan_text cuts a large text into pieces of ~64 KiB: the fewer detections alive at once,
#     the cheaper CPython's garbage-collector rounds (measured: ~2 % of the time at 1 MiB).
# Profile (callgrind, 100k lines of bench/gen_authlog.py, ~60 % sshd lines): ~30 % the regex
# engine, ~48 % the interpreter taking each match apart and converting its fields, ~22 % the
# detector's rules. See BENCHMARKS.md, "auth.log parse throughput".
# API: scan_chunk(text, detector, reference) for text in hand; scan_text for a large text in
# pieces; scan_byte_chunks / scan_byte_stream for a byte stream read in pieces (decoding,
# partial last lines and memory bounds handled). tests/test_authlog_chunk.py checks equivalence
# with the per-line path on generated and adversarial logs, cut into chunks at every kind of
# boundary.
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from guardian.addresses import IPAddress
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

__all__ = [
    "MAX_LINE",
    "PIECE",
    "ScanCounts",
    "scan_byte_chunks",
    "scan_byte_stream",
    "scan_chunk",
    "scan_text",
]

MAX_LINE = 1 << 20  # scan_byte_chunks: a "line" longer than this is scanned in pieces
PIECE = 1 << 16  # scan_text: characters per piece (measured best between 16 KiB and 1 MiB)

_HOST = r"\S++(?<!:)"  # no white space, and no ':' before the " port" that follows
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
    # A newline, then the timestamp, loosely: 15 characters and what follows up to a space,
    # split at a fraction of a second (digits) if it has one: `stamp` and `zone` make the
    # second, whose shape (traditional "Mar  1 00:00:00" or RFC 3339) _Stamps.time checks once
    # per distinct second, not on every line; `frac` is added to it ...
    r"\n(?P<stamp>[^\n]{15}[^ \n.]*+)(?:(?P<frac>\.[0-9]++)(?P<zone>[^ \n]*+)|)"
    # ... host, sshd[PID] ...
    r" \S++ sshd(?:-session|)\[(?P<pid>[0-9]{1,10})\]: "
    # ... and the message: one of the fast kinds, else anything.
    r"(?:(?:Connection (?P<cv>closed|reset) by|Disconnected from) "
    r"(?:(?P<pre>authenticating user|invalid user|user) (?P<cu>\S++) |)"
    rf"(?P<ch>{_HOST}) port (?P<cp>{_PORT})(?P<cpre> \[preauth\]|)(?P<closed>)"
    r"|(?:Failed(?P<failed>)|Accepted) (?P<method>[^\s:]++) for (?P<inv>invalid user |)"
    rf"(?P<au>[^\s:]++) from (?P<ah>{_HOST}) port (?P<ap>{_PORT}) ssh2(?:: [^\n]++(?<![\s\]])|)"
    r"(?P<auth>)"
    rf"|Received disconnect from (?P<rh>\S++) port (?P<rp>{_PORT}):(?P<rc>[0-9]{{1,10}}):"
    rf"[^\n]*+{_ends_maybe_preauth('rpre')}(?P<received>)"
    # "pam_unix(sshd:...": the held PAM failure; `noop`: messages that change nothing whatever
    # follows (parse_message: None or not_failure), pam's "check pass;" and "session opened";
    # and "session closed", the end of an authenticated session.
    r"|pam_unix\(sshd:(?:auth\): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    r"rhost=(?P<ph>\S++)(?:  user=(?P<pu>\S++)|)(?P<pam>)"
    r"|(?:auth\): check pass;|session\): session opened for user )[^\n]*+(?P<noop>)"
    r"|session\): session closed for user (?P<su>\S++)(?<! \[preauth\])(?P<ended>))"
    rf"|Invalid user (?P<iu>\S++) from (?P<ih>{_HOST}) port (?P<ip>{_PORT})(?P<invalid>)"
    rf"|Unable to negotiate with (?P<nh>{_HOST}) port (?P<np>{_PORT}): [^\n]*+(?<!\s)(?P<unable>)"
    r"|(?P<other>[^\n]*+))$",
    re.M,
)
_G = _SCAN.groupindex
_CLOSED, _AUTH, _RECEIVED, _PAM, _NOOP, _ENDED, _INVALID, _UNABLE = (
    _G[name] for name in ("closed", "auth", "received", "pam", "noop", "ended", "invalid", "unable")
)


def _groups(*names: str) -> tuple[int, ...]:
    """Group numbers for one Match.group() call: the line's timestamp (three parts) and PID,
    then the kind's."""
    return tuple(_G[name] for name in ("stamp", "frac", "zone", "pid", *names))


# Group numbers per kind, indexed by Match.lastindex (the kind's marker group).
_FIELDS: list[tuple[int, ...]] = [()] * (_SCAN.groups + 1)
_FIELDS[_CLOSED] = _groups("cv", "pre", "cu", "ch", "cp", "cpre")
_FIELDS[_AUTH] = _groups("failed", "method", "inv", "au", "ah", "ap")
_FIELDS[_RECEIVED] = _groups("rh", "rp", "rc", "rpre")
_FIELDS[_NOOP] = _groups()
_FIELDS[_PAM] = _groups("ph", "pu")
_FIELDS[_ENDED] = _groups("su")
_FIELDS[_INVALID] = _groups("iu", "ih", "ip")
_FIELDS[_UNABLE] = _groups("nh", "np")
_FIELDS[_G["other"]] = _groups("other")
_PID = _G["pid"]
_CONNECTION_RULES = {
    None: "disconnected",
    "closed": "connection_closed",
    "reset": "connection_reset",
}

# Memos are bounded by emptying them when full. The message memo pays off for messages that
# repeat verbatim (no port in them); most sshd messages carry a client port and never repeat, so
# they are not memoised at all: they only filled the memo (the soak saw it grow for half an hour,
# then refill after each emptying: a saw tooth of ~1,000 dead entries that kept the allocator
# carving new pools). 1,024 holds every repeating message of a brute force. Log time moves
# forward: lines of one second come in a run (one string comparison, _scan's `seen`), and only
# a line a little out of order looks up an earlier second or minute, so a few dozen suffice.
# Larger time memos only filled slowly: at the soak's pace (~8 new seconds a minute reach
# them) 256 seconds took half an hour, and 256 minutes four hours, to fill and be emptied.
_MEMO_LIMIT = 1024  # messages per memo
_TIME_MEMO_LIMIT = 64  # seconds per timestamp memo
_MINUTE_MEMO_LIMIT = 16  # minutes per timestamp memo (traditional timestamps)
_MEMO_TEXT = 256  # longest message memoised
_memos: dict[str, dict[str, SshdMessage | None]] = {"normal": {}, "aggressive": {}}


def _failed_rule(method: str) -> tuple[str, bool]:
    """For "Failed METHOD": its rule, and whether the method is one a legitimate client fails with
    on its way in (sshd_messages._failed's decision)."""
    base = method.partition("/")[0]
    rule = _FAILED_RULES.get(base) or (
        "failed_keyboard_interactive" if base == "keyboard-interactive" else "failed_other"
    )
    return rule, base in _PROBING_METHODS


_FAILED_METHODS = {method: _failed_rule(method) for method in ("password", "publickey", "none")}

_Host: TypeAlias = tuple[IPAddress | None, str | None]
_hosts: dict[str, _Host | None] = {}
_HOST_LIMIT = 16384


def _host_entry(text: str) -> _Host | None:
    """sshd_messages._host (address, or host name, or None), memoised in a plain dict: a brute
    force repeats its few thousand sources, and a dict lookup is cheaper than lru_cache's."""
    if len(_hosts) >= _HOST_LIMIT:
        _hosts.clear()
    entry = _hosts[text] = _host(text)
    return entry


_SECONDS = {f"{s:02d}": s for s in range(60)}
# The shapes _SCAN's loose stamp must have to be placed here (else the line is the per-line
# parser's): a traditional minute and second, an RFC 3339 second with its zone.
_TRADITIONAL_MINUTE = re.compile(rf"[A-Z][a-z][a-z] [ 0-9][0-9] {_D2}:{_D2}")
_TRADITIONAL_SECOND = re.compile(rf"[A-Z][a-z][a-z] [ 0-9][0-9] {_D2}:{_D2}:{_D2}")
_RFC3339_SECOND = re.compile(rf"[0-9]{{4}}-{_D2}-{_D2}T{_D2}:{_D2}:{_D2}(?:Z|[+-]{_D2}:{_D2})")


class _NotFast(Exception):
    """A line _SCAN matched whose timestamp has none of the fast shapes: the per-line parser
    takes it (as it takes every line _SCAN does not match)."""


_NO_MINUTE = float("-inf")  # _Stamps._minutes.get: a minute not seen yet (never a real start)


class _Stamps:
    """A second as _SCAN captures it (the stamp without its fraction: traditional
    "Mon DD HH:MM:SS", RFC 3339 "YYYY-MM-DDTHH:MM:SS" and its zone) -> seconds since the epoch,
    for one reference; the arithmetic is parse_syslog_line's own. Seconds are memoised
    (thousands of lines share one), and only a second of a valid shape gets there: time()
    checks the shape first. A new traditional second costs a lookup of its minute (shape
    checked and start placed once a minute, TraditionalClock.minute)."""

    __slots__ = ("_clock", "_minutes", "memo")

    def __init__(self, reference: datetime | None) -> None:
        self._clock = traditional_clock(reference)
        self._minutes: dict[str, float | None] = {}
        self.memo: dict[str, float | None] = {}

    def time(self, second: str) -> float | None:
        """Raises _NotFast for a second of none of the fast shapes."""
        if len(second) == 15:  # traditional "Mon DD HH:MM:SS"
            seconds = self._traditional(second)
        elif _RFC3339_SECOND.fullmatch(second) is not None:
            seconds = _rfc3339_time(second[:19], None, second[19:])
        else:
            raise _NotFast
        memo = self.memo
        if len(memo) >= _TIME_MEMO_LIMIT:
            memo.clear()
        memo[second] = seconds
        return seconds

    def _traditional(self, second: str) -> float | None:
        """ "Mon DD HH:MM:SS" (15 characters) -> seconds; _NotFast for another shape."""
        minutes = self._minutes
        minute = second[:12]  # "Mon DD HH:MM"
        start = minutes.get(minute, _NO_MINUTE)
        if start == _NO_MINUTE:
            if _TRADITIONAL_MINUTE.fullmatch(minute) is None:
                raise _NotFast
            clock = self._clock
            start = clock.minute(minute) if clock is not None else None
            if len(minutes) >= _MINUTE_MEMO_LIMIT:
                minutes.clear()
            minutes[minute] = start
        offset = _SECONDS.get(second[13:])
        if start is not None and offset is not None and second[12] == ":":
            return start + offset
        if _TRADITIONAL_SECOND.fullmatch(second) is None:
            raise _NotFast
        clock = self._clock
        return clock.stamp(second) if clock is not None else None


# One _Stamps per reference, for the few references in use at a time: the auth.log watcher
# moves to a new one every hour (the file's mtime, floored), replay keeps one. Each old one holds
# its memoised seconds and minutes, so keeping 64 (as before) let the daemon grow by one such
# memo an hour for 64 hours before they were emptied.
_REFERENCES_KEPT = 4
_stamps: dict[tuple[datetime | None, object, int], _Stamps] = {}


def _stamps_for(reference: datetime | None) -> _Stamps:
    key = (reference, None, 0) if reference is None else (
        reference, reference.tzinfo, reference.fold
    )  # fmt: skip
    stamps = _stamps.get(key)
    if stamps is None:
        if len(_stamps) >= _REFERENCES_KEPT:
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
    _scan(text, 0, consumed, detector, reference, out, counts)
    if counts is not None:
        counts.lines += text.count("\n", 0, consumed) + (text[consumed - 1] != "\n")
    return out, consumed


def scan_text(
    text: str,
    detector: SshdDetector,
    reference: datetime | None = None,
    *,
    counts: ScanCounts | None = None,
    piece: int = PIECE,
) -> Iterator[list[Detection]]:
    """scan_chunk(text, final=True) for a large text, in pieces of about `piece` characters
    cut after a newline: yields each piece's detections as soon as they are found. Faster
    than one scan_chunk of the whole text when the caller lets go of each list before taking
    the next: fewer objects alive at once make the garbage collector's rounds cheaper.
    (counts.lines is added once the last piece has been taken.)"""
    if not text:
        return
    start, end = 0, len(text)
    while start < end:
        # text[stop] is the "\n" that ends the piece's last line: the next piece starts there,
        # so _SCAN sees the newline its first line needs.
        stop = text.find("\n", start + piece) if end - start > piece else -1
        if stop < 0:
            stop = end
        out: list[Detection] = []
        _scan(text, start, stop, detector, reference, out, counts)
        yield out
        start = stop
    if counts is not None:
        counts.lines += text.count("\n") + (text[-1] != "\n")


def _scan(
    text: str,
    begin: int,
    stop: int,
    detector: SshdDetector,
    reference: datetime | None,
    out: list[Detection],
    counts: ScanCounts | None,
) -> None:
    """The lines of text[begin:stop] (whole lines: text[begin] is a "\n" or the text's start,
    text[stop] a "\n" or the text's end) fed to `detector` in order, detections appended to
    out."""
    first = len(out)
    mode: Mode = detector.mode
    strict: Kind = "failure" if mode == "aggressive" else "helper"  # aggressive-table kinds
    memo = _memos[mode]
    stamps = _stamps_for(reference)
    seconds, stamp_time = stamps.memo.get, stamps.time
    feed, feed_message = detector.feed_fields, detector.feed_message
    hosts, host_of = _hosts.get, _host_entry
    failed_methods = _FAILED_METHODS.get
    find = text.find
    fields_of = _FIELDS
    matched = errors = 0
    previous = begin  # where the text not yet looked at starts
    seen, second = "", None  # the last second placed, and its time (lines come in runs of one)
    # The hot loop, written for CPython's interpreter (most frequent kinds first). A line's
    # time is placed first (stamp_time raises _NotFast for a stamp of another shape, before
    # anything is fed); then each branch passes its constants straight to feed_fields (the
    # SshdMessage parse_message would build, field by field; see _SCAN).
    for m in _SCAN.finditer(text, begin, stop):
        start, end = m.span()
        if start != previous and find("sshd", previous, start) >= 0:
            errors += _per_line(text[previous:start], detector, reference, out, counts)
        previous = end
        kind = m.lastindex or 0  # (never 0: every alternative ends with its marker group)
        fields = m.group(*fields_of[kind])
        stamp, frac = fields[0], fields[1]
        if frac is not None:  # "stamp.frac zone": the second is stamp + zone
            stamp += fields[2]
        try:
            if stamp != seen:
                placed = seconds(stamp)
                if placed is None:
                    placed = stamp_time(stamp)
                seen, second = stamp, placed
            # (the fraction added as parse_syslog_line adds it)
            when = second if frac is None or second is None else second + float(frac)
            matched += 1
            if kind == _CLOSED:
                _, _, _, pid, verb, preamble, user, host, port, pre = fields
                at = hosts(host) or host_of(host)
                if at is None:
                    continue
                detections = feed(
                    int(pid),
                    strict if pre else "session_closed" if preamble == "user" else "helper",
                    _CONNECTION_RULES[verb], at[0], int(port), user, None, at[1], False, False,
                    True, when,
                )  # fmt: skip
            elif kind == _AUTH:
                _, _, _, pid, failed, method, inv, user, host, port = fields
                at = hosts(host) or host_of(host)
                if at is None:
                    continue
                if failed is None:  # Accepted
                    if inv:
                        continue  # "Accepted ... for invalid user": not sshd's
                    detections = feed(
                        int(pid), "success", "accepted", at[0], int(port), user, method, at[1],
                        False, False, True, when,
                    )  # fmt: skip
                else:
                    rule, probing = failed_methods(method) or _failed_rule(method)
                    held = probing and not inv
                    detections = feed(
                        int(pid), "helper" if held else "failure", rule, at[0], int(port), user,
                        method, at[1], held, False, False, when,
                    )  # fmt: skip
            elif kind == _RECEIVED:
                _, _, _, pid, host, port, code, pre = fields
                if code == "3":  # its rule reads the client's text: the full parser decides
                    msg = parse_message(text[m.end(_PID) + 3 : end], mode)
                    if msg is None:
                        continue
                    detections = feed_message(int(pid), msg, when)
                else:
                    at = hosts(host) or host_of(host)
                    if at is None:
                        continue
                    if code == "11" and pre is None:
                        received_kind: Kind = "session_closed"
                    elif code == "14":
                        received_kind = strict
                    else:
                        received_kind = "helper"
                    detections = feed(
                        int(pid), received_kind,
                        "disconnect_no_auth_methods" if code == "14" else "received_disconnect",
                        at[0], int(port), None, None, at[1], False, False, True, when,
                    )  # fmt: skip
            elif kind == _NOOP:
                continue  # changes nothing (its stamp is checked: it counts as sshd's)
            elif kind == _PAM:
                _, _, _, pid, host, user = fields
                at = hosts(host) or host_of(host)
                if at is None:
                    continue
                detections = feed(
                    int(pid), "helper", "pam_unix_auth_failure", at[0], None, user, None,
                    at[1], True, False, False, when,
                )  # fmt: skip
            elif kind == _ENDED:
                _, _, _, pid, user = fields
                detections = feed(
                    int(pid), "session_closed", "pam_session_closed", None, None, user, None,
                    None, False, False, False, when,
                )  # fmt: skip
            elif kind == _INVALID:
                _, _, _, pid, user, host, port = fields
                at = hosts(host) or host_of(host)
                if at is None:
                    continue
                detections = feed(
                    int(pid), "failure", "invalid_user", at[0], int(port), user, None, at[1],
                    False, False, False, when,
                )  # fmt: skip
            elif kind == _UNABLE:
                _, _, _, pid, host, port = fields
                at = hosts(host) or host_of(host)
                if at is None:
                    continue
                detections = feed(
                    int(pid), strict, "negotiation_failed", at[0], int(port), None, None, at[1],
                    False, False, True, when,
                )  # fmt: skip
            else:  # _OTHER: the full parser, memoised by message text
                _, _, _, pid, message = fields
                msg = memo.get(message, _UNKNOWN)
                if msg is _UNKNOWN:
                    msg = parse_message(message, mode)
                    if len(message) <= _MEMO_TEXT and " port " not in message:
                        if len(memo) >= _MEMO_LIMIT:
                            memo.clear()
                        memo[message] = msg
                if msg is None:
                    continue
                detections = feed_message(int(pid), msg, when)
            if detections:
                out += detections
        except _NotFast:  # a stamp of another shape: the line is the per-line parser's
            errors += _per_line(text[start:end], detector, reference, out, counts)
        except Exception:  # one line must never stop the scan (as line by line)
            errors += 1
    if previous != stop and find("sshd", previous, stop) >= 0:
        errors += _per_line(text[previous:stop], detector, reference, out, counts)
    if counts is not None:
        counts.sshd_lines += matched
        counts.errors += errors
        counts.untimed += sum(1 for i in range(first, len(out)) if out[i].wall_time is None)


_UNKNOWN = SshdMessage("not_failure", "")  # memo sentinel: never a parse result (no rule "")


def scan_byte_stream(
    chunks: Iterable[bytes],
    detector: SshdDetector,
    reference: datetime | None = None,
    *,
    counts: ScanCounts | None = None,
    max_line: int = MAX_LINE,
) -> Iterator[list[Detection]]:
    """A byte stream read in pieces, e.g. iter(partial(file.read, 1 << 20), b""), scanned as
    scan_byte_chunks scans it, the detections yielded as scan_text yields them (a piece gives
    none, one or several lists): for a caller that only consumes them (replay, benchmarks)."""
    for text in _whole_lines(chunks, max_line):
        if text:
            yield from scan_text(text, detector, reference, counts=counts)


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
    the stream ends it. Yields one list of detections per piece (possibly empty), and one for
    an unterminated last line.

    Memory stays bounded by a piece plus max_line: a partial line grown beyond max_line bytes
    (no syslog daemon writes one; rsyslog's default limit is 8 KiB) is scanned as it is."""
    for text in _whole_lines(chunks, max_line):
        found: list[Detection] = []
        for detections in scan_text(text, detector, reference, counts=counts):
            found += detections
        yield found


def _whole_lines(chunks: Iterable[bytes], max_line: int) -> Iterator[str]:
    """The whole lines of each piece of a byte stream, decoded ("" when a piece completes no
    line), then an unterminated last line if there is one (see scan_byte_chunks)."""
    tail = b""
    for chunk in chunks:
        data = tail + chunk if tail else chunk
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > max_line:
            cut = len(data)
        tail = data[cut:]
        # Decoded through a view: a data[:cut] slice would copy the MiB first (~25 % of this
        # function's time, measured).
        yield str(memoryview(data)[:cut], "utf-8", "replace")
    if tail:
        yield tail.decode("utf-8", "replace")


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
