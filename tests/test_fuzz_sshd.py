# Fuzz: sshd's log lines, the attacker's favourite input (the user name is theirs, byte for byte).
# Surfaces: guardian/parsers/sshd_messages.py parse_message, sshd.py SshdDetector (the multi-line
# rules), syslog_line.py parse_syslog_line, authlog_chunk.py scan_chunk / scan_byte_chunks.
#
# Invariants: every parser returns its record or None (the bulk scanner counts no `errors`: a line
# that raised inside it would be a parser bug it swallowed); the detector's memory stays within its
# bounds; an attacker-chosen user name never moves the address a line is blamed on (the "anchored
# tail" of sshd_messages.py: `invalid user x from 1.2.3.4 port 22 from 5.6.7.8` blames 5.6.7.8);
# the bulk scanner equals the per-line path on such lines; and a 1 MB line of any shape built for
# these regexes parses in well under a second (no catastrophic backtracking).
from __future__ import annotations

import ipaddress
import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardian.addresses import parse_address
from guardian.parsers.authlog_chunk import ScanCounts, scan_byte_chunks, scan_chunk
from guardian.parsers.sshd import Detection, SshdDetector
from guardian.parsers.sshd_messages import _DISPATCH, SshdMessage, parse_message
from guardian.parsers.syslog_line import IDENTIFIERS, SyslogRecord, parse_syslog_line
from tests.test_authlog_chunk import assert_equivalent
from tests.test_fuzz_support import assert_fast, counted, fuzz_settings, outcome

KINDS = {"failure", "helper", "hostless_failure", "success", "session_closed", "not_failure"}
DETECTION_KINDS = {"failure", "success", "session_closed"}
REFERENCES = [
    None,
    datetime(2025, 12, 31, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Berlin")),
]

# ---- strategies ----------------------------------------------------------------------------------
# Pieces sshd messages are made of, and what an attacker puts in a user name to confuse a regex.
_PIECES = [
    "Failed ",
    "Accepted ",
    "password ",
    "publickey ",
    "none ",
    "keyboard-interactive/pam ",
    "for ",
    "invalid user ",
    "illegal user ",
    "user ",
    "authenticating user ",
    "from ",
    " from ",
    "port ",
    " port ",
    "22",
    "65535",
    "99999999999",
    " ssh2",
    ": ",
    ":",
    " on ",
    " via ",
    "192.0.2.1",
    "5.6.7.8",
    "2001:db8::1",
    "::ffff:192.0.2.2",
    "[2001:db8::2]",
    "host.example",
    " [preauth]",
    "Invalid ",
    "Connection closed by ",
    "Connection reset by ",
    "Disconnected from ",
    "Disconnecting ",
    "Disconnecting: Too many authentication failures",
    "Received disconnect ",
    ":11: ",
    ":3: Auth fail",
    ":14: ",
    "Unable to negotiate with ",
    "no matching ",
    "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=",
    "  user=",
    "pam_unix(sshd:session): session closed for user ",
    "User ",
    " not allowed because ",
    "not listed in AllowUsers",
    "account is locked",
    "maximum authentication attempts exceeded ",
    "ROOT LOGIN REFUSED FROM ",
    "refused connect from ",
    "(",
    ")",
    "[",
    "]",
    "error: ",
    "fatal: ",
    "PAM: ",
    "Authentication failure ",
    "kernel: [ 1.0] ",
    "[ID 800047 auth.info] ",
    "Timeout ",
    "before authentication for ",
    "Did ",
    "Bad ",
    "drop connection #1 from [",
    "]:22 on [",
    "penalty: ",
    "SSH: Server;Ltype: Kex;Remote: ",
    "-22;",
    "kex_exchange_identification: ",
    " ",
    "  ",
    "\t",
    "\r",
    "\x00",
    "\ufffd",
    "\u2028",
    "\x85",
    "é",
    "x",
    "0",
    "\\",
    '"',
    "%",
]
MESSAGES = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=16).map("".join),
    st.tuples(st.sampled_from(sorted(_DISPATCH)), st.text(max_size=60)).map(" ".join),
    st.text(max_size=200),
)
# A user name an attacker would send: fake tails of every shape, arbitrary unicode, NUL.
_FAKE_TAILS = [
    " from {a} port {p}", " from {a} port {p} ssh2", " {a} port {p}", " from {a}",
    " from {a} port {p} ssh2: RSA SHA256:x", " from {a} port {p} [preauth]", " {a}",
    " from {a} not allowed because not listed in AllowUsers", " from {a} via eth0",
    " port {p}", " from {a} port {p} on 10.0.0.1 port 22",
]  # fmt: skip
# The injection of the issue: a user name carrying a complete fake tail (or several), then
# maybe more text; sshd logs the real tail after it.
INJECTED_USERS = st.tuples(
    st.text(max_size=6),
    st.lists(
        st.tuples(
            st.sampled_from(_FAKE_TAILS),
            st.sampled_from(["1.2.3.4", "10.0.0.1", "2001:db8::6", "::ffff:1.2.3.4"]),
            st.integers(0, 65535),
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(["", " ", "x", " ssh2", ":", " [preauth]"]),
).map(lambda t: t[0] + "".join(tail.format(a=a, p=p) for tail, a, p in t[1]) + t[2])
USERS = st.one_of(
    INJECTED_USERS,
    INJECTED_USERS,
    st.lists(st.sampled_from(_PIECES), max_size=10).map("".join),
    st.text(max_size=40),
).map(lambda u: u.replace("\n", ""))
ADDRESSES = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["192.0.2.1", "5.6.7.8", "2001:db8::1", "::ffff:192.0.2.2"]),
)
PORTS = st.integers(0, 65535)


