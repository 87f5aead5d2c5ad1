# sshd's message catalog, pure: one sshd MESSAGE text (no syslog prefix) -> an SshdMessage saying
# what kind of line it is (failure, helper, host-less failure, success, session end, known
# non-failure) and what it names (source address, port, user, method), or None for lines that
# matter to nobody. No state and no I/O: the multi-line rules live in guardian/parsers/sshd.py.
#
# The catalog is spec/sshd-events.md §4 (both tables; the aggressive one only in aggressive mode)
# plus the older formats that fail2ban's reference corpus still carries.
#
# Theory of the address ("anchored tail"). The user name is attacker-chosen and may contain
# " from 10.0.0.1 port 22", so an address is never taken from where a user name can reach:
#   * lines whose tail is fixed text ("Invalid user U from H port N", connection ids
#     "[authenticating |invalid ]user U H port N", "... not allowed because <fixed reason>") are
#     matched to the end of the line, so only the real, last host can complete the match;
#   * "Failed/Accepted METHOD for U from H port N ssh2[: INFO]" carries attacker text after the
#     host too (certificate IDs, hostbased client names). There the FIRST " from " whose remainder
#     parses as a complete tail wins: sshd cuts the user name at ':' (BSD auth style, auth2.c), so a
#     fake tail inside the user can never be followed by the ": INFO" or end-of-line it needs.
#
# Speed: a message is dispatched on its first word to one or two compiled regexes; unknown first
# words cost one dict lookup. Records are NamedTuples (immutable, typed; about four times cheaper
# to build than a frozen dataclass), because a big auth.log feeds millions of them through here.
from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Literal, NamedTuple, TypeAlias

from guardian.addresses import IPAddress, parse_address

Mode: TypeAlias = Literal["normal", "aggressive"]
Kind: TypeAlias = Literal[
    "failure",  # F: counts
    "helper",  # H: gives an address or user, counts nothing by itself
    "hostless_failure",  # HL: counts once the same connection's address is known
    "success",  # S: "Accepted ..."
    "session_closed",  # an authenticated session ended
    "not_failure",  # known and explicitly harmless (POSSIBLE BREAK-IN, Postponed, ...)
]


class SshdMessage(NamedTuple):
    """What one sshd message says. `source` is None when the line names no address, or names a
    host (UseDNS yes) instead: then `host_name` holds that text, never resolved."""

    kind: Kind
    rule: str  # short, stable name of the catalog entry ("failed_password", "invalid_user", ...)
    source: IPAddress | None = None
    port: int | None = None
    user: str | None = None
    method: str | None = None
    host_name: str | None = None
    invalid_user: bool = False  # sshd said "invalid user" / "illegal user"
    preauth: bool = False  # relayed from the pre-authentication child (" [preauth]")
    held: bool = False  # an attempt that counts only if the connection does not succeed
    exhausted: bool = False  # MaxAuthTries reached: the connection's held attempts count now
    closes: bool = False  # the connection is over after this line


_PREAUTH = " [preauth]"
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


@lru_cache(maxsize=8192)
def _host(text: str) -> tuple[IPAddress | None, str | None] | None:
    """Host text -> (address, None), (None, host name), or None when it is neither.

    Cached: a brute force repeats the same few addresses, and ipaddress is slow."""
    try:
        return parse_address(text), None
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text):
        return None, text
    return None


_Handler: TypeAlias = Callable[[str, bool, bool], SshdMessage | None]


