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
#   * The time and address conversions are the per-line path's own memoised functions.
# tests/test_authlog_chunk.py checks equivalence with the per-line path on generated and
# adversarial logs, cut into chunks at every kind of boundary.
from __future__ import annotations

import re
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

__all__ = ["ScanCounts", "scan_chunk"]

_HOST = r"[^\s]*[^\s:]"  # no white space, and no ':' before the " port" that follows
_PORT = r"[0-9]{1,10}"
_CID_PREAMBLE = r"(?:(?P<pre>authenticating user|invalid user|user) (?P<cu>[^\s]+) )?"


def _ends_maybe_preauth(name: str) -> str:
    """The end of a message whose free text may end in " [preauth]": no trailing white space
    (the per-line parser would strip it), and group `name` set (empty) when it is pre-auth."""
    return rf"(?:(?<= \[preauth\])(?P<{name}>))?(?<!\s)"


_SCAN = re.compile(
    # The line: a newline, a timestamp (traditional | RFC 3339), host, sshd[PID]
    r"\n(?:(?P<stamp>[A-Z][a-z]{2} +[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2})(?P<frac>\.[0-9]+)?"
    r"|(?P<rsec>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<rfrac>\.[0-9]+)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2}))"
    r" [^\s]+ sshd(?:-session)?\[(?P<pid>[0-9]{1,10})\]: "
    # The message: one of the fast kinds, else anything (each kind's outer group closes last,
    # so Match.lastindex names the kind).
    r"(?:(?P<auth>(?P<verb>Failed|Accepted) (?P<method>[^\s:]+) for (?P<inv>invalid user )?"
    rf"(?P<au>[^\s:]+) from (?P<ah>{_HOST}) port (?P<ap>{_PORT}) ssh2(?:: [^\n]*[^\s\]])?)"
    rf"|(?P<invalid>Invalid user (?P<iu>[^\s]+) from (?P<ih>{_HOST}) port (?P<ip>{_PORT}))"
    r"|(?P<pam>pam_unix\(sshd:auth\): authentication failure; logname= uid=0 euid=0 tty=ssh "
    r"ruser= rhost=(?P<ph>[^\s]+)(?:  user=(?P<pu>[^\s]+))?)"
    rf"|(?P<received>Received disconnect from (?P<rh>[^\s]+) port (?P<rp>{_PORT}):"
    rf"(?P<rc>[0-9]{{1,10}}):[^\n]*{_ends_maybe_preauth('rpre')})"
    r"|(?P<closed>(?:Connection (?P<cv>closed|reset) by|Disconnected from) "
    rf"{_CID_PREAMBLE}(?P<ch>{_HOST}) port (?P<cp>{_PORT})(?P<cpre> \[preauth\])?)"
    rf"|(?P<unable>Unable to negotiate with (?P<nh>{_HOST}) port (?P<np>{_PORT}): "
    rf"[^\n]*{_ends_maybe_preauth('npre')})"
    r"|(?P<other>[^\n]*))$",
    re.M,
)
_G = _SCAN.groupindex
_AUTH, _INVALID, _PAM, _RECEIVED, _CLOSED, _UNABLE, _OTHER = (
    _G[name] for name in ("auth", "invalid", "pam", "received", "closed", "unable", "other")
)


def _groups(*names: str) -> tuple[int, ...]:
    """Group numbers for one Match.group() call: the line's (time, PID), then the kind's."""
    common = ("stamp", "frac", "rsec", "rfrac", "zone", "pid")
    return tuple(_G[name] for name in common + names)