# ---- parse_message -------------------------------------------------------------------------------
def check_message(message: str) -> None:
    for mode in ("normal", "aggressive"):
        msg = outcome("sshd_message", lambda mode=mode: parse_message(message, mode))
        assert msg is None or isinstance(msg, SshdMessage)
        if msg is None:
            continue
        assert msg.kind in KINDS and isinstance(msg.rule, str) and msg.rule
        assert msg.source is None or isinstance(
            msg.source, ipaddress.IPv4Address | ipaddress.IPv6Address
        )
        assert msg.source is None or msg.host_name is None
        assert msg.port is None or 0 <= msg.port < 10**10
        assert msg.user is None or isinstance(msg.user, str)


@fuzz_settings(500)
@given(message=MESSAGES)
@counted("sshd_message")
def test_parse_message_returns_a_message_or_none(message: str) -> None:
    check_message(message)


# Lines whose address sits in an anchored tail after a user name: (template, kind, rule).
# "{u}" is the attacker's; templates marked no_colon need a user without ':' (sshd cuts the name
# there, auth2.c), the others take any user name.
INJECTION_TEMPLATES = [
    ("Invalid user {u} from {h} port {p}", False),
    ("Failed password for {u} from {h} port {p} ssh2", True),
    ("Failed password for invalid user {u} from {h} port {p} ssh2", True),
    ("Failed keyboard-interactive/pam for invalid user {u} from {h} port {p} ssh2", True),
    ("Accepted publickey for {u} from {h} port {p} ssh2: ED25519 SHA256:AbC/+x", True),
    ("Accepted password for {u} from {h} port {p} ssh2", True),
    ("Connection closed by authenticating user {u} {h} port {p}", False),
    ("Connection reset by invalid user {u} {h} port {p}", False),
    ("Disconnected from user {u} {h} port {p}", False),
    ("Disconnected from invalid user {u} {h} port {p}", False),
    (
        "Disconnecting invalid user {u} {h} port {p}: Change of username or service not allowed",
        True,
    ),
    ("maximum authentication attempts exceeded for invalid user {u} from {h} port {p} ssh2", True),
    ("error: maximum authentication attempts exceeded for {u} from {h} port {p} ssh2", True),
]


def check_injection(template: str, user: str, host: str, port: int, preauth: bool) -> None:
    line = template.format(u=user, h=host, p=port) + (" [preauth]" if preauth else "")
    expected = parse_address(host)
    for mode in ("normal", "aggressive"):
        msg = outcome("sshd_message", lambda mode=mode: parse_message(line, mode))
        assert msg is not None, line
        assert (msg.source, msg.port) == (expected, port), (line, msg)


