# Config file: TOML text -> the frozen Config of guardian/config.py, and back (render_config).
# Every mistake becomes one ConfigError naming file, line and key, raised before anything touches
# the firewall. tomllib gives no positions for keys, so a small indexer scans the (already valid)
# text to map each key path to its line; it runs only when there is an error to report.
# Decoy ports are expanded here, once, so the engine and the kernel filter get one flat list.
# [spa] keys may live in files: those are read here (through an injectable reader) and refused
# unless they are 0600 and root's (or the reading user's), so no secret reaches the engine from a
# file others can read or write; a config file that carries keys inline must itself be 0600
# (load_config checks the file it opened). render_config writes the *_file keys, never secrets
# that came from files: SpaStanza.key_origin records where each key came from.
from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import datetime
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeAlias, TypeVar, cast

from guardian.addresses import IPNetwork
from guardian.config import (
    BAN_SOURCES,
    DEFAULT_ANSWER,
    DEFAULT_BAN_ENABLED,
    DEFAULT_BAN_FACTOR,
    DEFAULT_BAN_MODE,
    DEFAULT_BAN_SCOPE,
    DEFAULT_BAN_SOURCES,
    DEFAULT_BANTIME,
    DEFAULT_DECOY_BAND,
    DEFAULT_DOOR_TIMEOUT,
    DEFAULT_FINDTIME,
    DEFAULT_HOOK_TIMEOUT,
    DEFAULT_IPV6_PREFIX,
    DEFAULT_JITTER,
    DEFAULT_LEASE,
    DEFAULT_LINGER,
    DEFAULT_MAXRETRY,
    DEFAULT_MAXTIME,
    DEFAULT_PORTS,
    DEFAULT_REQUIRE_AUTH,
    DEFAULT_SPA_ACCESS_TIMEOUT,
    DEFAULT_SPA_HMAC,
    DEFAULT_SPA_MAX_AGE,
    DEFAULT_SPA_MAX_TIMEOUT,
    DEFAULT_SPA_PORT,
    DEFAULT_SSHD_ON_DEMAND,
    DEFAULT_SSHD_START,
    DEFAULT_SSHD_STOP,
    DEFAULT_TCP_FLAGS,
    DEFAULT_WINDOW,
    HOOK_KINDS,
    MAX_BAN_TIME,
    MAX_SEQUENCE_LENGTH,
    MIN_IPV6_PREFIX,
    MIN_LEASE,
    SPA_HMACS,
    SPA_NO_HMAC,
    Access,
    Ban,
    Config,
    Door,
    Guard,
    Hook,
    KnockStep,
    Spa,
    SpaAccess,
    SpaStanza,
    Sshd,
    format_duration,
    parse_duration,
    parse_tcp_flags,
)
from guardian.events import Proto

# A location inside the document: table and key names, with list positions as ints, e.g.
# ("door", 1, "sequence", 2) is the third step of the second [[door]].
KeyPath: TypeAlias = tuple[str | int, ...]

MAX_DECOY_BAND = 64  # ports on each side; beyond this the kernel filter grows for little gain
_DOOR_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Port numbers: at most 6 ASCII digits, so int() never sees 5000 of them (its limit is 4300)
# or a non-ASCII digit; anything longer is simply "not a port" and gets the usual message.
_STEP = re.compile(r"^\s*(\d{1,6})\s*(?:/\s*([A-Za-z]+))?\s*$", re.ASCII)
_RANGE = re.compile(r"^\s*(\d{1,6})\s*-\s*(\d{1,6})\s*(?:/\s*([A-Za-z]+))?\s*$", re.ASCII)
_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)
_TOML_AT_END = re.compile(r"^(.*) \(at end of document\)$", re.DOTALL)

_TOP_KEYS = ("guard", "access", "door", "ban", "sshd", "hook", "spa")
_HOOK_KEYS = ("on", "run", "timeout")
_SSHD_KEYS = ("on_demand", "start", "stop")
_GUARD_KEYS = ("ports", "trusted", "interfaces", "answer")
_ACCESS_KEYS = ("window", "linger", "lease", "require_auth", "login_grace_time")
AUTO = "auto"  # login_grace_time: read sshd's LoginGraceTime at start
_DOOR_KEYS = (
    "name",
    "sequence",
    "timeout",
    "tcp_flags",
    "close",
    "decoy_band",
    "decoys",
    "open_to",
    "window",
)
_BAN_KEYS = (
    "enabled",
    "sources",
    "mode",
    "maxretry",
    "findtime",
    "bantime",
    "factor",
    "maxtime",
    "jitter",
    "ipv6_prefix",
    "scope",
)
MAX_MAXRETRY = 100  # a source's failure window holds up to maxretry - 1 times: bounds memory

# [spa]: keys of [spa] and [[spa.stanza]]. A stanza takes its Rijndael key from exactly one of
# KEY_FORMS and its HMAC key from one of HMAC_KEY_FORMS (none with hmac = "none").
_SPA_KEYS = ("port", "max_age", "stanza")
KEY_FORMS = ("key_base64_file", "key_base64", "key_file", "key")
HMAC_KEY_FORMS = ("hmac_key_base64_file", "hmac_key_base64", "hmac_key_file", "hmac_key")
PASSPHRASE_FORMS = ("key", "key_file")  # fwknop's KEY: a passphrase, not random bytes
_SPA_STANZA_KEYS = (
    "name",
    "source",
    *KEY_FORMS,
    *HMAC_KEY_FORMS,
    "hmac",
    "encryption_mode",
    "open_ports",
    "restrict_ports",
    "access_timeout",
    "max_timeout",
    "require_source_address",
    "require_username",
    "expires",
)
SPA_ANY = "ANY"  # fwknop's SOURCE ANY; stored as an empty source tuple
SPA_ENCRYPTION_MODES = ("cbc", "legacy")
MAX_SPA_KEY = 32  # bytes: fwknop's RIJNDAEL_MAX_KEYSIZE (KEY, KEY_BASE64 decoded)
MAX_SPA_HMAC_KEY = 136  # bytes: fwknop's MAX_DIGEST_BLOCK_LEN (SHA3-256's block) in 2.6.10
MAX_SPA_USERNAME = 64  # fwknop's MAX_SPA_USERNAME_SIZE
MAX_SECRET_FILE = 4096  # a key file is one line; anything larger is not one
_SPA_ACCESS = re.compile(
    r"^\s*(?:([A-Za-z]+)\s*/\s*(\d{1,6})|(\d{1,6})\s*/\s*([A-Za-z]+))\s*$", re.ASCII
)
_DATE_ONLY = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})\s*$")
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_DAY = 86400


class SecretFileError(Exception):
    """A secrets file that must not be used; str() is the reason, naming the file."""


SecretReader = Callable[[str], bytes]