_GROUPS = {
    _AUTH: _groups("verb", "method", "inv", "au", "ah", "ap"),
    _INVALID: _groups("iu", "ih", "ip"),
    _PAM: _groups("ph", "pu"),
    _RECEIVED: _groups("rh", "rp", "rc", "rpre", "received"),
    _CLOSED: _groups("cv", "pre", "cu", "ch", "cp", "cpre"),
    _UNABLE: _groups("nh", "np", "npre"),
    _OTHER: _groups("other"),
}
_AUTH_GROUPS, _INVALID_GROUPS, _PAM_GROUPS, _RECEIVED_GROUPS, _CLOSED_GROUPS, _UNABLE_GROUPS = (
    _GROUPS[kind] for kind in (_AUTH, _INVALID, _PAM, _RECEIVED, _CLOSED, _UNABLE)
)
_OTHER_GROUPS = _GROUPS[_OTHER]
_CONNECTION_RULES = {
    None: "disconnected",
    "closed": "connection_closed",
    "reset": "connection_reset",
}

_MEMO_LIMIT = 4096
_memos: dict[str, dict[str, SshdMessage | None]] = {"normal": {}, "aggressive": {}}


@dataclass(slots=True)
class ScanCounts:
    """Running totals a caller may keep across chunks (the auth.log watcher's statistics)."""

    lines: int = 0  # whole lines scanned (and a final unterminated one)
    sshd_lines: int = 0  # lines written by sshd or sshd-session
    untimed: int = 0  # sshd lines whose timestamp could not be placed
    errors: int = 0  # lines whose parsing raised (a parser bug: the line is skipped)