@fuzz_settings(600)
@given(
    template=st.sampled_from(INJECTION_TEMPLATES),
    user=USERS,
    host=ADDRESSES,
    port=PORTS,
    preauth=st.booleans(),
)
@counted("sshd_injection")
def test_a_user_name_never_moves_the_address(
    template: tuple[str, bool], user: str, host: str, port: int, preauth: bool
) -> None:
    text, no_colon = template
    if no_colon:
        user = user.replace(":", "")
    if text.startswith("Accepted"):  # only an existing (valid) user is accepted: no such name
        while user.startswith(("invalid user ", "illegal user ")):
            user = user[13:]
    check_injection(text, user, host, port, preauth)


_ENDS_IN_COLONS = [
    "Disconnecting invalid user bob {h} port 22: Change of username or service not allowed",
    "Unable to negotiate with {h} port 22: no matching key exchange method found.",
    "banner exchange: Connection from {h} port 22: invalid format",
    "ssh_dispatch_run_fatal: Connection from {h} port 22: message authentication code incorrect",
]


@pytest.mark.parametrize("template", _ENDS_IN_COLONS, ids=lambda t: t.split(" ")[0])
def test_a_source_ending_in_double_colon_is_still_blamed(template: str) -> None:
    msg = parse_message(template.format(h="2001:db8:1:2::"), "aggressive")
    assert msg is not None and str(msg.source) == "2001:db8:1:2::"


def test_the_injection_of_the_issue_blames_the_real_source() -> None:
    msg = parse_message("Invalid user x from 1.2.3.4 port 22 from 5.6.7.8 port 22")
    assert msg is not None and str(msg.source) == "5.6.7.8" and msg.user == "x from 1.2.3.4 port 22"
    msg = parse_message("Failed password for x from 1.2.3.4 port 22 ssh2 from 5.6.7.8 port 2 ssh2")
    assert msg is not None and str(msg.source) == "5.6.7.8" and msg.port == 2


# ---- the detector --------------------------------------------------------------------------------
STEPS = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(1, 6), st.integers(0, 2**31)),
        st.one_of(
            MESSAGES,
            st.builds(
                lambda t, u, h, p: t[0].format(u=u, h=h, p=p),
                st.sampled_from(INJECTION_TEMPLATES),
                USERS,
                ADDRESSES,
                PORTS,
            ),
        ),
        st.one_of(st.none(), st.floats(0, 2e9), st.floats(allow_nan=False, allow_infinity=False)),
    ),
    max_size=40,
)


def check_detector(steps: list[tuple[int | None, str, float | None]], mode: str) -> None:
    detector = SshdDetector(
        "aggressive" if mode == "aggressive" else "normal",
        max_connections=4,
        max_sessions=4,
        max_age=60.0,
    )
    for pid, message, wall_time in steps:
        found = outcome(
            "sshd_detector", lambda p=pid, m=message, t=wall_time: detector.feed(p, m, t)
        )
        assert isinstance(found, list)
        for detection in found:
            assert isinstance(detection, Detection) and detection.kind in DETECTION_KINDS
            assert detection.attempts >= 1 and detection.pid == pid
            assert detection.source is None or detection.host_name is None
        assert detector.tracked <= 4 and len(detector._sessions) <= 4
        for conn in detector._connections.values():
            assert len(conn.users) <= 8 and len(conn.held) <= 32 and conn.pending <= 32


@fuzz_settings(250)
@given(steps=STEPS, mode=st.sampled_from(["normal", "aggressive"]))
@counted("sshd_detector")
def test_the_detector_never_raises_and_stays_bounded(
    steps: list[tuple[int | None, str, float | None]], mode: str
) -> None:
    check_detector(steps, mode)