def read_secret_file(path: str) -> bytes:
    """The bytes of a secrets file, refused unless it is a regular file whose permission bits
    are within 0600 (0600, 0400...) and that is owned by root, or by the user reading it (so
    `guardian knock --spa` run by alice may use alice's own key files; for the daemon, which
    runs as root, that is root alone). The checks are made on the open file (fstat), and
    symlinks are refused (O_NOFOLLOW), so what is checked is what is read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise SecretFileError(
                f"{path} is a symbolic link: secrets files must be regular files"
            ) from None
        raise SecretFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"{path} is not a regular file: secrets files must be")
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~0o600:
            raise SecretFileError(
                f"{path} has mode {mode:04o}: secrets files must be 0600 or refused "
                f"(chmod 600 {path})"
            )
        if info.st_uid not in (0, os.geteuid()):
            raise SecretFileError(
                f"{path} is owned by uid {info.st_uid}: secrets files must be owned by root "
                f"(chown root {path})"
            )
        data = b""
        while len(data) <= MAX_SECRET_FILE:
            chunk = os.read(fd, MAX_SECRET_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_SECRET_FILE:
            raise SecretFileError(f"{path} is larger than {MAX_SECRET_FILE} bytes: not a key file")
        return data
    finally:
        os.close(fd)


def decode_base64_key(text: str) -> bytes:
    """Strict base64 (standard alphabet; the '=' padding may be left out, as fwknop's B64 does).
    Raises ValueError."""
    text = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", text):
        raise ValueError("not base64 (standard alphabet A-Z a-z 0-9 + /, one line)")
    padded = text + "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise ValueError("not valid base64 (wrong length or padding)") from None


@dataclass(frozen=True, slots=True)
class SpaKeySource:
    """Where one SPA key came from: the TOML key it was given under (one of KEY_FORMS or
    HMAC_KEY_FORMS) and, for the *_file forms, the file."""

    form: str
    path: str | None = None

    def __str__(self) -> str:
        return self.form if self.path is None else f"{self.form} {toml_string(self.path)}"


_INLINE = "inline"  # SpaStanza.key_origin when both keys are inline base64 (or there is no HMAC)
_ORIGIN_ITEM = re.compile(r'([a-z0-9_]+)(?: ("(?:[^"\\]|\\.)*"))?(?:, |$)')


def spa_key_origin(key: SpaKeySource, hmac_key: SpaKeySource | None) -> str:
    """SpaStanza.key_origin for these sources: "inline" when both are inline base64 (fwknop's
    KEY_BASE64 / HMAC_KEY_BASE64), else e.g. 'key_base64_file "/etc/k", hmac_key_base64'.

    It reads well in messages and spa_key_sources() reads it back, so render_config writes the
    *_file keys (never the secrets) for keys that came from files."""
    sources = [key] if hmac_key is None else [key, hmac_key]
    if all(s.path is None and s.form in ("key_base64", "hmac_key_base64") for s in sources):
        return _INLINE
    return ", ".join(str(source) for source in sources)


def spa_key_sources(stanza: SpaStanza) -> tuple[SpaKeySource, SpaKeySource | None]:
    """The inverse of spa_key_origin. An origin it does not understand (a stanza built by hand)
    reads as inline base64 keys."""
    key = SpaKeySource("key_base64")
    hmac_key = None if stanza.hmac_key is None else SpaKeySource("hmac_key_base64")
    origin = stanza.key_origin
    position = 0
    found: list[SpaKeySource] = []
    while origin != _INLINE and position < len(origin):
        match = _ORIGIN_ITEM.match(origin, position)
        if match is None:
            return key, hmac_key
        path = None
        if match.group(2) is not None:
            path = cast(str, tomllib.loads(f"v = {match.group(2)}")["v"])
        found.append(SpaKeySource(match.group(1), path))
        position = match.end()
    for source in found:
        if source.form in KEY_FORMS and (source.path is None) != source.form.endswith("_file"):
            key = source
        elif (
            source.form in HMAC_KEY_FORMS
            and stanza.hmac_key is not None
            and (source.path is None) != source.form.endswith("_file")
        ):
            hmac_key = source
    return key, hmac_key


def expires_epoch(value: datetime.date) -> float:
    """A date or an instant -> SpaStanza.expires. A date is valid THROUGH that day (UTC): the
    stanza expires at the next day's 00:00 UTC. A datetime must carry its UTC offset."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("a date and time needs its UTC offset, e.g. 2027-12-31T18:00:00Z")
        return value.timestamp()
    return float((value.toordinal() + 1 - _EPOCH_ORDINAL) * _DAY)


def render_expires(epoch: float) -> str:
    """SpaStanza.expires as a TOML string that expires_epoch reads back to the same value: a
    date ("2027-12-31") when it is a day's end, else an RFC 3339 instant in UTC."""
    if epoch.is_integer() and int(epoch) % _DAY == 0:
        day = datetime.date.fromordinal(_EPOCH_ORDINAL + int(epoch) // _DAY - 1)
        return toml_string(day.isoformat())
    instant = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return toml_string(instant.isoformat().replace("+00:00", "Z"))


def spa_access_text(access: SpaAccess) -> str:
    """("tcp", 22) -> "tcp/22", fwknop's spelling."""
    return f"{access[0]}/{access[1]}"


class ConfigError(Exception):
    """A config file that cannot be used. str() is "PATH:LINE: KEY: REASON".

    line is None only when no line applies (the file cannot be read); key is "" when no key
    applies, and both parts are then left out of the message."""

    def __init__(self, path: str, line: int | None, key: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


def load_config(path: str, *, read_secret: SecretReader = read_secret_file) -> Config:
    """Read and parse the file at path; every failure (including OSError) is a ConfigError.

    A file that carries SPA keys inline must have no permission bits beyond 0600, judged on the
    file that was read (fstat of the open handle)."""
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(path, None, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, "", "the file is not valid UTF-8") from None
    config = parse_config(text, path, read_secret=read_secret)
    if mode & ~0o600:
        _refuse_inline_secrets(config, text, path, mode)
    return config


def parse_config(text: str, path: str, *, read_secret: SecretReader = read_secret_file) -> Config:
    """Parse TOML text into a Config. path is only used in messages and Config.path.

    Pure, except that [[spa.stanza]] keys given as *_file are read with read_secret (by default
    read_secret_file, which refuses files that are not root's and 0600)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, path) from None
    except RecursionError:  # tomllib recurses per nesting level: [[[[...]]]] 5000 deep
        raise ConfigError(path, None, "", "invalid TOML: nested too deeply") from None
    return _Parser(text, path, read_secret).config(data)


def _refuse_inline_secrets(config: Config, text: str, path: str, mode: int) -> None:
    """A group- or world-readable config must not carry SPA keys inline."""
    for index, stanza in enumerate(config.spa.stanzas):
        for source in spa_key_sources(stanza):
            if source is not None and source.path is None:
                at: KeyPath = ("spa", "stanza", index, source.form)
                raise ConfigError(
                    path,
                    index_lines(text).get(at),
                    _display_key(at),
                    f"this file has mode {mode:04o} and holds an inline key: secrets files must "
                    f"be 0600 or refused (chmod 600 {path}, or move the key to "
                    f"{source.form}_file)",
                )


# ---------------------------------------------------------------------------------------------
# Line index: key path -> line, by scanning TOML text that tomllib has already accepted.


def index_lines(text: str) -> dict[KeyPath, int]:
    """Map every table, key and list element of valid TOML text to the line it starts on.

    Tables of arrays get their index: the second [[door]]'s name is ("door", 1, "name"). Inline
    tables and multi-line lists are followed, so list elements have their own lines. On text
    tomllib rejects the result is partial, never an exception."""
    indexer = _LineIndexer(text)
    # best effort: on a surprise, keep what was found so far
    with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
        indexer.run()
    return indexer.lines


class _LineIndexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[KeyPath, int] = {}
        self.table: KeyPath = ()
        self.array_counts: dict[KeyPath, int] = {}
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def run(self) -> None:
        text = self.text
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(text):
                return
            start = self.pos
            if text.startswith("[[", start):
                name = self.read_key_text("]]")
                base = (*self.resolve(name[:-1]), name[-1])
                index = self.array_counts.get(base, -1) + 1
                self.array_counts[base] = index
                self.table = (*base, index)
                self.lines.setdefault(self.table, self.line_at(start))
                self.skip_to_line_end()
            elif text[start] == "[":
                self.table = self.resolve(self.read_key_text("]"))
                self.lines.setdefault(self.table, self.line_at(start))
                self.skip_to_line_end()
            else:
                key = self.table + self.read_key_text("=")
                self.lines.setdefault(key, self.line_at(start))
                self.skip_blank(newlines=False)
                self.value(key)

    def resolve(self, name: tuple[str, ...]) -> KeyPath:
        """Insert the current index after every name that is an array of tables."""
        out: list[str | int] = []
        for part in name:
            out.append(part)
            count = self.array_counts.get(tuple(out))
            if count is not None:
                out.append(count)
        return tuple(out)

    def read_key_text(self, end: str) -> tuple[str, ...]:
        """Read a (dotted, maybe quoted) key up to `end`; tomllib decodes it for us."""
        text = self.text
        self.pos += 2 if end == "]]" else (1 if end == "]" else 0)
        start = self.pos
        while not text.startswith(end, self.pos):
            if text[self.pos] in "\"'":
                self.skip_string()
            elif text[self.pos] == "\n":
                raise ValueError("key without end")
            else:
                self.pos += 1
        raw = text[start : self.pos]
        self.pos += len(end)
        decoded: Any = tomllib.loads(f"{raw} = 0")
        parts: list[str] = []
        while isinstance(decoded, dict) and len(decoded) == 1:
            name = next(iter(decoded))
            parts.append(name)
            decoded = decoded[name]
        return tuple(parts)

    def skip_blank(self, *, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#":
                self.skip_to_line_end()
            else:
                return

    def skip_to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def skip_string(self) -> None:
        text = self.text
        quote = text[self.pos]
        if text.startswith(quote * 3, self.pos):
            self.pos += 3
            while not text.startswith(quote * 3, self.pos):
                self.pos += 2 if quote == '"' and text[self.pos] == "\\" else 1
                if self.pos >= len(text):
                    raise ValueError("unterminated string")
            self.pos += 3
            # up to two quotes may close the content right before the delimiter: """a"""""
            for _ in range(2):
                if self.pos < len(text) and text[self.pos] == quote:
                    self.pos += 1
            return
        self.pos += 1
        while text[self.pos] != quote:
            self.pos += 2 if quote == '"' and text[self.pos] == "\\" else 1
        self.pos += 1

    def value(self, path: KeyPath) -> None:
        text = self.text
        char = text[self.pos]
        if char == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_blank(newlines=True)
                if text[self.pos] == "]":
                    self.pos += 1
                    return
                element = (*path, index)
                self.lines.setdefault(element, self.line_at(self.pos))
                self.value(element)
                index += 1
                self.skip_blank(newlines=True)
                if text[self.pos] == ",":
                    self.pos += 1
        elif char == "{":
            self.pos += 1
            while True:
                self.skip_blank(newlines=False)
                if text[self.pos] == "}":
                    self.pos += 1
                    return
                start = self.pos
                key = path + self.read_key_text("=")
                self.lines.setdefault(key, self.line_at(start))
                self.skip_blank(newlines=False)
                self.value(key)
                self.skip_blank(newlines=False)
                if text[self.pos] == ",":
                    self.pos += 1
        elif char in "\"'":
            self.skip_string()
        else:
            while self.pos < len(text) and text[self.pos] not in ",]}\n#":
                self.pos += 1


def _syntax_error(message: str, text: str, path: str) -> ConfigError:
    """Turn tomllib's "REASON (at line N, column M)" into a ConfigError on line N."""
    line: int | None = None
    reason = message
    if match := _TOML_POSITION.match(message):
        reason, line = match.group(1), int(match.group(2))
    elif match := _TOML_AT_END.match(message):
        reason, line = match.group(1), max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    if line is not None and reason.startswith("Unclosed array"):
        # tomllib notices a missing "]" only on a later line; the mistake is where the list opened
        line = _unclosed_list_line(text, line)
        reason += " (a missing ']'?)"
    return ConfigError(path, line, _key_near(text, line), f"invalid TOML: {reason}")


_LIST_OPENING = re.compile(r"^\s*[^=\[\s][^=\[]*=\s*\[")


def _unclosed_list_line(text: str, line: int) -> int:
    """The nearest line at or above `line` with `key = [` and more '[' than ']', else `line`."""
    lines = text.splitlines()
    for number in range(min(line, len(lines)), 0, -1):
        content = lines[number - 1].split("#", 1)[0]
        # The key's first character is not blank: `\s*[^=\[]+` would both match a long run of
        # blanks and backtrack over it quadratically.
        if _LIST_OPENING.match(content) and content.count("[") > content.count("]"):
            return number
    return line


def _key_near(text: str, line: int | None) -> str:
    """Best guess at the key a broken line is about: its own key within the last table header."""
    if line is None:
        return ""
    lines = text.splitlines()
    table = ""
    for previous in lines[: line - 1]:
        header = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?", previous)
        if header:
            table = header.group(1)
    own = (
        re.match(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=", lines[line - 1])
        if (0 < line <= len(lines))
        else None
    )
    if own:
        key = re.sub(r"\s+", "", own.group(1))
        return f"{table}.{key}" if table else key
    return table


# ---------------------------------------------------------------------------------------------
# The schema: tomllib's dicts and lists -> frozen dataclasses; one ConfigError at the first fault.

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _DoorSpec:
    """A door as written, before the decoys are expanded (they depend on every door)."""

    name: str
    sequence: tuple[KnockStep, ...]
    timeout: float
    tcp_flags_text: str
    close: tuple[KnockStep, ...]
    decoy_band: int
    explicit_decoys: tuple[KnockStep, ...]
    single_decoys: tuple[tuple[int, KnockStep], ...]  # (list position, step) of one-port items
    at: KeyPath
    open_to: Literal["source", "everyone"] = "source"
    window: float | None = None


class _Parser:
    def __init__(self, text: str, path: str, read_secret: SecretReader = read_secret_file) -> None:
        self.text = text
        self.path = path
        self.read_secret = read_secret
        self._lines: dict[KeyPath, int] | None = None

    # -- errors -----------------------------------------------------------------------------

    def line(self, at: KeyPath) -> int | None:
        if self._lines is None:
            self._lines = index_lines(self.text)
        for end in range(len(at), 0, -1):  # the most precise location known
            found = self._lines.get(at[:end])
            if found is not None:
                return found
        return None

    def error(self, at: KeyPath, reason: str) -> ConfigError:
        return ConfigError(self.path, self.line(at), _display_key(at), reason)

    # -- top level --------------------------------------------------------------------------

    def config(self, data: dict[str, Any]) -> Config:
        self.only_known(data, (), _TOP_KEYS, "section")
        guard = self.guard(self.table(data, ("guard",)))
        access = self.access(self.table(data, ("access",)))
        doors_raw = data.get("door", [])
        if isinstance(doors_raw, dict):
            raise self.error(("door",), "write [[door]] (one per door), not [door]")
        specs = [self.door(raw, ("door", i)) for i, raw in enumerate(self.tables(doors_raw))]
        self.check_doors(specs, guard)
        ban = self.ban(self.table(data, ("ban",)))
        sshd = self.sshd(self.table(data, ("sshd",)))
        hooks_raw = data.get("hook", [])
        if isinstance(hooks_raw, dict):
            raise self.error(("hook",), "write [[hook]] (one per hook), not [hook]")
        hooks = tuple(
            self.hook(raw, ("hook", i)) for i, raw in enumerate(self.tables(hooks_raw, "hook"))
        )
        spa = self.spa(self.table(data, ("spa",)))
        self.check_spa_port(spa, specs)
        return Config(
            guard=guard,
            access=access,
            doors=_build_doors(specs, guard, _spa_steps(spa)),
            path=self.path,
            ban=ban,
            sshd=sshd,
            hooks=hooks,
            spa=spa,
        )

    def table(self, data: dict[str, Any], at: KeyPath) -> dict[str, Any]:
        value = data.get(cast(str, at[-1]), {})
        if not isinstance(value, dict):
            raise self.error(at, f"expected a table [{_display_key(at)}], got {_kind(value)}")
        return value

    def tables(self, value: Any, name: str = "door") -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error((name,), f"expected [[{name}]] tables, got {_kind(value)}")
        return value

    def only_known(
        self, data: dict[str, Any], at: KeyPath, known: tuple[str, ...], what: str
    ) -> None:
        for key, value in data.items():
            if key not in known:
                kind = "section" if what == "section" and isinstance(value, dict) else "key"
                raise self.error((*at, key), f"unknown {kind} (known: {', '.join(known)})")

    # -- [guard] and [access] ---------------------------------------------------------------

    def guard(self, data: dict[str, Any]) -> Guard:
        self.only_known(data, ("guard",), _GUARD_KEYS, "key")
        ports = DEFAULT_PORTS
        if "ports" in data:
            ports = self.unique_list(data["ports"], ("guard", "ports"), self.port, "port")
            if not ports:
                raise self.error(("guard", "ports"), "needs at least one port to guard")
        trusted = self.unique_list(
            data.get("trusted", []), ("guard", "trusted"), self.network, "network"
        )
        interfaces = self.unique_list(
            data.get("interfaces", []), ("guard", "interfaces"), self.interface, "interface"
        )
        answer = data.get("answer", DEFAULT_ANSWER)
        if answer not in ("reset", "drop"):
            raise self.error(("guard", "answer"), f'expected "reset" or "drop", got {answer!r}')
        return Guard(
            ports=ports,
            trusted=trusted,
            interfaces=interfaces,
            answer=cast(Literal["reset", "drop"], answer),
        )

    def access(self, data: dict[str, Any]) -> Access:
        self.only_known(data, ("access",), _ACCESS_KEYS, "key")
        window = DEFAULT_WINDOW
        if "window" in data:
            window = self.duration(data["window"], ("access", "window"), numbers=True)
        linger = DEFAULT_LINGER
        if "linger" in data:
            linger = self.duration(
                data["linger"], ("access", "linger"), numbers=True, allow_zero=True
            )
        lease = DEFAULT_LEASE
        if "lease" in data:
            lease = self.duration(data["lease"], ("access", "lease"), numbers=True)
            if lease < MIN_LEASE:
                raise self.error(
                    ("access", "lease"),
                    f"must be at least {format_duration(MIN_LEASE)} (it is refreshed every "
                    f"lease / 2), got {data['lease']!r}",
                )
        require_auth = data.get("require_auth", DEFAULT_REQUIRE_AUTH)
        if not isinstance(require_auth, bool):
            raise self.error(
                ("access", "require_auth"), f"expected true or false, got {_kind(require_auth)}"
            )
        grace: float | None = None  # None: "auto"
        raw_grace = data.get("login_grace_time", AUTO)
        if not (isinstance(raw_grace, str) and raw_grace.strip().lower() == AUTO):
            grace = self.duration(
                raw_grace, ("access", "login_grace_time"), numbers=True, auto=True
            )
        return Access(
            window=window,
            linger=linger,
            lease=lease,
            require_auth=require_auth,
            login_grace_time=grace,
        )

    # -- [ban] ------------------------------------------------------------------------------

    def ban(self, data: dict[str, Any]) -> Ban:
        self.only_known(data, ("ban",), _BAN_KEYS, "key")
        enabled = data.get("enabled", DEFAULT_BAN_ENABLED)
        if not isinstance(enabled, bool):
            raise self.error(("ban", "enabled"), f"expected true or false, got {_kind(enabled)}")
        sources = DEFAULT_BAN_SOURCES
        if "sources" in data:
            sources = self.unique_list(data["sources"], ("ban", "sources"), self.source, "source")
        mode = self.choice(data, "mode", ("normal", "aggressive"), DEFAULT_BAN_MODE)
        scope = self.choice(data, "scope", ("all", "guarded"), DEFAULT_BAN_SCOPE)
        maxretry = self.whole(data, "maxretry", 1, MAX_MAXRETRY, DEFAULT_MAXRETRY)
        ipv6_prefix = self.whole(data, "ipv6_prefix", MIN_IPV6_PREFIX, 128, DEFAULT_IPV6_PREFIX)
        times: dict[str, float] = {}
        for key, default in (
            ("findtime", DEFAULT_FINDTIME),
            ("bantime", DEFAULT_BANTIME),
            ("maxtime", DEFAULT_MAXTIME),
            ("jitter", DEFAULT_JITTER),
        ):
            times[key] = default
            if key in data:
                times[key] = self.duration(
                    data[key], ("ban", key), numbers=True, allow_zero=key == "jitter"
                )
        for key in ("bantime", "maxtime", "jitter"):
            if times[key] > MAX_BAN_TIME:
                raise self.error(
                    ("ban", key),
                    f"at most {format_duration(MAX_BAN_TIME)} (nft's limit), got {data[key]!r}",
                )
        if times["maxtime"] < times["bantime"]:
            at = ("ban", "maxtime") if "maxtime" in data else ("ban", "bantime")
            raise self.error(
                at,
                f"maxtime ({format_duration(times['maxtime'])}) is shorter than bantime "
                f"({format_duration(times['bantime'])})",
            )
        factor = data.get("factor", DEFAULT_BAN_FACTOR)
        if (
            not isinstance(factor, int | float)
            or isinstance(factor, bool)
            or not math.isfinite(factor)
            or factor < 1
        ):
            raise self.error(("ban", "factor"), f"expected a number of 1 or more, got {factor!r}")
        return Ban(
            enabled=enabled,
            sources=sources,
            mode=cast(Literal["normal", "aggressive"], mode),
            maxretry=maxretry,
            findtime=times["findtime"],
            bantime=times["bantime"],
            factor=float(factor),
            maxtime=times["maxtime"],
            jitter=times["jitter"],
            ipv6_prefix=ipv6_prefix,
            scope=cast(Literal["all", "guarded"], scope),
        )

    # -- [sshd] -----------------------------------------------------------------------------

    def sshd(self, data: dict[str, Any]) -> Sshd:
        self.only_known(data, ("sshd",), _SSHD_KEYS, "key")
        on_demand = data.get("on_demand", DEFAULT_SSHD_ON_DEMAND)
        if not isinstance(on_demand, bool):
            raise self.error(
                ("sshd", "on_demand"), f"expected true or false, got {_kind(on_demand)}"
            )
        start = self.argv(data, "start", DEFAULT_SSHD_START)
        stop = self.argv(data, "stop", DEFAULT_SSHD_STOP)
        return Sshd(on_demand=on_demand, start=start, stop=stop)

    def argv(
        self,
        data: dict[str, Any],
        key: str,
        default: tuple[str, ...],
        at: KeyPath = ("sshd",),
    ) -> tuple[str, ...]:
        """A command as an argv list of strings (never a shell string: no quoting to get wrong)."""
        value = data.get(key, list(default))
        if isinstance(value, str):
            raise self.error(
                (*at, key),
                f'expected an argv list like ["systemctl", "start", "x"], got a string {value!r}',
            )
        if not isinstance(value, list) or not value:
            raise self.error((*at, key), f"expected a non-empty list, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item or "\0" in item:
                raise self.error((*at, key, index), f"expected a non-empty string, got {item!r}")
        return tuple(value)

    # -- [[hook]] ---------------------------------------------------------------------------

    def hook(self, data: dict[str, Any], at: KeyPath) -> Hook:
        self.only_known(data, at, _HOOK_KEYS, "key")
        if "on" not in data:
            raise self.error(at, f"a hook needs `on` (a list of: {', '.join(HOOK_KINDS)})")
        kinds = data["on"]
        if not isinstance(kinds, list) or not kinds:
            raise self.error((*at, "on"), f"expected a non-empty list, got {_kind(kinds)}")
        for index, kind in enumerate(kinds):
            if not isinstance(kind, str) or kind not in HOOK_KINDS:
                raise self.error(
                    (*at, "on", index), f"unknown event {kind!r} (known: {', '.join(HOOK_KINDS)})"
                )
        if len(set(kinds)) != len(kinds):
            raise self.error((*at, "on"), "an event is listed twice")
        if "run" not in data:
            raise self.error(at, "a hook needs `run` (an argv list)")
        run = self.argv(data, "run", (), at)
        timeout = DEFAULT_HOOK_TIMEOUT
        if "timeout" in data:
            timeout = self.duration(data["timeout"], (*at, "timeout"), numbers=False)
        return Hook(on=tuple(kinds), run=run, timeout=timeout)

    # -- [spa] and [[spa.stanza]] -----------------------------------------------------------

    def spa(self, data: dict[str, Any]) -> Spa:
        self.only_known(data, ("spa",), _SPA_KEYS, "key")
        port = DEFAULT_SPA_PORT
        if "port" in data:
            port = self.port(data["port"], ("spa", "port"))
        max_age = DEFAULT_SPA_MAX_AGE
        if "max_age" in data:
            max_age = self.duration(data["max_age"], ("spa", "max_age"), numbers=True)
        raw = data.get("stanza", [])
        if isinstance(raw, dict):
            raise self.error(("spa", "stanza"), "write [[spa.stanza]] (one per stanza)")
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise self.error(("spa", "stanza"), f"expected [[spa.stanza]] tables, got {_kind(raw)}")
        stanzas: list[SpaStanza] = []
        for index, item in enumerate(raw):
            at: KeyPath = ("spa", "stanza", index)
            stanza = self.spa_stanza(item, at)
            if any(s.name == stanza.name for s in stanzas):
                raise self.error((*at, "name"), f"another stanza is already named {stanza.name!r}")
            stanzas.append(stanza)
        return Spa(port=port, max_age=max_age, stanzas=tuple(stanzas))

    def spa_stanza(self, data: dict[str, Any], at: KeyPath) -> SpaStanza:
        self.only_known(data, at, _SPA_STANZA_KEYS, "key")
        name = data.get("name", f"stanza-{cast(int, at[-1]) + 1}")
        if not isinstance(name, str) or not _DOOR_NAME.match(name):
            raise self.error((*at, "name"), f"expected letters, digits, '_' or '-', got {name!r}")
        key, key_source = self.spa_secret(data, at, KEY_FORMS, MAX_SPA_KEY)
        hmac, hmac_key, hmac_source = self.spa_hmac(data, at)
        if hmac_key is not None and hmac_key == key:
            raise self.error(
                (*at, cast(SpaKeySource, hmac_source).form),
                "the HMAC key equals the encryption key (fwknopd refuses this too): use two keys",
            )
        mode = data.get("encryption_mode", "cbc")
        if not isinstance(mode, str) or mode.lower() not in SPA_ENCRYPTION_MODES:
            raise self.error((*at, "encryption_mode"), f'expected "cbc" or "legacy", got {mode!r}')
        open_ports: tuple[SpaAccess, ...] = (("tcp", 22),)
        if "open_ports" in data:
            open_ports = self.spa_accesses(data["open_ports"], (*at, "open_ports"))
            if not open_ports:
                raise self.error(
                    (*at, "open_ports"), 'needs at least one entry like "tcp/22" (a guarded port)'
                )
        restrict = self.spa_accesses(data.get("restrict_ports", []), (*at, "restrict_ports"))
        access_timeout = DEFAULT_SPA_ACCESS_TIMEOUT
        if "access_timeout" in data:
            access_timeout = self.duration(
                data["access_timeout"], (*at, "access_timeout"), numbers=True
            )
        max_timeout = DEFAULT_SPA_MAX_TIMEOUT
        if "max_timeout" in data:
            max_timeout = self.duration(data["max_timeout"], (*at, "max_timeout"), numbers=True)
        if access_timeout > max_timeout:
            where = "access_timeout" if "access_timeout" in data else "max_timeout"
            raise self.error(
                (*at, where),
                f"access_timeout ({format_duration(access_timeout)}) is longer than max_timeout "
                f"({format_duration(max_timeout)}), the cap on any grant's window",
            )
        require_source = data.get("require_source_address", False)
        if not isinstance(require_source, bool):
            raise self.error(
                (*at, "require_source_address"),
                f"expected true or false, got {_kind(require_source)}",
            )
        username = data.get("require_username")
        if username is not None and (
            not isinstance(username, str)
            or not 0 < len(username) <= MAX_SPA_USERNAME
            or not username.isprintable()
        ):
            raise self.error(
                (*at, "require_username"),
                f"expected 1 to {MAX_SPA_USERNAME} printable characters, got {username!r}",
            )
        expires: float | None = None
        if "expires" in data:
            expires = self.spa_expires(data["expires"], (*at, "expires"))
        return SpaStanza(
            name=name,
            key=key,
            hmac_key=hmac_key,
            hmac=hmac,
            legacy=mode.lower() == "legacy",
            source=self.spa_source(data.get("source", [SPA_ANY]), (*at, "source")),
            open_ports=open_ports,
            restrict_ports=restrict,
            access_timeout=access_timeout,
            max_timeout=max_timeout,
            require_source_address=require_source,
            require_username=username,
            expires=expires,
            key_origin=spa_key_origin(key_source, hmac_source),
        )

    def spa_secret(
        self, data: dict[str, Any], at: KeyPath, forms: tuple[str, ...], limit: int
    ) -> tuple[bytes, SpaKeySource]:
        """The one key of `forms` the stanza gives: its bytes and where they came from."""
        given = [form for form in forms if form in data]
        what = "an HMAC key" if forms is HMAC_KEY_FORMS else "a key"
        if not given:
            raise self.error(at, f"the stanza needs {what}: one of {', '.join(forms)}")
        if len(given) > 1:
            raise self.error((*at, given[1]), f"give one of {given[0]} and {given[1]}, not both")
        form = given[0]
        where = (*at, form)
        value = data[form]
        if not isinstance(value, str) or not value:
            raise self.error(where, f"expected a non-empty string, got {value!r}")
        base64_form = "base64" in form
        path: str | None = None
        if form.endswith("_file"):
            path = value
            if not os.path.isabs(path):
                raise self.error(where, f"expected an absolute path, got {path!r}")
            try:
                content = self.read_secret(path)
            except SecretFileError as exc:
                raise self.error(where, str(exc)) from None
            if base64_form:
                try:
                    text = content.decode("ascii").strip()
                except UnicodeDecodeError:
                    text = "\0"  # decode_base64_key refuses it below
                if text.count(":") == 1 and text.split(":")[0].strip().endswith("KEY_BASE64"):
                    raise self.error(
                        where,
                        f"{path} holds a 'KEY_BASE64: ...' line (fwknop --key-gen-file output): "
                        "put only the base64 key in the file",
                    )
                secret = self.base64_key(text, where, f"the content of {path}")
            else:
                secret = content[:-1] if content.endswith(b"\n") else content
        elif base64_form:
            secret = self.base64_key(value, where, "the value")
        else:
            secret = value.encode("utf-8")
        if not 0 < len(secret) <= limit:
            raise self.error(
                where,
                f"the key is {len(secret)} bytes; fwknop allows 1 to {limit}"
                + (" (`guardian keygen` makes a good one)" if secret else ""),
            )
        return secret, SpaKeySource(form, path)

    def base64_key(self, text: str, where: KeyPath, what: str) -> bytes:
        try:
            return decode_base64_key(text)
        except ValueError as exc:
            raise self.error(where, f"{what} is {exc}") from None

    def spa_hmac(
        self, data: dict[str, Any], at: KeyPath
    ) -> tuple[str, bytes | None, SpaKeySource | None]:
        """hmac and the HMAC key: one is required unless hmac = "none" (then none is allowed)."""
        hmac = data.get("hmac", DEFAULT_SPA_HMAC)
        allowed = (*SPA_HMACS, SPA_NO_HMAC)
        if isinstance(hmac, str):
            hmac = hmac.strip().lower().replace("-", "_")
        if hmac not in allowed:
            raise self.error(
                (*at, "hmac"), f"expected one of {', '.join(allowed)}, got {data['hmac']!r}"
            )
        if hmac == SPA_NO_HMAC:
            for form in HMAC_KEY_FORMS:
                if form in data:
                    raise self.error(
                        (*at, form), 'hmac = "none" takes no HMAC key: remove one of the two'
                    )
            return hmac, None, None
        if not any(form in data for form in HMAC_KEY_FORMS):
            raise self.error(
                at,
                f"the stanza needs an HMAC key (one of {', '.join(HMAC_KEY_FORMS)}), or "
                'hmac = "none" to accept packets without one (weaker: see `guardian check`)',
            )
        hmac_key, source = self.spa_secret(data, at, HMAC_KEY_FORMS, MAX_SPA_HMAC_KEY)
        return hmac, hmac_key, source

    def spa_source(self, value: Any, at: KeyPath) -> tuple[IPNetwork, ...]:
        """["ANY"] (or "ANY") -> (); else networks. A string may list several, comma-separated,
        as fwknop's SOURCE does."""
        items: list[tuple[str, KeyPath]] = []
        if isinstance(value, str):
            items = [(part, at) for part in value.split(",")]
        elif isinstance(value, list) and value:
            for index, raw in enumerate(value):
                if not isinstance(raw, str):
                    raise self.error((*at, index), f"expected a string, got {_kind(raw)}")
                items += [(part, (*at, index)) for part in raw.split(",")]
        else:
            raise self.error(at, f'expected a list like ["ANY"] or ["192.0.2.0/24"], got {value!r}')
        if any(text.strip().upper() == SPA_ANY for text, _ in items):
            if len(items) > 1:
                raise self.error(at, f"{SPA_ANY} covers every address: write it alone")
            return ()
        out: list[IPNetwork] = []
        for text, where in items:
            network = self.network(text, where)
            if network in out:
                raise self.error(where, f"source {text.strip()!r} repeats an earlier entry")
            out.append(network)
        return tuple(out)

    def spa_accesses(self, value: Any, at: KeyPath) -> tuple[SpaAccess, ...]:
        """["tcp/22", "udp/53"] (fwknop's proto/port; "22/tcp" too) -> (("tcp", 22), ...)."""
        items: list[tuple[Any, KeyPath]]
        if isinstance(value, str):
            items = [(part, at) for part in value.split(",")] if value.strip() else []
        elif isinstance(value, list):
            items = [(raw, (*at, index)) for index, raw in enumerate(value)]
        else:
            raise self.error(at, f'expected a list like ["tcp/22"], got {_kind(value)}')
        out: list[SpaAccess] = []
        for raw, where in items:
            match = _SPA_ACCESS.match(raw) if isinstance(raw, str) else None
            if match is None:
                raise self.error(where, f'expected "tcp/PORT" or "udp/PORT", got {raw!r}')
            proto_text = match.group(1) or match.group(4)
            port_text = match.group(2) or match.group(3)
            proto = proto_text.lower()
            if proto not in ("tcp", "udp"):
                raise self.error(where, f"unknown protocol {proto_text!r} (tcp or udp)")
            access: SpaAccess = (proto, self.port(int(port_text), where))
            if access in out:
                raise self.error(where, f"{raw!r} repeats an earlier entry")
            out.append(access)
        return tuple(out)

    def spa_expires(self, value: Any, at: KeyPath) -> float:
        """A TOML date or "YYYY-MM-DD" (valid through that day, UTC), or an instant: a TOML
        offset date-time or an RFC 3339 string ("2027-12-31T18:00:00Z")."""
        expected = (
            'expected a date "YYYY-MM-DD" (valid through that day, UTC) or a time with its '
            'offset like "2027-12-31T18:00:00Z"'
        )
        when: datetime.date
        if isinstance(value, datetime.date):
            when = value
        elif isinstance(value, str):
            try:
                if _DATE_ONLY.match(value):
                    when = datetime.date.fromisoformat(value.strip())
                else:
                    when = datetime.datetime.fromisoformat(value.strip())
            except ValueError:
                raise self.error(at, f"{expected}, got {value!r}") from None
        else:
            raise self.error(at, f"{expected}, got {_kind(value)}")
        try:
            return expires_epoch(when)
        except (ValueError, OverflowError) as exc:
            raise self.error(at, f"{exc}, got {value!r}") from None

    def check_spa_port(self, spa: Spa, specs: list[_DoorSpec]) -> None:
        """With SPA on, its UDP port must not be a knock, close or single decoy port of a door
        (band and range decoys leave it out, as they leave out guarded ports)."""
        if not spa.enabled:
            return
        spa_step = KnockStep(spa.port, "udp")
        for spec in specs:
            places = [("sequence", i, s) for i, s in enumerate(spec.sequence)]
            places += [("close", i, s) for i, s in enumerate(spec.close)]
            places += [("decoys", i, s) for i, s in spec.single_decoys]
            for key, index, step in places:
                if step == spa_step:
                    raise self.error(
                        (*spec.at, key, index),
                        f"{step} is the SPA port (spa.port = {spa.port}): use another port "
                        "for the door or set spa.port",
                    )

    def source(self, value: Any, at: KeyPath) -> str:
        if not isinstance(value, str) or value not in BAN_SOURCES:
            shown = repr(value) if isinstance(value, str) else _kind(value)
            raise self.error(at, f"unknown source {shown} (known: {', '.join(BAN_SOURCES)})")
        return value

    def choice(self, data: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
        value = data.get(key, default)
        if value not in allowed:
            options = " or ".join(f'"{a}"' for a in allowed)
            raise self.error(("ban", key), f"expected {options}, got {value!r}")
        return cast(str, value)

    def whole(self, data: dict[str, Any], key: str, low: int, high: int, default: int) -> int:
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.error(("ban", key), f"expected a whole number {low}..{high}, got {value!r}")
        return value

    def unique_list(
        self, value: Any, at: KeyPath, item: Callable[[Any, KeyPath], T], what: str
    ) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise self.error(at, f"expected a list, got {_kind(value)}")
        out: list[T] = []
        for index, raw in enumerate(value):
            parsed = item(raw, (*at, index))
            if parsed in out:
                raise self.error((*at, index), f"{what} {raw!r} repeats an earlier entry")
            out.append(parsed)
        return tuple(out)

    def port(self, value: Any, at: KeyPath) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(at, f"expected a port number, got {_kind(value)}")
        if not 1 <= value <= 65535:
            raise self.error(at, f"port {value} out of range 1..65535")
        return value

    def network(self, value: Any, at: KeyPath) -> IPNetwork:
        if not isinstance(value, str):
            raise self.error(at, f'expected a network like "192.0.2.0/24", got {_kind(value)}')
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise self.error(at, f"not an IPv4/IPv6 address or network: {value!r}") from None
        return _unmap(network)

    def interface(self, value: Any, at: KeyPath) -> str:
        if not isinstance(value, str):
            raise self.error(at, f"expected an interface name, got {_kind(value)}")
        if not is_interface_name(value):
            raise self.error(
                at,
                f"not a valid Linux interface name: {value!r} "
                "(1 to 15 bytes, no '/', ':' or spaces)",
            )
        return value

    def duration(
        self,
        value: Any,
        at: KeyPath,
        *,
        numbers: bool,
        allow_zero: bool = False,
        auto: bool = False,
    ) -> float:
        """A duration in seconds from "30s" (or a bare number where numbers is set); > 0 unless
        allow_zero. auto only adds '"auto" or' to the messages of keys that also take "auto"."""
        expected = '"auto" or a duration like "30s"' if auto else 'a duration like "30s"'
        if isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                reason = f'not "auto" or a duration: {value!r}' if auto else str(exc)
                raise self.error(at, reason) from None
        elif numbers and isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise self.error(at, f"expected {expected}, got {_kind(value)}")
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
            bound = "0 or longer" if allow_zero else "longer than 0"
            raise self.error(at, f"must be {bound}, got {value!r}")
        return seconds

    # -- [[door]] ---------------------------------------------------------------------------

    def door(self, data: dict[str, Any], at: KeyPath) -> _DoorSpec:
        self.only_known(data, at, _DOOR_KEYS, "key")
        if "name" not in data:
            raise self.error(at, "a door needs a name")
        name = data["name"]
        if not isinstance(name, str) or not _DOOR_NAME.match(name):
            raise self.error((*at, "name"), f"expected letters, digits, '_' or '-', got {name!r}")
        if "sequence" not in data:
            raise self.error(at, f"door {name!r} needs a sequence")
        sequence = self.sequence(data["sequence"], (*at, "sequence"))
        close: tuple[KnockStep, ...] = ()
        if "close" in data:
            close = self.sequence(data["close"], (*at, "close"))
        timeout = DEFAULT_DOOR_TIMEOUT
        if "timeout" in data:
            timeout = self.duration(data["timeout"], (*at, "timeout"), numbers=False)
        flags = data.get("tcp_flags", DEFAULT_TCP_FLAGS)
        if not isinstance(flags, str):
            raise self.error(
                (*at, "tcp_flags"), f'expected a string like "syn", got {_kind(flags)}'
            )
        try:
            parse_tcp_flags(flags)
        except ValueError as exc:
            raise self.error((*at, "tcp_flags"), str(exc)) from None
        band = data.get("decoy_band", DEFAULT_DECOY_BAND)
        if not isinstance(band, int) or isinstance(band, bool) or not 0 <= band <= MAX_DECOY_BAND:
            raise self.error(
                (*at, "decoy_band"), f"expected a whole number 0..{MAX_DECOY_BAND}, got {band!r}"
            )
        decoys, singles = self.decoys(data.get("decoys", []), (*at, "decoys"))
        open_to = data.get("open_to", "source")
        if open_to not in ("source", "everyone"):
            raise self.error((*at, "open_to"), f'expected "source" or "everyone", got {open_to!r}')
        window: float | None = None
        if "window" in data:
            window = self.duration(data["window"], (*at, "window"), numbers=False)
        return _DoorSpec(
            name,
            sequence,
            timeout,
            flags,
            close,
            band,
            decoys,
            singles,
            at,
            cast(Literal["source", "everyone"], open_to),
            window,
        )

    def sequence(self, value: Any, at: KeyPath) -> tuple[KnockStep, ...]:
        if not isinstance(value, list):
            raise self.error(
                at, f'expected a list like ["7000/tcp", "8000/udp"], got {_kind(value)}'
            )
        if not value:
            raise self.error(at, "the sequence is empty")
        if len(value) > MAX_SEQUENCE_LENGTH:
            raise self.error(at, f"{len(value)} steps, at most {MAX_SEQUENCE_LENGTH}")
        return tuple(self.step(raw, (*at, i)) for i, raw in enumerate(value))

    def step(self, value: Any, at: KeyPath) -> KnockStep:
        if isinstance(value, int) and not isinstance(value, bool):
            return KnockStep(self.port(value, at), "tcp")
        if not isinstance(value, str):
            raise self.error(at, f'expected "PORT/tcp" or "PORT/udp", got {_kind(value)}')
        match = _STEP.match(value)
        if not match:
            raise self.error(at, f'expected "PORT/tcp" or "PORT/udp", got {value!r}')
        return KnockStep(self.port(int(match.group(1)), at), self.proto(match.group(2), at))

    def proto(self, text: str | None, at: KeyPath) -> Proto:
        name = (text or "tcp").lower()
        if name not in ("tcp", "udp"):
            raise self.error(at, f"unknown protocol {text!r} (tcp or udp)")
        return cast(Proto, name)

    def decoys(
        self, value: Any, at: KeyPath
    ) -> tuple[tuple[KnockStep, ...], tuple[tuple[int, KnockStep], ...]]:
        """Explicit decoys: "PORT[/proto]" or "LO-HI[/proto]", expanded here. Also returns the
        one-port items with their positions, which check_single_decoys holds to stricter rules."""
        if not isinstance(value, list):
            raise self.error(at, f'expected a list like ["7010-7020/tcp"], got {_kind(value)}')
        out: list[KnockStep] = []
        singles: list[tuple[int, KnockStep]] = []
        for index, raw in enumerate(value):
            where = (*at, index)
            match = _RANGE.match(raw) if isinstance(raw, str) else None
            if match is None:
                step = self.step(raw, where)
                out.append(step)
                singles.append((index, step))
                continue
            low = self.port(int(match.group(1)), where)
            high = self.port(int(match.group(2)), where)
            if low > high:
                raise self.error(where, f"range {raw!r} runs backwards")
            proto = self.proto(match.group(3), where)
            out.extend(KnockStep(port, proto) for port in range(low, high + 1))
        return tuple(out), tuple(singles)

    # -- rules across doors -----------------------------------------------------------------

    def check_doors(self, specs: list[_DoorSpec], guard: Guard) -> None:
        guarded = set(guard.ports)
        opens: dict[tuple[KnockStep, ...], str] = {}
        names: set[str] = set()
        for spec in specs:
            if spec.name in names:
                raise self.error((*spec.at, "name"), f"another door is already named {spec.name!r}")
            names.add(spec.name)
            for key, steps in (("sequence", spec.sequence), ("close", spec.close)):
                for index, step in enumerate(steps):
                    if step.proto == "tcp" and step.port in guarded:
                        raise self.error(
                            (*spec.at, key, index),
                            f"{step} is a guarded port; knock on other ports",
                        )
            if spec.sequence in opens:
                raise self.error(
                    (*spec.at, "sequence"), f"door {opens[spec.sequence]!r} has the same sequence"
                )
            opens[spec.sequence] = spec.name
        door_ports = {step for spec in specs for step in (*spec.sequence, *spec.close)}
        for spec in specs:
            if spec.close and spec.close in opens:
                raise self.error(
                    (*spec.at, "close"), f"equals the open sequence of door {opens[spec.close]!r}"
                )
            self.check_single_decoys(spec, guarded, door_ports)

    def check_single_decoys(
        self, spec: _DoorSpec, guarded: set[int], door_ports: set[KnockStep]
    ) -> None:
        """A decoy written as one port must not be a knock or guarded port: that is a mistake.

        Ranges may span such ports (e.g. "1-1024"); those ports are left out of the expansion."""
        for index, step in spec.single_decoys:
            if step.proto == "tcp" and step.port in guarded:
                raise self.error((*spec.at, "decoys", index), f"{step} is a guarded port")
            if step in door_ports:
                raise self.error((*spec.at, "decoys", index), f"{step} is a knock port of a door")


def _spa_steps(spa: Spa) -> set[KnockStep]:
    """The SPA port as a knock step, while SPA is on: decoy expansion leaves it out."""
    return {KnockStep(spa.port, "udp")} if spa.enabled else set()


def _build_doors(
    specs: list[_DoorSpec], guard: Guard, reserved: set[KnockStep]
) -> tuple[Door, ...]:
    used = {step for spec in specs for step in (*spec.sequence, *spec.close)} | reserved
    return tuple(
        Door(
            name=spec.name,
            sequence=spec.sequence,
            timeout=spec.timeout,
            tcp_flags=parse_tcp_flags(spec.tcp_flags_text),
            close=spec.close,
            decoy_band=spec.decoy_band,
            decoys=expand_decoys(
                (*spec.sequence, *spec.close),
                spec.decoy_band,
                spec.explicit_decoys,
                used,
                guard.ports,
            ),
            open_to=spec.open_to,
            window=spec.window,
        )
        for spec in specs
    )


def expand_decoys(
    steps: Iterable[KnockStep],
    band: int,
    explicit: Iterable[KnockStep],
    used: set[KnockStep],
    guarded_ports: Iterable[int],
) -> tuple[KnockStep, ...]:
    """Decoys of one door: ports within ±band of each step (same protocol) plus the explicit
    ones, minus every knock port of any door (`used`) and the guarded TCP ports; sorted by
    (protocol, port), tcp first."""
    guarded = set(guarded_ports)
    found: set[KnockStep] = set(explicit)
    for step in steps:
        low, high = max(1, step.port - band), min(65535, step.port + band)
        found.update(KnockStep(port, step.proto) for port in range(low, high + 1))
    kept = (s for s in found if s not in used and not (s.proto == "tcp" and s.port in guarded))
    return tuple(sorted(kept, key=lambda s: (s.proto, s.port)))


def is_interface_name(name: str) -> bool:
    """Linux's dev_valid_name: 1..15 bytes, not "." or "..", no '/', ':' or whitespace
    (control characters are refused too: no real interface has them)."""
    return (
        0 < len(name.encode()) <= 15
        and name not in (".", "..")
        and not any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    )


def _unmap(network: IPNetwork) -> IPNetwork:
    """::ffff:192.0.2.0/120 is 192.0.2.0/24: sources are normalised to IPv4 the same way."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _display_key(at: KeyPath) -> str:
    """("door", 1, "sequence", 2) -> "door[2].sequence": doors, hooks and SPA stanzas
    ("spa.stanza[1]") counted from 1, list positions left to the line number."""
    out = ""
    for index, part in enumerate(at):
        if isinstance(part, int):
            if (index == 1 and at[0] in ("door", "hook")) or (
                index == 2 and at[:2] == ("spa", "stanza")
            ):
                out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else part
    return out


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), f"a {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Rendering: the effective config as TOML that parses back to an equal Config.


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def render_duration(seconds: float) -> str:
    """format_duration when it reads back exactly, else exact decimal seconds."""
    if seconds == 0:
        return toml_string("0s")  # format_duration would say "0ms"
    text = format_duration(seconds)
    if parse_duration(text) == seconds:
        return toml_string(text)
    return toml_string(f"{Decimal(repr(seconds)):f}s")


def _string_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def _ranges(steps: Iterable[KnockStep]) -> list[str]:
    """Compress sorted steps into "LO-HI/proto" and "PORT/proto" items."""
    out: list[str] = []
    run: list[KnockStep] = []
    for step in sorted(steps, key=lambda s: (s.proto, s.port)):
        if run and (step.proto != run[-1].proto or step.port != run[-1].port + 1):
            out.append(_range_text(run))
            run = []
        run.append(step)
    if run:
        out.append(_range_text(run))
    return out


def _range_text(run: list[KnockStep]) -> str:
    if len(run) == 1:
        return str(run[0])
    return f"{run[0].port}-{run[-1].port}/{run[0].proto}"


def render_config(config: Config) -> str:
    """The effective config as TOML; parse_config(render_config(c), c.path) == c.

    Decoys: decoy_band is written, and `decoys` lists only the ports the band does not produce
    (the user's explicit list as far as it survives expansion), compressed into ranges."""
    guard = config.guard
    lines = [
        f"# effective configuration{f' of {config.path}' if config.path else ''}",
        "[guard]",
        f"ports = [{', '.join(str(p) for p in guard.ports)}]",
        f"trusted = {_string_list(str(n) for n in guard.trusted)}",
        f"interfaces = {_string_list(guard.interfaces)}",
        f"answer = {toml_string(guard.answer)}",
        "",
        "[access]",
        f"window = {render_duration(config.access.window)}",
        f"linger = {render_duration(config.access.linger)}",
        f"lease = {render_duration(config.access.lease)}",
        f"require_auth = {'true' if config.access.require_auth else 'false'}",
        "login_grace_time = "
        + (
            toml_string(AUTO)
            if config.access.login_grace_time is None
            else render_duration(config.access.login_grace_time)
        ),
    ]
    used = {step for door in config.doors for step in (*door.sequence, *door.close)}
    used |= _spa_steps(config.spa)
    for door in config.doors:
        band_only = expand_decoys(
            (*door.sequence, *door.close), door.decoy_band, (), used, guard.ports
        )
        band = frozenset(band_only)
        extra = [step for step in door.decoys if step not in band]
        lines += [
            "",
            "[[door]]",
            f"name = {toml_string(door.name)}",
            f"sequence = {_string_list(str(s) for s in door.sequence)}",
            f"timeout = {render_duration(door.timeout)}",
            f"tcp_flags = {toml_string(str(door.tcp_flags))}",
        ]
        if door.close:
            lines.append(f"close = {_string_list(str(s) for s in door.close)}")
        lines.append(f"decoy_band = {door.decoy_band}")
        if extra:
            lines.append(f"decoys = {_string_list(_ranges(extra))}")
        if door.open_to != "source":
            lines.append(f"open_to = {toml_string(door.open_to)}")
        if door.window is not None:
            lines.append(f"window = {render_duration(door.window)}")
        lines.append(
            f"# {len(door.decoys)} decoy ports in effect (band and decoys, "
            "minus knock and guarded ports)"
        )
    lines += _render_ban(config.ban)
    lines += [
        "",
        "[sshd]",
        f"on_demand = {'true' if config.sshd.on_demand else 'false'}",
        f"start = {_string_list(config.sshd.start)}",
        f"stop = {_string_list(config.sshd.stop)}",
    ]
    for hook in config.hooks:
        lines += [
            "",
            "[[hook]]",
            f"on = {_string_list(hook.on)}",
            f"run = {_string_list(hook.run)}",
            f"timeout = {render_duration(hook.timeout)}",
        ]
    lines += _render_spa(config.spa)
    return "\n".join(lines) + "\n"


def _render_spa(spa: Spa) -> list[str]:
    """[spa] and its stanzas. Keys that came from files are written as their *_file keys, never
    as the secret; inline keys are written inline, in the form they were given."""
    lines = [
        "",
        "[spa]",
        f"port = {spa.port}",
        f"max_age = {render_duration(spa.max_age)}",
    ]
    for stanza in spa.stanzas:
        key_source, hmac_source = spa_key_sources(stanza)
        lines += [
            "",
            "[[spa.stanza]]",
            f"name = {toml_string(stanza.name)}",
            "source = "
            + _string_list([SPA_ANY] if not stanza.source else [str(n) for n in stanza.source]),
            _render_secret(key_source, stanza.key),
        ]
        if hmac_source is not None and stanza.hmac_key is not None:
            lines.append(_render_secret(hmac_source, stanza.hmac_key))
        lines += [
            f"hmac = {toml_string(stanza.hmac)}",
            f"encryption_mode = {toml_string('legacy' if stanza.legacy else 'cbc')}",
            f"open_ports = {_string_list(spa_access_text(a) for a in stanza.open_ports)}",
            f"restrict_ports = {_string_list(spa_access_text(a) for a in stanza.restrict_ports)}",
            f"access_timeout = {render_duration(stanza.access_timeout)}",
            f"max_timeout = {render_duration(stanza.max_timeout)}",
            f"require_source_address = {'true' if stanza.require_source_address else 'false'}",
        ]
        if stanza.require_username is not None:
            lines.append(f"require_username = {toml_string(stanza.require_username)}")
        if stanza.expires is not None:
            lines.append(f"expires = {render_expires(stanza.expires)}")
    return lines


def _render_secret(source: SpaKeySource, secret: bytes) -> str:
    if source.path is not None:
        return f"{source.form} = {toml_string(source.path)}"
    if source.form in ("key", "hmac_key"):
        with contextlib.suppress(UnicodeDecodeError):
            return f"{source.form} = {toml_string(secret.decode('utf-8'))}"
    form = "hmac_key_base64" if source.form.startswith("hmac") else "key_base64"
    return f"{form} = {toml_string(base64.b64encode(secret).decode('ascii'))}"


def _render_ban(ban: Ban) -> list[str]:
    factor = int(ban.factor) if ban.factor.is_integer() else ban.factor
    return [
        "",
        "[ban]",
        f"enabled = {'true' if ban.enabled else 'false'}",
        f"sources = {_string_list(ban.sources)}",
        f"mode = {toml_string(ban.mode)}",
        f"maxretry = {ban.maxretry}",
        f"findtime = {render_duration(ban.findtime)}",
        f"bantime = {render_duration(ban.bantime)}",
        f"factor = {factor!r}",
        f"maxtime = {render_duration(ban.maxtime)}",
        f"jitter = {render_duration(ban.jitter)}",
        f"ipv6_prefix = {ban.ipv6_prefix}",
        f"scope = {toml_string(ban.scope)}",
    ]
