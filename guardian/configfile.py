# Config file: TOML text -> the frozen Config of guardian/config.py, and back (render_config).
# Every mistake becomes one ConfigError naming file, line and key, raised before anything touches
# the firewall. tomllib gives no positions for keys, so a small indexer scans the (already valid)
# text to map each key path to its line; it runs only when there is an error to report.
# Decoy ports are expanded here, once, so the engine and the kernel filter get one flat list.
from __future__ import annotations

import bisect
import contextlib
import ipaddress
import math
import re
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
    Access,
    Ban,
    Config,
    Door,
    Guard,
    Hook,
    KnockStep,
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
_STEP = re.compile(r"^\s*(\d+)\s*(?:/\s*([A-Za-z]+))?\s*$")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*([A-Za-z]+))?\s*$")
_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)
_TOML_AT_END = re.compile(r"^(.*) \(at end of document\)$", re.DOTALL)

_TOP_KEYS = ("guard", "access", "door", "ban", "sshd", "hook")
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


def load_config(path: str) -> Config:
    """Read and parse the file at path; every failure (including OSError) is a ConfigError."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(path, None, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, "", "the file is not valid UTF-8") from None
    return parse_config(text, path)


def parse_config(text: str, path: str) -> Config:
    """Parse TOML text into a Config (pure). path is only used in messages and Config.path."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, path) from None
    return _Parser(text, path).config(data)


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


def _unclosed_list_line(text: str, line: int) -> int:
    """The nearest line at or above `line` with `key = [` and more '[' than ']', else `line`."""
    lines = text.splitlines()
    for number in range(min(line, len(lines)), 0, -1):
        content = lines[number - 1].split("#", 1)[0]
        if re.match(r"^\s*[^=\[]+=\s*\[", content) and content.count("[") > content.count("]"):
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
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
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
        return Config(
            guard=guard,
            access=access,
            doors=_build_doors(specs, guard),
            path=self.path,
            ban=ban,
            sshd=sshd,
            hooks=hooks,
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
            if kind not in HOOK_KINDS:
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


def _build_doors(specs: list[_DoorSpec], guard: Guard) -> tuple[Door, ...]:
    used = {step for spec in specs for step in (*spec.sequence, *spec.close)}
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
    """("door", 1, "sequence", 2) -> "door[2].sequence": doors counted from 1, list positions
    left to the line number."""
    out = ""
    for index, part in enumerate(at):
        if isinstance(part, int):
            if index == 1 and at[0] in ("door", "hook"):
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
    for door in config.doors:
        band_only = expand_decoys(
            (*door.sequence, *door.close), door.decoy_band, (), used, guard.ports
        )
        extra = [step for step in door.decoys if step not in set(band_only)]
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
    return "\n".join(lines) + "\n"


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