# ---- syslog lines and the bulk scanner -----------------------------------------------------------
_PREFIXES = [
    "Nov 21 08:00:00 h sshd[1]: ",
    "Feb 29 02:30:00 h sshd-session[22]: ",
    "Mar 29 02:30:00 h sshd[3]: ",
    "Nov  2 08:00:00.123 host sshd[4]: ",
    "Nov 21 08:00:00 sshd[5]: ",
    "Nov 21 08:00:00 [sshd]: ",
    "2026-11-21T08:00:00Z h sshd[6]: ",
    "2026-11-21T08:00:00.5+01:00 h sshd-session[7]: ",
    "2026-02-30T08:00:00+00:00 h sshd[8]: ",
    "2026-11-21 08:00:00 h sshd[9]: ",
    "<38>1 2019-07-08T17:40:16.9-04:00 h sshd 57915 - - ",
    '<38>1 - h sshd - - [a b="]\\""] ',
    "<38>1 2019-07-08T17:40:16Z h sshd-session 1 - [x][y] \ufeff",
    "9999-12-31T23:59:59+23:59 h sshd[1]: ",
    "Nov 21 08:00:00 h sshd[99999999999]: ",
    "Xyz 99 99:99:99 h sshd[1]: ",
    "",
]
LINES = st.one_of(
    st.tuples(st.sampled_from(_PREFIXES), MESSAGES).map("".join),
    st.lists(st.sampled_from([*_PREFIXES, *_PIECES, "sshd", "\n"]), max_size=16).map("".join),
    st.text(max_size=200),
)
REFERENCE = st.sampled_from(REFERENCES)


def check_syslog_line(line: str, reference: datetime | None) -> None:
    record = outcome("syslog_line", lambda: parse_syslog_line(line, reference=reference))
    assert record is None or isinstance(record, SyslogRecord)
    if record is not None:
        assert record.identifier in IDENTIFIERS
        assert record.pid is None or 0 <= record.pid < 10**10
        assert record.wall_time is None or math.isfinite(record.wall_time)
        assert isinstance(record.message, str)


@fuzz_settings(400)
@given(line=LINES, reference=REFERENCE)
@counted("syslog_line")
def test_parse_syslog_line_returns_a_record_or_none(line: str, reference: datetime | None) -> None:
    check_syslog_line(line, reference)


def check_scan(text: str, pieces: list[bytes], reference: datetime | None, mode: str) -> None:
    counts = ScanCounts()
    detector = SshdDetector("aggressive" if mode == "aggressive" else "normal")
    for final in (False, True):
        result = outcome(
            "authlog_chunk",
            lambda final=final: scan_chunk(text, detector, reference, final=final, counts=counts),
        )
        assert not isinstance(result, BaseException)
        found, consumed = result
        assert consumed == (len(text) if final else text.rfind("\n") + 1)
        assert all(isinstance(d, Detection) and d.kind in DETECTION_KINDS for d in found)
    chunks = outcome(
        "authlog_chunk",
        lambda: list(
            scan_byte_chunks(iter(pieces), detector, reference, counts=counts, max_line=64)
        ),
    )
    assert not isinstance(chunks, BaseException)
    assert len(chunks) in (len(pieces), len(pieces) + 1)  # + the unterminated last line
    assert counts.errors == 0, "a line raised inside the bulk scanner (a parser bug it swallowed)"


@fuzz_settings(300)
@given(
    text=st.lists(LINES, max_size=10).map("\n".join),
    pieces=st.lists(st.one_of(st.binary(max_size=80), LINES.map(str.encode)), max_size=6),
    reference=REFERENCE,
    mode=st.sampled_from(["normal", "aggressive"]),
)
@counted("authlog_chunk")
def test_the_bulk_scanner_never_raises_nor_swallows_an_error(
    text: str, pieces: list[bytes], reference: datetime | None, mode: str
) -> None:
    check_scan(text, pieces, reference, mode)


@fuzz_settings(150)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(_PREFIXES[:10]),
            st.sampled_from(INJECTION_TEMPLATES),
            USERS,
            ADDRESSES,
            PORTS,
        ),
        min_size=1,
        max_size=8,
    )
)
@counted("authlog_equivalence")
def test_the_bulk_scanner_equals_the_per_line_path_on_injected_lines(
    lines: list[tuple[str, tuple[str, bool], str, str, int]],
) -> None:
    text = "".join(
        prefix + template.format(u=user.replace(":", "") if colon else user, h=host, p=port) + "\n"
        for prefix, (template, colon), user, host, port in lines
    )
    outcome("authlog_chunk", lambda: assert_equivalent(text))