def scan_chunk(
    text: str,
    detector: SshdDetector,
    reference: datetime | None = None,
    *,
    final: bool = False,
    counts: ScanCounts | None = None,
) -> tuple[list[Detection], int]:
    """Feed the whole lines of `text` (split on "\\n" only) to `detector`, in order.

    Returns (detections, consumed): `consumed` is the offset just past the last "\\n"; the
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
    clock = traditional_clock(reference)
    feed = detector.feed_message
    find = text.find
    host_of = _host
    new = tuple.__new__
    sshd_lines = untimed = errors = 0
    previous = 0  # where the text not yet looked at starts
    for m in _SCAN.finditer(text, 0, consumed):
        start, end = m.span()
        if start != previous and find("sshd", previous, start) >= 0:
            s, u, e = _per_line(text[previous:start], detector, reference, out)
            sshd_lines, untimed, errors = sshd_lines + s, untimed + u, errors + e
        previous = end
        sshd_lines += 1
        try:
            kind = m.lastindex
            msg: SshdMessage | None = None
            # Each branch builds what parse_message returns for the message (see the regex).
            if kind == _OTHER:
                stamp, frac, rsec, rfrac, zone, pid, message = m.group(*_OTHER_GROUPS)
                msg = memo.get(message, _UNKNOWN)
                if msg is _UNKNOWN:
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    msg = memo[message] = parse_message(message, mode)
            elif kind == _CLOSED:
                stamp, frac, rsec, rfrac, zone, pid, verb, preamble, user, host, port, pre = (
                    m.group(*_CLOSED_GROUPS)
                )
                parsed = host_of(host)
                if parsed is not None:
                    if pre is not None:
                        closed_kind = strict
                    elif preamble == "user":
                        closed_kind = "session_closed"
                    else:
                        closed_kind = "helper"
                    msg = new(
                        SshdMessage,
                        (closed_kind, _CONNECTION_RULES[verb], parsed[0], int(port), user, None,
                         parsed[1], False, pre is not None, False, False, True),
                    )  # fmt: skip
            elif kind == _AUTH:
                stamp, frac, rsec, rfrac, zone, pid, verb, method, inv, user, host, port = m.group(
                    *_AUTH_GROUPS
                )
                parsed = host_of(host)
                if parsed is None:
                    pass
                elif verb == "Accepted":
                    if inv is None:
                        msg = new(
                            SshdMessage,
                            ("success", "accepted", parsed[0], int(port), user, method, parsed[1],
                             False, False, False, False, True),
                        )  # fmt: skip
                else:
                    base = method.partition("/")[0]
                    rule = _FAILED_RULES.get(base)
                    if rule is None:
                        rule = (
                            "failed_keyboard_interactive"
                            if base == "keyboard-interactive"
                            else "failed_other"
                        )
                    held = inv is None and base in _PROBING_METHODS
                    msg = new(
                        SshdMessage,
                        ("helper" if held else "failure", rule, parsed[0], int(port), user,
                         method, parsed[1], inv is not None, False, held, False, False),
                    )  # fmt: skip
            elif kind == _RECEIVED:
                stamp, frac, rsec, rfrac, zone, pid, host, port, code, pre, message = m.group(
                    *_RECEIVED_GROUPS
                )
                parsed = host_of(host)
                if code == "3":  # its rule reads the client's text: the full parser decides
                    msg = parse_message(message, mode)
                elif parsed is not None:
                    if code == "14":
                        received_kind, rule = strict, "disconnect_no_auth_methods"
                    elif code == "11" and pre is None:
                        received_kind, rule = "session_closed", "received_disconnect"
                    else:
                        received_kind, rule = "helper", "received_disconnect"
                    msg = new(
                        SshdMessage,
                        (received_kind, rule, parsed[0], int(port), None, None, parsed[1], False,
                         pre is not None, False, False, True),
                    )  # fmt: skip
            elif kind == _PAM:
                stamp, frac, rsec, rfrac, zone, pid, host, user = m.group(*_PAM_GROUPS)
                parsed = host_of(host)
                if parsed is not None:
                    msg = new(
                        SshdMessage,
                        ("helper", "pam_unix_auth_failure", parsed[0], None, user, None,
                         parsed[1], False, False, True, False, False),
                    )  # fmt: skip
            elif kind == _INVALID:
                stamp, frac, rsec, rfrac, zone, pid, user, host, port = m.group(*_INVALID_GROUPS)
                parsed = host_of(host)
                if parsed is not None:
                    msg = new(
                        SshdMessage,
                        ("failure", "invalid_user", parsed[0], int(port), user, None, parsed[1],
                         True, False, False, False, False),
                    )  # fmt: skip
            else:  # _UNABLE
                stamp, frac, rsec, rfrac, zone, pid, host, port, pre = m.group(*_UNABLE_GROUPS)
                parsed = host_of(host)
                if parsed is not None:
                    msg = new(
                        SshdMessage,
                        (strict, "negotiation_failed", parsed[0], int(port), None, None,
                         parsed[1], False, pre is not None, False, False, True),
                    )  # fmt: skip

            if stamp is not None:
                when = clock.memo.get(stamp) if clock is not None else None
                if when is None and clock is not None:
                    when = clock.stamp(stamp)  # a new second (or one that cannot be placed)
                if frac is not None and when is not None:
                    when += float(frac)
            else:
                when = _rfc3339_time(rsec, rfrac, zone)
            if when is None:
                untimed += 1
            if msg is not None:
                detections = feed(int(pid), msg, when)
                if detections:
                    out += detections
        except Exception:  # one line must never stop the scan (as line by line)
            errors += 1
    if previous != consumed and find("sshd", previous, consumed) >= 0:
        s, u, e = _per_line(text[previous:consumed], detector, reference, out)
        sshd_lines, untimed, errors = sshd_lines + s, untimed + u, errors + e
    if counts is not None:
        counts.lines += text.count("\n", 0, consumed) + (text[consumed - 1] != "\n")
        counts.sshd_lines += sshd_lines
        counts.untimed += untimed
        counts.errors += errors
    return out, consumed


_UNKNOWN = SshdMessage("not_failure", "")  # memo sentinel: never a parse result (no rule "")


def _per_line(
    text: str, detector: SshdDetector, reference: datetime | None, out: list[Detection]
) -> tuple[int, int, int]:
    """The slow path for the lines between two matches: the per-line parser itself. Returns
    (sshd lines, untimed, errors)."""
    sshd_lines = untimed = errors = 0
    for line in text.split("\n"):
        if "sshd" not in line:
            continue
        try:
            record = parse_syslog_line(line, reference=reference)
            if record is None:
                continue
            sshd_lines += 1
            if record.wall_time is None:
                untimed += 1
            out += detector.feed(record.pid, record.message, record.wall_time)
        except Exception:  # as in scan_chunk
            errors += 1
    return sshd_lines, untimed, errors