def _port(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _make(
    kind: Kind,
    rule: str,
    host: str | None,
    preauth: bool,
    *,
    port: str | None = None,
    user: str | None = None,
    method: str | None = None,
    invalid_user: bool = False,
    held: bool = False,
    exhausted: bool = False,
    closes: bool = False,
) -> SshdMessage | None:
    source: IPAddress | None = None
    host_name: str | None = None
    if port is not None and len(port) > 10:
        return None  # no port sshd writes (and int() refuses thousands of digits)
    if host is not None:
        parsed = _host(host)
        if parsed is None:
            return None  # not an address nor a name: not a line sshd wrote
        source, host_name = parsed
    return SshdMessage(
        kind,
        rule,
        source,
        _port(port),
        user,
        method,
        host_name,
        invalid_user,
        preauth,
        held,
        exhausted,
        closes,
    )


def _strict(aggressive: bool) -> Kind:
    """Kind of an aggressive-table failure that names its address: a helper in normal mode."""
    return "failure" if aggressive else "helper"


def _strict_hostless(aggressive: bool) -> Kind:
    return "hostless_failure" if aggressive else "not_failure"


# ---- connection ids --------------------------------------------------------------------------
# sshpkt_fmt_connection_id: "[PREAMBLE ]IP port N", PREAMBLE one of "authenticating user U",
# "invalid user U", "user U" (after authentication). U may hold spaces, never ':'; the greedy
# user leaves only the real last "HOST port N" for the anchored tail.
_CID_USER = re.compile(
    r"(?P<pre>authenticating user|invalid user|user) (?P<user>.*) (?P<host>\S+) port (?P<port>\d+)",
    re.S,
)
_CID_PLAIN = re.compile(r"(?P<host>\S+)(?: port (?P<port>\d+))?(?: on \S+(?: port \d+)?)?")


class _Cid(NamedTuple):
    host: str
    port: str | None
    preamble: str | None  # "authenticating user", "invalid user", "user" or None
    user: str | None


_PREAMBLES = ("authenticating user ", "invalid user ", "user ")


def _cid(text: str) -> _Cid | None:
    # Fast path for the usual "[PREAMBLE U ]HOST port N": split the anchored tail off the end.
    head, sep, port = text.rpartition(" port ")
    if sep and port.isdigit() and port.isascii():
        before, space, host = head.rpartition(" ")
        if not space:
            return _Cid(head, port, None, None)
        for preamble in _PREAMBLES:
            if before.startswith(preamble):
                return _Cid(host, port, preamble[:-1], before[len(preamble) :])
    if text[:1] in "aiu":
        m = _CID_USER.fullmatch(text)
        if m is not None:
            return _Cid(m["host"], m["port"], m["pre"], m["user"])
    m = _CID_PLAIN.fullmatch(text)
    if m is not None:
        return _Cid(m["host"], m["port"], None, None)
    return None


# ---- the rules, by first word ------------------------------------------------------------------

_AUTH_LOG = re.compile(
    r"(?P<method>\S+) for (?P<inv>invalid user )?(?P<user>.*?) from (?P<host>\S+)"
    r"(?: port (?P<port>\d+))?(?: on \S+)?(?: ssh\d*)?(?:: .*)?",
    re.S,
)
# Methods whose failure a legitimate client produces on its way in: "none" is every client's
# first probe, and a client with several keys fails with each until one fits.
_PROBING_METHODS = frozenset({"publickey", "none"})
_FAILED_RULES = {
    "password": "failed_password",
    "publickey": "failed_publickey",
    "none": "failed_none",
    "hostbased": "failed_hostbased",
}


class _AuthLog(NamedTuple):
    method: str
    invalid: bool
    user: str
    host: str
    port: str | None


def _auth_log(rest: str) -> _AuthLog | None:
    """ "METHOD for [invalid user ]U from HOST port N ssh2[: INFO]" -> its parts."""
    # Fast path: nothing after "ssh2" and no ':' before the last " from " (so no ": INFO" part
    # hides there): the line's end is the anchored tail, the last " from " the real one.
    if rest.endswith(" ssh2"):
        head, sep, tail = rest.rpartition(" from ")
        parts = tail.split(" ")
        if sep and len(parts) == 4 and parts[1] == "port" and ":" not in head:
            method, sep, user = head.partition(" for ")
            port = parts[2]
            if sep and port.isdigit() and port.isascii() and " " not in method:
                invalid = user.startswith("invalid user ")
                return _AuthLog(method, invalid, user[13:] if invalid else user, parts[0], port)
    m = _AUTH_LOG.fullmatch(rest)
    if m is None:
        return None
    return _AuthLog(m["method"], m["inv"] is not None, m["user"], m["host"], m["port"])


def _failed(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _auth_log(rest)
    if m is None:
        return None
    method = m.method
    base = method.split("/", 1)[0]
    invalid = m.invalid
    rule = _FAILED_RULES.get(base)
    if rule is None:
        rule = "failed_keyboard_interactive" if base == "keyboard-interactive" else "failed_other"
    held = base in _PROBING_METHODS and not invalid
    kind: Kind = "helper" if held else "failure"
    return _make(
        kind,
        rule,
        m.host,
        preauth,
        port=m.port,
        user=m.user,
        method=method,
        invalid_user=invalid,
        held=held,
    )


def _accepted(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _auth_log(rest)
    if m is None or m.invalid:
        return None
    return _make(
        "success",
        "accepted",
        m.host,
        preauth,
        port=m.port,
        user=m.user,
        method=m.method,
        closes=True,
    )


def _known(rule: str) -> _Handler:
    def parse(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
        return _make("not_failure", rule, None, preauth)

    return parse


_INVALID_USER = re.compile(
    r"user (?P<user>.*?) (?:from )?(?P<host>\S+)(?: port (?P<port>\d+))?(?: on \S+)?", re.S
)


def _invalid(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # Fast path: "user U from HOST port N", the tail anchored at the end.
    head, sep, tail = rest.rpartition(" from ")
    parts = tail.split(" ")
    if sep and len(parts) == 3 and parts[1] == "port" and head.startswith("user "):
        port = parts[2]
        if port.isdigit() and port.isascii():
            return _make(
                "failure",
                "invalid_user",
                parts[0],
                preauth,
                port=port,
                user=head[5:],
                invalid_user=True,
            )
    m = _INVALID_USER.fullmatch(rest)
    if m is None:
        return None
    return _make(
        "failure",
        "invalid_user",
        m["host"],
        preauth,
        port=m["port"],
        user=m["user"],
        invalid_user=True,
    )


_NOT_ALLOWED = re.compile(
    r"(?P<user>.*?) (?:from )?(?P<host>\S+) not allowed because (?:not listed in AllowUsers"
    r"|listed in DenyUsers|not in any group|a group is listed in DenyGroups"
    r"|none of user's groups are listed in AllowGroups)",
    re.S,
)
_LOCKED_SUFFIX = " not allowed because account is locked"
_PAM_UNKNOWN = re.compile(
    r"not known to the underlying authentication module for (?P<inv>illegal user )?"
    r"(?P<user>.*?) (?:from )?(?P<host>\S+)",
    re.S,
)


def _user(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if rest.endswith(_LOCKED_SUFFIX):
        return _make(
            "hostless_failure", "account_locked", None, preauth, user=rest[: -len(_LOCKED_SUFFIX)]
        )
    if rest.startswith("not known "):
        m = _PAM_UNKNOWN.fullmatch(rest)
        if m is not None:
            return _make(
                "failure",
                "pam_user_unknown",
                m["host"],
                preauth,
                user=m["user"],
                invalid_user=m["inv"] is not None,
            )
    m = _NOT_ALLOWED.fullmatch(rest)
    if m is None:
        return None
    return _make("failure", "user_not_allowed", m["host"], preauth, user=m["user"])


_ROOT_REFUSED = re.compile(
    r"LOGIN REFUSED(?: .*)? FROM (?P<host>\S+)(?: port (?P<port>\d+))?(?: on \S+)?", re.S
)


def _root(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _ROOT_REFUSED.fullmatch(rest)
    if m is None:
        return None
    return _make("failure", "root_login_refused", m["host"], preauth, port=m["port"], user="root")


# "error: PAM: Authentication failure for [illegal user ]U from H" (auth-pam.c), and the OS X /
# old variants "authentication error ... via IF".
_PAM_AUTH = re.compile(
    r"(?:failure|error|failed) for (?P<inv>illegal user )?(?P<user>.*?) (?:from )?(?P<host>\S+)"
    r"(?: via \S+)?",
    re.S,
)


def _authentication(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _PAM_AUTH.fullmatch(rest)
    if m is None:
        return None
    return _make(
        "failure",
        "pam_auth_failure",
        m["host"],
        preauth,
        user=m["user"],
        invalid_user=m["inv"] is not None,
    )


_MAX_EXCEEDED = re.compile(
    r"authentication attempts exceeded for (?P<inv>invalid user )?(?P<user>.*?) from (?P<host>\S+)"
    r"(?: port (?P<port>\d+))?(?: on \S+)?(?: ssh\d*)?",
    re.S,
)


def _maximum(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _MAX_EXCEEDED.fullmatch(rest)
    if m is None:
        return None
    return _make(
        "failure",
        "max_auth_exceeded",
        m["host"],
        preauth,
        port=m["port"],
        user=m["user"],
        invalid_user=m["inv"] is not None,
        exhausted=True,
    )


_TOO_MANY = "Too many authentication failures"


def _disconnecting_colon(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # Old format, no address: "Disconnecting: Too many authentication failures [for U]".
    if not rest.startswith(_TOO_MANY):
        return None
    tail = rest[len(_TOO_MANY) :]
    user = tail[5:] if tail.startswith(" for ") else None
    if tail and user is None:
        return None
    return _make(
        "hostless_failure", "too_many_auth_failures", None, preauth, user=user, exhausted=True
    )


# The ": " that ends a connection id "... HOST port N". Not simply the first ": ": an IPv6 source
# ending in "::" (2001:db8:1:2::, any address an attacker picks in its /64) followed by " port N"
# holds one, and splitting there dropped the line, so such sources were never counted. A user
# name cannot hold ':' and an address cannot hold " port", so the first " port N: " is the end.
_CID_END = re.compile(r" port \d+: ")


def _split_cid(text: str) -> tuple[str, str, str]:
    """Like text.partition(": "), at the end of the connection id (see _CID_END)."""
    found = _CID_END.search(text)
    if found is None:
        return text.partition(": ")  # the old formats without a port: HOST is followed by ": "
    return text[: found.end() - 2], ": ", text[found.end() :]


def _disconnecting(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # ssh_packet_disconnect: "Disconnecting CID: REASON".
    cid_text, sep, reason = _split_cid(rest)
    cid = _cid(cid_text) if sep else None
    if cid is None:
        return None
    invalid = cid.preamble == "invalid user"
    if reason.startswith("Change of username or service not allowed"):
        return _make(
            "failure",
            "change_of_username",
            cid.host,
            preauth,
            port=cid.port,
            user=cid.user,
            invalid_user=invalid,
            closes=True,
        )
    # "Too many authentication failures" follows "maximum authentication attempts exceeded",
    # which already counted: a helper.
    return _make(
        "helper", "disconnecting", cid.host, preauth, port=cid.port, user=cid.user, closes=True
    )


# "Received disconnect from H port N:CODE: TEXT" (and the old "from H: CODE: TEXT"). The host is
# followed by " port N:" or by ": " — never by a bare ':' that an IPv6 address could contain.
_RECEIVED = re.compile(
    r"disconnect from (?P<host>\S+?)(?: port (?P<port>\d+):\s*|: )(?P<code>\d+): ?(?P<text>.*)",
    re.S,
)


def _received(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # Fast path for "disconnect from HOST port N:CODE: TEXT" (TEXT is the client's: split from
    # the left, where the fixed part is).
    if rest.startswith("disconnect from "):
        host, sep, after = rest[16:].partition(" port ")
        port, sep2, after = after.partition(":")
        code, sep3, text = after.partition(":")
        if (
            sep
            and sep2
            and sep3
            and " " not in host
            and port.isdigit()
            and port.isascii()
            and code.isdigit()
            and code.isascii()
        ):
            return _disconnect(
                host, port, code, text[1:] if text[:1] == " " else text, preauth, aggressive
            )
    m = _RECEIVED.fullmatch(rest)
    if m is None:
        return None
    return _disconnect(m["host"], m["port"], m["code"], m["text"], preauth, aggressive)


def _disconnect(
    host: str, port: str | None, code: str, text: str, preauth: bool, aggressive: bool
) -> SshdMessage | None:
    if code == "3" and text.endswith("Auth fail"):
        return _make("failure", "disconnect_auth_fail", host, preauth, port=port, closes=True)
    if code == "14":  # SSH2_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE: the client gave up
        return _make(
            _strict(aggressive), "disconnect_no_auth_methods", host, preauth, port=port, closes=True
        )
    if code == "11" and not preauth:  # by application, after authentication
        return _make("session_closed", "received_disconnect", host, preauth, port=port, closes=True)
    return _make("helper", "received_disconnect", host, preauth, port=port, closes=True)


_LIBWRAP = re.compile(r"connect from .* \((?P<host>[^()\s]+)\)", re.S)


def _refused(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _LIBWRAP.fullmatch(rest)
    if m is None:
        return None
    return _make("failure", "libwrap_refused", m["host"], preauth, closes=True)


_PAM_RHOST = re.compile(r"rhost=(?P<host>\S*)(?:\s+user=(?P<user>\S*))?\s*$")


def _pam(head: str, rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # pam_MODULE(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser=
    # rhost=H  user=U   — a helper holding one attempt: "Failed password" follows ~2 s later
    # (PAM's fail delay) for the same attempt, or "Accepted" when a second PAM module succeeds.
    if head.endswith("(sshd:auth):"):
        if not rest.startswith("authentication failure;"):
            return None
        # rhost (and user, for known accounts) end the line; ruser comes before them.
        _, sep, tail = rest.rpartition(" rhost=")
        fields = tail.split(" ")
        if sep and len(fields) == 1:
            host, user = fields[0], None
        elif sep and len(fields) == 3 and not fields[1] and fields[2].startswith("user="):
            host, user = fields[0], fields[2][5:]
        else:
            m = _PAM_RHOST.search(rest)
            if m is None:
                return None
            host, user = m["host"], m["user"]
        if not host:
            return None
        if not user:
            ruser = rest.partition(" ruser=")[2].partition(" ")[0]
            user = ruser or None
        return _make("helper", "pam_unix_auth_failure", host, preauth, user=user, held=True)
    if head.endswith("(sshd:session):"):
        if rest.startswith("session closed for user "):
            user = rest[len("session closed for user ") :]
            return _make("session_closed", "pam_session_closed", None, preauth, user=user)
        if rest.startswith("session opened for user "):
            return _make("not_failure", "pam_session_opened", None, preauth)
    return None


def _connection(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if rest.startswith("closed by ") or rest.startswith("reset by "):
        verb, _, cid_text = rest.partition(" by ")
        cid = _cid(cid_text)
        if cid is None:
            return None
        rule = "connection_" + verb
        if preauth:
            kind = _strict(aggressive)
        elif cid.preamble == "user":
            kind = "session_closed"
        else:
            kind = "helper"
        return _make(kind, rule, cid.host, preauth, port=cid.port, user=cid.user, closes=True)
    if rest.startswith("from "):
        return _connection_from(rest[5:], preauth)
    return None


_CONNECTION_FROM = re.compile(
    r"(?P<host>\S+)(?: port (?P<port>\d+))?(?: on \S+ port \d+)?(?: rdomain .*)?", re.S
)


def _connection_from(text: str, preauth: bool) -> SshdMessage | None:
    cid_text, sep, _error = _split_cid(text)
    if sep:  # sshpkt_fatal without a tag: "Connection from CID: ERROR"
        cid = _cid(cid_text)
        if cid is None:
            return None
        return _make("helper", "connection_error", cid.host, preauth, port=cid.port, closes=True)
    if text.endswith(" timed out"):
        cid = _cid(text[: -len(" timed out")])
        if cid is None:
            return None
        return _make(
            "helper", "connection_timed_out", cid.host, preauth, port=cid.port, closes=True
        )
    m = _CONNECTION_FROM.fullmatch(text)
    if m is None:
        return None
    return _make("helper", "connection_from", m["host"], preauth, port=m["port"])


def _disconnected(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if not rest.startswith("from "):
        return None
    cid = _cid(rest[5:])
    if cid is None:
        return None
    if preauth:
        kind = _strict(aggressive)
    elif cid.preamble == "user":
        kind = "session_closed"
    else:
        kind = "helper"
    return _make(kind, "disconnected", cid.host, preauth, port=cid.port, user=cid.user, closes=True)


_TIMEOUT_V98 = re.compile(r"connection from (?P<host>\S+) to \S+, pid = \d+")


def _timeout(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if not rest.startswith("before authentication for "):
        return None
    text = rest[len("before authentication for ") :]
    if text.startswith("connection from "):  # 9.8+, logged by the listener
        m = _TIMEOUT_V98.fullmatch(text)
        if m is None:
            return None
        return _make(_strict(aggressive), "timeout_before_auth", m["host"], preauth, closes=True)
    cid = _cid(text)
    if cid is None:
        return None
    return _make(
        _strict(aggressive), "timeout_before_auth", cid.host, preauth, port=cid.port, closes=True
    )


_NO_IDENT = re.compile(
    r"not receive identification string from (?P<host>\S+)(?: port (?P<port>\d+))?"
)


def _did(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _NO_IDENT.fullmatch(rest)
    if m is None:
        return None
    return _make(
        _strict(aggressive), "no_identification", m["host"], preauth, port=m["port"], closes=True
    )


_BAD_VERSION = re.compile(
    r"protocol version identification .* from (?P<host>\S+)(?: port (?P<port>\d+))?", re.S
)


def _bad(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    m = _BAD_VERSION.fullmatch(rest)
    if m is None:
        return None
    return _make(
        _strict(aggressive), "bad_protocol_version", m["host"], preauth, port=m["port"], closes=True
    )


_KEX_HOSTLESS = (
    "client sent invalid protocol identifier",
    "Connection closed by remote host",
    "read: Connection reset by peer",
)


def _kex_identification(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if rest.startswith(_KEX_HOSTLESS):
        return _make(_strict_hostless(aggressive), "kex_identification", None, preauth)
    return _make("not_failure", "kex_identification_other", None, preauth)


def _tagged_connection_error(
    rest: str, aggressive: bool, preauth: bool, prefix: str, failures: tuple[str, ...], rule: str
) -> SshdMessage | None:
    if not rest.startswith(prefix):
        return None
    cid_text, sep, error = _split_cid(rest[len(prefix) :])
    cid = _cid(cid_text) if sep else None
    if cid is None:
        return None
    kind = _strict(aggressive) if error in failures else "helper"
    return _make(kind, rule, cid.host, preauth, port=cid.port, closes=True)


def _banner(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    return _tagged_connection_error(
        rest,
        aggressive,
        preauth,
        "exchange: Connection from ",
        ("invalid format",),
        "banner_invalid_format",
    )


def _dispatch_fatal(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    return _tagged_connection_error(
        rest,
        aggressive,
        preauth,
        "Connection from ",
        ("message authentication code incorrect", "Connection corrupted"),
        "dispatch_fatal",
    )


_NEGOTIATE_HOSTLESS = re.compile(r"to negotiate an? [\w ]+")


def _unable(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if rest.startswith("to negotiate with "):
        cid_text, sep, _error = _split_cid(rest[len("to negotiate with ") :])
        cid = _cid(cid_text) if sep else None
        if cid is None:
            return None
        return _make(
            _strict(aggressive), "negotiation_failed", cid.host, preauth, port=cid.port, closes=True
        )
    if _NEGOTIATE_HOSTLESS.fullmatch(rest):  # old format, no address
        return _make(_strict_hostless(aggressive), "negotiation_failed_hostless", None, preauth)
    return None


_NO_MATCHING = re.compile(r"matching [\w ]+? found: client .*", re.S)


def _no(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # Older OpenSSH: "fatal: no matching mac found: client ... server ... [preauth]" (no address)
    if _NO_MATCHING.fullmatch(rest):
        return _make(_strict_hostless(aggressive), "negotiation_failed_hostless", None, preauth)
    return None


def _read(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    if rest == "from socket failed: Connection reset by peer":
        return _make(_strict_hostless(aggressive), "read_socket_reset", None, preauth)
    return None


_LTYPE = re.compile(
    r"Server;Ltype: (?:Authname|Version|Kex);Remote: (?P<host>[^\s;]+?)-(?P<port>\d+);.*", re.S
)


def _ssh_colon(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # A patched sshd's connection summary (fail2ban gh-864): "SSH: Server;Ltype: Kex;Remote: H-P;"
    m = _LTYPE.fullmatch(rest)
    if m is None:
        return None
    return _make("helper", "ssh_ltype", m["host"], preauth, port=m["port"])


_DROP = re.compile(
    r"connection #\d+ from \[(?P<host>[^\]\s]+)\]:(?P<port>\d+) on \[[^\]\s]*\]:\d+ (?P<reason>.*)",
    re.S,
)


def _drop(rest: str, aggressive: bool, preauth: bool) -> SshdMessage | None:
    # 9.8+ listener: "drop connection #N from [H]:P on [L]:22 penalty: ..." / "past MaxStartups".
    # Only the penalty means this source failed before; a MaxStartups drop can hit anyone.
    m = _DROP.fullmatch(rest)
    if m is None:
        return None
    if m["reason"].startswith("penalty:") and aggressive:
        return _make("failure", "penalty_drop", m["host"], preauth, port=m["port"])
    return _make("not_failure", "connection_dropped", m["host"], preauth, port=m["port"])


_DISPATCH: dict[str, _Handler] = {
    "Failed": _failed,
    "Accepted": _accepted,
    "Postponed": _known("postponed"),
    "Partial": _known("partial"),
    "Invalid": _invalid,
    "Illegal": _invalid,
    "User": _user,
    "ROOT": _root,
    "Authentication": _authentication,
    "authentication": _authentication,
    "maximum": _maximum,
    "Disconnecting:": _disconnecting_colon,
    "Disconnecting": _disconnecting,
    "Received": _received,
    "refused": _refused,
    "Connection": _connection,
    "Disconnected": _disconnected,
    "Timeout": _timeout,
    "Did": _did,
    "Bad": _bad,
    "kex_exchange_identification:": _kex_identification,
    "banner": _banner,
    "ssh_dispatch_run_fatal:": _dispatch_fatal,
    "Unable": _unable,
    "no": _no,
    "Read": _read,
    "SSH:": _ssh_colon,
    "drop": _drop,
    "Address": _known("possible_break_in"),
    "input_userauth_request:": _known("input_userauth_request"),
    "srclimit_penalise:": _known("srclimit_penalise"),
}

# Noise some syslog daemons and test harnesses put in front of the text: Solaris' message id
# ("[ID 800047 auth.info] ") and a kernel timestamp ("kernel:[  970.69]: ", "kernel: [ 97.0] ").
_NOISE = re.compile(r"(?:\[ID \d+ [\w.]+\]|kernel: ?\[\s*[\d.]+\]:?) ")


def parse_message(message: str, mode: Mode = "normal") -> SshdMessage | None:
    """Classify one sshd message (the MESSAGE text, without any syslog prefix).

    Returns None for lines outside the catalog. Never raises on any input."""
    text = message
    if text[-1:].isspace():
        text = text.rstrip()
    preauth = text.endswith(_PREAUTH)
    if preauth:
        text = text[: -len(_PREAUTH)].rstrip()
    if text.startswith(("error: ", "fatal: ")):
        text = text[7:]
    if text.startswith("PAM: "):
        text = text[5:]
    head, _, rest = text.partition(" ")
    handler = _DISPATCH.get(head)
    if handler is None:
        if head.startswith("pam_"):
            return _pam(head, rest, mode == "aggressive", preauth)
        noise = _NOISE.match(text)
        if noise is None:
            return None
        return _parse_after_noise(text[noise.end() :], preauth, mode == "aggressive")
    return handler(rest, mode == "aggressive", preauth)


def _parse_after_noise(text: str, preauth: bool, aggressive: bool) -> SshdMessage | None:
    """The cold path: the text after a syslog daemon's noise, prefixes stripped once more."""
    if text.startswith(("error: ", "fatal: ")):
        text = text[7:]
    if text.startswith("PAM: "):
        text = text[5:]
    head, _, rest = text.partition(" ")
    handler = _DISPATCH.get(head)
    if handler is not None:
        return handler(rest, aggressive, preauth)
    if head.startswith("pam_"):
        return _pam(head, rest, aggressive, preauth)
    return None