# ---- time: 1 MB lines built for the regexes ------------------------------------------------------
# Each shape repeats a token a regex quantifies over and ends where the match must fail, the input
# that makes a backtracking regex quadratic or worse. Linear parsers do these in milliseconds.
MB = 1 << 20
_SHAPES = [
    ("Invalid user ", " from 1.2.3.4", " port x"),
    ("Invalid user ", " ", "x"),
    ("Failed password for ", " from 1.2.3.4 port 22", " ssh2:"),
    ("Failed password for ", ": from a", " port x"),
    ("Accepted publickey for ", " from a port 1 ssh2", ":"),
    ("User ", " from a", " not allowed because x"),
    ("User ", "a ", " not allowed because"),
    ("User not known to the underlying authentication module for ", " from a", " x"),
    ("Authentication failure for ", " from a via b", " c"),
    ("error: PAM: Authentication failure for ", "a ", "\x00"),
    ("maximum authentication attempts exceeded for ", " from a", " port x"),
    ("ROOT LOGIN REFUSED ", " FROM a", " port x"),
    ("Received disconnect from ", "a:", " b"),
    ("Received disconnect from a", " port 1:", "x"),
    ("refused connect from ", " (a)", "("),
    ("Connection closed by authenticating user ", "a ", " port"),
    ("Connection from ", "a port 1 on b port 2 ", "rdomain"),
    ("Disconnecting ", "user a b port 1 ", ":"),
    ("Disconnected from user ", " a port 1", " x"),
    ("Timeout before authentication for connection from ", "a ", "to"),
    ("Did not receive identification string from ", "a", " port x"),
    ("Bad protocol version identification ", " from a", " port x"),
    ("Unable to negotiate a ", "b ", ":"),
    ("fatal: no matching ", "mac ", "found"),
    ("SSH: Server;Ltype: Kex;Remote: ", "a-1", " "),
    ("drop connection #1 from [a]:1 on [b]:2 ", "penalty: ", ""),
    ("pam_unix(sshd:auth): authentication failure;", " rhost=a", "\t" * 1000 + "x"),
    ("pam_unix(sshd:auth): authentication failure;", " rhost=" + "\t" * 64, "x"),
    ("kernel: [", " ", "]"),
    ("[ID 1 ", "a.", " "),
]


@pytest.mark.parametrize(("head", "token", "tail"), _SHAPES, ids=[s[0][:24] for s in _SHAPES])
def test_a_one_megabyte_line_parses_fast(head: str, token: str, tail: str) -> None:
    message = head + token * ((MB - len(head)) // len(token)) + tail
    assert_fast(lambda: parse_message(message, "aggressive"), 0.5, f"parse_message {head!r}")
    line = "Nov 21 08:00:00 h sshd[1]: " + message
    assert_fast(lambda: parse_syslog_line(line, reference=REFERENCES[1]), 0.5, "parse_syslog_line")
    text = "\n" + line + "\n"
    assert_fast(lambda: scan_chunk(text, SshdDetector(), REFERENCES[1]), 0.5, "scan_chunk")


@pytest.mark.parametrize(
    "line",
    [
        "<38>1 - h sshd - - [" + '"' * MB,
        "<38>1 - h sshd - - [a " + '"\\' * (MB // 2),
        "<38>1 - h sshd - - " + "[a]" * (MB // 3) + "x",
        "Nov 21 08:00:00 " + "a" * MB + " sshd",
        "2026-11-21T08:00:00 " + " " * MB + "sshd",
        "Nov 21 08:00:00 " + "[sshd" * (MB // 5),
    ],
    ids=[
        "5424-quotes",
        "5424-escapes",
        "5424-elements",
        "traditional-host",
        "3339-spaces",
        "idents",
    ],
)
def test_a_one_megabyte_syslog_line_parses_fast(line: str) -> None:
    assert_fast(lambda: parse_syslog_line(line, reference=REFERENCES[1]), 0.5, "parse_syslog_line")
    text = "\n" + line + "\n"
    assert_fast(lambda: scan_chunk(text, SshdDetector(), REFERENCES[1]), 0.5, "scan_chunk")
