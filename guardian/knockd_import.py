# Import of a knockd.conf (knockd 0.8, see shared/spec/knockd.md): its text -> equivalent
# ssh-guardian TOML plus notes for everything that could not be carried over. Pure: the CLI reads
# the file, prints the TOML on stdout and the notes on stderr. Nothing is dropped silently: every
# shell command, option and unconverted section is named in a note.
# A section whose command opens the port to every address (no %IP%, e.g. the seed's
# openSSH4everyone) becomes a door with open_to = "everyone" and its own window (cmd_timeout, or
# the default window when knockd left it open until another section closed it); a section that
# closes for every address becomes that door's close sequence.
from __future__ import annotations

import re
from dataclasses import dataclass, field

from guardian.config import (
    DEFAULT_PORTS,
    DEFAULT_WINDOW,
    MAX_SEQUENCE_LENGTH,
    KnockStep,
    format_duration,
    parse_tcp_flags,
)
from guardian.configfile import ConfigError, is_interface_name, parse_config, toml_string
from guardian.decimal_text import short_decimal

KNOCKD_SEQ_TIMEOUT = 25  # knockd's defaults, in seconds, for keys a section leaves out
KNOCKD_CMD_TIMEOUT = 10

# knockd's keys (upper case, as it compares them) -> our canonical name; aliases folded.
_DOOR_KEYS = {
    "SEQUENCE": "sequence",
    "ONE_TIME_SEQUENCES": "one_time_sequences",
    "SEQ_TIMEOUT": "seq_timeout",
    "TIMEOUT": "seq_timeout",
    "TCPFLAGS": "tcpflags",
    "START_COMMAND": "start_command",
    "COMMAND": "start_command",
    "START_COMMAND_6": "start_command_6",
    "COMMAND_6": "start_command_6",
    "CMD_TIMEOUT": "cmd_timeout",
    "STOP_COMMAND": "stop_command",
    "STOP_COMMAND_6": "stop_command_6",
    "TARGET": "target",
}
_OPTION_KEYS = {"LOGFILE": "logfile", "PIDFILE": "pidfile", "INTERFACE": "interface"}
_KEY_NAMES = {
    "usesyslog": "UseSyslog",
    "logfile": "LogFile",
    "pidfile": "PidFile",
    "target": "Target",
    "seq_timeout": "Seq_Timeout",
    "cmd_timeout": "Cmd_Timeout",
    "start_command": "start_command",
    "start_command_6": "start_command_6",
    "stop_command": "stop_command",
    "stop_command_6": "stop_command_6",
}
_COMMAND_KEYS = ("start_command", "start_command_6", "stop_command", "stop_command_6")


@dataclass(frozen=True, slots=True)
class ImportResult:
    """toml: a config that parse_config accepts; notes: one sentence per thing not carried over
    or changed in meaning, in file order."""

    toml: str
    notes: tuple[str, ...]


@dataclass(slots=True)
class _Section:
    name: str
    line: int
    values: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (value, line)

    @property
    def where(self) -> str:
        return f"[{self.name}] (line {self.line})"

    def get(self, key: str) -> str | None:
        found = self.values.get(key)
        return found[0] if found and found[0] else None


@dataclass(frozen=True, slots=True)
class _Command:
    """What a knockd shell command does, as far as a pattern can tell."""

    kind: str  # "open", "close" or "other"
    per_address: bool  # uses %IP%, so it acts for the knocking source only
    ports: tuple[int, ...]  # destination ports it names (--dport 22, port 22, ...)


@dataclass(slots=True)
class _Door:
    section: _Section
    name: str
    sequence: tuple[KnockStep, ...]
    timeout: int
    tcp_flags: str | None
    ports: tuple[int, ...]
    window: int | None  # cmd_timeout when the section closes by timer
    close: tuple[KnockStep, ...] = ()
    close_from: _Section | None = None
    everyone: bool = False  # its command opened the port to every address


def import_knockd(text: str, path: str) -> ImportResult:
    """Convert knockd.conf text. Raises ConfigError (path, line, key) where knockd itself would
    refuse the file: unknown keys, directives outside a section, bad sequences, flags, numbers."""
    options, sections = _read(text, path)
    notes: list[str] = []
    interfaces = _options(options, notes)
    doors: list[_Door] = []
    closers: list[tuple[_Section, tuple[KnockStep, ...], _Command]] = []
    for section in sections:
        sequence = _sequence(section, path)
        _check_numbers_and_flags(section, path)
        _note_plain_keys(section, notes)
        command_text = section.get("start_command") or section.get("start_command_6")
        command = _classify(command_text or "")
        if section.get("one_time_sequences"):
            notes.append(
                f"{section.where}: not converted: it uses One_Time_Sequences, which "
                "ssh-guardian does not support yet"
            )
        elif command_text is None:
            notes.append(
                f"{section.where}: not converted: it has no Start_Command, so it opened nothing"
            )
        elif command.kind == "open" and not command.per_address:
            door = _door(section, sequence, command, path, notes)
            door.everyone = True
            doors.append(door)
        elif command.kind == "close":
            closers.append((section, sequence, command))
        elif command.kind == "open":
            doors.append(_door(section, sequence, command, path, notes))
        else:
            notes.append(
                f"{section.where}: not converted: its command is not recognised as "
                "opening a port for the knocking address (%IP%)"
            )
        _note_commands(section, notes)
    _pair_closers(doors, closers, notes)
    ports = _guarded_ports(doors)
    doors = _without_conflicts(doors, ports, notes)
    window = _window(doors, notes)
    if not doors:
        notes.append(
            "no door was converted: only guard.trusted networks (empty for now) will "
            "reach the guarded ports; add a [[door]] or trusted networks before running"
        )
    toml = _render(path, ports, interfaces, window, doors)
    try:
        parse_config(toml, f"{path} (converted)")
    except ConfigError as exc:  # a bug here, not in the user's file: say so plainly
        reason = f"internal error, the converted TOML does not load: {exc}"
        raise ConfigError(path, None, "", reason) from None
    return ImportResult(toml=toml, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# Reading: knockd's line format, checked as strictly as knockd checks it.


def _read(text: str, path: str) -> tuple[dict[str, tuple[str, int]], list[_Section]]:
    options: dict[str, tuple[str, int]] = {}
    sections: list[_Section] = []
    current: _Section | None = None
    in_options = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if not name:
                raise ConfigError(path, number, "", "bad section name")
            in_options = name.lower() == "options"
            current = None if in_options else _Section(name, number)
            if current is not None:
                sections.append(current)
            continue
        if current is None and not in_options:
            raise ConfigError(path, number, "", "all directives must belong to a section")
        key, sep, value = line.partition("=")
        key = key.strip()
        upper = key.upper()
        if not sep:
            if upper != "USESYSLOG":  # knockd's only bare flag, accepted in any section
                raise ConfigError(path, number, key, "syntax error: expected KEY = VALUE")
            options["usesyslog"] = ("", number)
            continue
        value = value.strip()
        if current is None:
            if upper not in _OPTION_KEYS:
                raise ConfigError(
                    path,
                    number,
                    key,
                    "unknown [options] key (knockd rejects it "
                    "too; known: UseSyslog, LogFile, PidFile, Interface)",
                )
            options[_OPTION_KEYS[upper]] = (value, number)
        else:
            if upper not in _DOOR_KEYS:
                raise ConfigError(
                    path,
                    number,
                    key,
                    "unknown key (knockd rejects it too; known: "
                    "Sequence, One_Time_Sequences, Seq_Timeout, TCPFlags, "
                    "Start_Command, Start_Command_6, Cmd_Timeout, Stop_Command, "
                    "Stop_Command_6, Target)",
                )
            current.values[_DOOR_KEYS[upper]] = (value, number)
    return options, sections


def _sequence(section: _Section, path: str) -> tuple[KnockStep, ...]:
    found = section.values.get("sequence")
    if found is None:
        if section.get("one_time_sequences"):
            return ()
        raise ConfigError(
            path,
            section.line,
            section.name,
            "the section has no Sequence (knockd refuses it: empty knock sequence)",
        )
    value, line = found
    steps: list[KnockStep] = []
    for item in value.split(","):
        port_text, _, proto_text = item.partition(":")
        proto = proto_text.strip().lower() or "tcp"
        port = short_decimal(port_text.strip(), 5)
        if port is None or not 1 <= port <= 65535:
            raise ConfigError(path, line, "Sequence", f"not a port 1..65535: {port_text.strip()!r}")
        if proto not in ("tcp", "udp"):
            raise ConfigError(path, line, "Sequence", f"unknown protocol {proto_text.strip()!r}")
        steps.append(KnockStep(port, "tcp" if proto == "tcp" else "udp"))
    if len(steps) > MAX_SEQUENCE_LENGTH:
        raise ConfigError(
            path,
            line,
            "Sequence",
            f"{len(steps)} ports, knockd allows at most {MAX_SEQUENCE_LENGTH}",
        )
    return tuple(steps)


def _seconds(section: _Section, key: str, default: int, path: str) -> int:
    found = section.values.get(key)
    if found is None:
        return default
    value, line = found
    seconds = short_decimal(value, 9)
    if seconds is None or seconds == 0:
        raise ConfigError(
            path, line, _KEY_NAMES[key], f"expected whole seconds above 0, got {value[:40]!r}"
        )
    return seconds


def _tcp_flags(section: _Section, path: str) -> str | None:
    """TCPFlags normalised to our spelling ("syn,!ack"); None when the section has none."""
    found = section.values.get("tcpflags")
    if found is None:
        return None
    try:
        return str(parse_tcp_flags(found[0]))
    except ValueError as exc:
        raise ConfigError(path, found[1], "TCPFlags", str(exc)) from None


def _check_numbers_and_flags(section: _Section, path: str) -> None:
    """knockd refuses bad flags at start, so a bad value fails the import wherever it is."""
    _seconds(section, "seq_timeout", KNOCKD_SEQ_TIMEOUT, path)
    _seconds(section, "cmd_timeout", KNOCKD_CMD_TIMEOUT, path)
    _tcp_flags(section, path)


# ---------------------------------------------------------------------------------------------
# Mapping: knockd sections -> doors, with a note for every difference.


def _options(options: dict[str, tuple[str, int]], notes: list[str]) -> tuple[str, ...]:
    for key, why in (
        ("usesyslog", "ssh-guardian logs to the journal"),
        ("logfile", "ssh-guardian logs to the journal"),
        ("pidfile", "ssh-guardian runs under systemd and needs no pid file"),
    ):
        if key in options:
            value, line = options[key]
            shown = f" = {value}" if value else ""
            notes.append(
                f"[options] (line {line}): {_KEY_NAMES[key]}{shown} not carried over: {why}"
            )
    if "interface" not in options:
        notes.append(
            "[options]: no Interface: knockd listened on eth0 only; ssh-guardian "
            "listens on all interfaces (guard.interfaces = [])"
        )
        return ()
    name, line = options["interface"]
    if not is_interface_name(name):
        notes.append(
            f"[options] (line {line}): Interface = {name} not carried over: not a "
            "valid interface name; ssh-guardian listens on all interfaces"
        )
        return ()
    return (name,)


def _note_plain_keys(section: _Section, notes: list[str]) -> None:
    target = section.get("target")
    if target:
        notes.append(
            f"{section.where}: Target = {target} not carried over: ssh-guardian counts "
            "knocks sent to any address of this host"
        )


def _note_commands(section: _Section, notes: list[str]) -> None:
    for key in _COMMAND_KEYS:
        command = section.get(key)
        if command:
            does = "opens" if key.startswith("start") else "closes"
            notes.append(
                f"{section.where}: {key} not carried over: {command}; ssh-guardian "
                f"{does} the guarded ports itself"
            )


def _door(
    section: _Section,
    sequence: tuple[KnockStep, ...],
    command: _Command,
    path: str,
    notes: list[str],
) -> _Door:
    flags = _tcp_flags(section, path)
    if flags is None and any(step.proto == "tcp" for step in sequence):
        notes.append(
            f"{section.where}: no TCPFlags: knockd counted TCP packets with any flags; "
            "ssh-guardian counts SYN packets (what knock clients send)"
        )
    timed = section.get("stop_command") or section.get("stop_command_6")
    window = _seconds(section, "cmd_timeout", KNOCKD_CMD_TIMEOUT, path) if timed else None
    if not timed and "cmd_timeout" in section.values:
        notes.append(
            f"{section.where}: Cmd_Timeout without Stop_Command is ignored, as knockd ignores it"
        )
    if not command.ports:
        notes.append(
            f"{section.where}: its command names no destination port (it may have "
            f"opened more); ssh-guardian guards port(s) "
            f"{', '.join(map(str, DEFAULT_PORTS))} for this door"
        )
    return _Door(
        section=section,
        name=section.name,
        sequence=sequence,
        timeout=_seconds(section, "seq_timeout", KNOCKD_SEQ_TIMEOUT, path),
        tcp_flags=flags,
        ports=command.ports or DEFAULT_PORTS,
        window=window,
    )


def _pair_closers(
    doors: list[_Door],
    closers: list[tuple[_Section, tuple[KnockStep, ...], _Command]],
    notes: list[str],
) -> None:
    """A per-address "close" section becomes the close sequence of an open door for the same
    port(s) (the first one in the file without a close yet); otherwise it is noted."""
    for section, sequence, command in closers:
        # A per-address close pairs with a per-address door; one for every address with an
        # everyone door.
        match = next(
            (
                d
                for d in doors
                if not d.close
                and d.everyone != command.per_address
                and (not command.ports or set(command.ports) <= set(d.ports))
            ),
            None,
        )
        if match is None:
            notes.append(
                f"{section.where}: not converted: it closes a port that no converted door opens"
            )
            continue
        match.close = sequence
        match.close_from = section
        notes.append(f"{section.where}: became the close sequence of door {match.name!r}")


def _guarded_ports(doors: list[_Door]) -> tuple[int, ...]:
    ports: list[int] = []
    for door in doors:
        ports.extend(p for p in door.ports if p not in ports)
    return tuple(ports) or DEFAULT_PORTS


def _without_conflicts(doors: list[_Door], ports: tuple[int, ...], notes: list[str]) -> list[_Door]:
    """Drop what ssh-guardian would refuse, saying why: knocks on a guarded port, a sequence
    already used, a close sequence equal to an open one."""
    kept: list[_Door] = []
    names: set[str] = set()
    for door in doors:
        where = door.section.where
        if any(s.proto == "tcp" and s.port in ports for s in door.sequence):
            notes.append(f"{where}: not converted: its sequence knocks on a guarded port")
            continue
        if any(d.sequence == door.sequence for d in kept):
            notes.append(f"{where}: not converted: another door has the same sequence")
            continue
        door.name = _unique_name(door.name, names)
        kept.append(door)
    opens = {d.sequence for d in kept}
    for door in kept:
        bad_port = any(s.proto == "tcp" and s.port in ports for s in door.close)
        if door.close and (door.close in opens or bad_port):
            origin = door.close_from.where if door.close_from else "?"
            why = "knocks on a guarded port" if bad_port else "equals an open sequence"
            notes.append(f"door {door.name!r}: close sequence from {origin} dropped: it {why}")
            door.close = ()
    if len(ports) > 1:
        notes.append(
            f"every door opens all guarded ports ({', '.join(map(str, ports))}) "
            "together; knockd's commands opened one each"
        )
    return kept


def _unique_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "door"
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        candidate = f"{base}-{number}"
    taken.add(candidate)
    return candidate


def _window(doors: list[_Door], notes: list[str]) -> int | None:
    for door in doors:
        if door.everyone:
            window = door.window if door.window is not None else int(DEFAULT_WINDOW)
            origin = "its cmd_timeout" if door.window is not None else "the default: knockd "
            if door.window is None:
                origin += "kept it open until a close sequence"
            notes.append(
                f"door {door.name!r}: opens the guarded ports to EVERY address for "
                f'{window}s ({origin}): open_to = "everyone", a hard bound; bans still apply'
            )
    doors = [d for d in doors if not d.everyone]  # their window is their own
    timed = [d for d in doors if d.window is not None]
    for door in doors:
        if door.window is None:
            notes.append(
                f"door {door.name!r}: knockd kept the port open until the close "
                "sequence; ssh-guardian closes it when the window passes without a "
                "connection, when the last session ends, or on the close sequence"
            )
    if not timed:
        return None
    longest = max(d.window or 0 for d in timed)
    if len({d.window for d in timed}) > 1:
        listed = ", ".join(f"{d.name} {d.window}s" for d in timed)
        notes.append(
            f"cmd_timeout differs ({listed}); ssh-guardian has one window for all "
            f"doors: using the longest, {longest}s"
        )
    notes.append(
        f"cmd_timeout became [access] window = {longest}s: the time for a first "
        "connection; sessions that started go on, and the port closes after the last"
    )
    return longest


# ---------------------------------------------------------------------------------------------
# Commands: recognised by pattern, never run, never copied into the TOML.

_IPTABLES = re.compile(r"\b(?:ip6?tables(?:-legacy|-nft)?)\b")
_IPT_ADD = re.compile(r"(?:^|\s)(?:-A|-I|--append|--insert)\s")
_IPT_DELETE = re.compile(r"(?:^|\s)(?:-D|--delete)\s")
_IPT_ACCEPT = re.compile(r"(?:-j|--jump)\s+ACCEPT\b", re.IGNORECASE)
_UFW_ALLOW = re.compile(r"\bufw\s+(?:insert\s+\d+\s+)?allow\b")
_UFW_DELETE = re.compile(r"\bufw\s+delete\b")


@dataclass(frozen=True, slots=True)
class _Then:
    """`first`, and later on the line `then`: what r"first.*then" means, without its quadratic
    cost (search() retries `.*` from every occurrence of `first`: a 12 KB line of "nft " took
    half a second, a megabyte hours)."""

    first: re.Pattern[str]
    then: re.Pattern[str]

    def search(self, text: str) -> re.Match[str] | None:
        found = self.first.search(text)
        return None if found is None else self.then.search(text, found.end())


_NFT = re.compile(r"\bnft\b")
_NFT_ADD = _Then(_NFT, re.compile(r"\b(?:add|insert|create)\s+(?:element|rule)\b"))
_NFT_DELETE = _Then(_NFT, re.compile(r"\b(?:delete|destroy)\s+(?:element|rule)\b"))
_FIREWALL_CMD = re.compile(r"\bfirewall-cmd\b")
_FIREWALLD_ADD = _Then(_FIREWALL_CMD, re.compile(r"--add-(?:rich-rule|source|port)"))
_FIREWALLD_REMOVE = _Then(_FIREWALL_CMD, re.compile(r"--remove-(?:rich-rule|source|port)"))
_KNOCK_ADD = re.compile(r"\bknock_add\b")
_PORTS = (
    re.compile(r"(?:--dports?|\bdport)\s*[= ]?\s*\{?\s*(\d+(?:\s*,\s*\d+)*)"),
    re.compile(r"\bport\s*=?\s*\"?(\d+)"),
    re.compile(r"--add-port=(\d+)"),
    _Then(re.compile(r"\bknock_add\b"), re.compile(r"\s-d\s+(\d+)")),
)


def _classify(command: str) -> _Command:
    if _IPTABLES.search(command):
        if _IPT_DELETE.search(command):
            kind = "close"
        elif _IPT_ADD.search(command) and _IPT_ACCEPT.search(command):
            kind = "open"
        else:
            kind = "other"
    elif (
        _UFW_DELETE.search(command)
        or _NFT_DELETE.search(command)
        or (_FIREWALLD_REMOVE.search(command))
    ):
        kind = "close"
    elif (
        _UFW_ALLOW.search(command)
        or _NFT_ADD.search(command)
        or _FIREWALLD_ADD.search(command)
        or _KNOCK_ADD.search(command)
    ):
        kind = "open"
    else:
        kind = "other"
    return _Command(kind, "%IP%" in command, _command_ports(command))


def _command_ports(command: str) -> tuple[int, ...]:
    for pattern in _PORTS:
        match = pattern.search(command)
        if match:
            digits = re.findall(r"\d+", match.group(1), re.ASCII)
            ports = [int(p) for p in digits if len(p) <= 5]
            valid = tuple(dict.fromkeys(p for p in ports if 1 <= p <= 65535))
            if valid:
                return valid
    return ()


# ---------------------------------------------------------------------------------------------
# Output


def _render(
    path: str,
    ports: tuple[int, ...],
    interfaces: tuple[str, ...],
    window: int | None,
    doors: list[_Door],
) -> str:
    lines = [
        f"# Converted from {path} by `guardian import knockd`.",
        "# Its notes (on stderr) list everything that was not carried over: read them.",
        "",
        "[guard]",
        f"ports = [{', '.join(map(str, ports))}]",
        "# knockd had no trusted networks: add yours (e.g. your LAN) so you cannot be locked out",
        "trusted = []",
        "interfaces = [" + ", ".join(toml_string(i) for i in interfaces) + "]",
        'answer = "reset"',
        "",
        "[access]",
    ]
    if window is None:
        lines.append(f"# window = {toml_string(format_duration(DEFAULT_WINDOW))}  (the default)")
    else:
        lines.append(f"window = {toml_string(format_duration(window))}  # from cmd_timeout")
    for door in doors:
        origin = f"from {door.section.where}"
        if door.close_from is not None:
            origin += f", close sequence from {door.close_from.where}"
        lines += [
            "",
            f"# {origin}",
            "[[door]]",
            f"name = {toml_string(door.name)}",
            "sequence = [" + ", ".join(toml_string(str(s)) for s in door.sequence) + "]",
            f"timeout = {toml_string(format_duration(door.timeout))}",
        ]
        if door.tcp_flags is not None:
            lines.append(f"tcp_flags = {toml_string(door.tcp_flags)}")
        if door.close:
            lines.append("close = [" + ", ".join(toml_string(str(s)) for s in door.close) + "]")
        if door.everyone:
            window = door.window if door.window is not None else int(DEFAULT_WINDOW)
            lines.append('open_to = "everyone"  # its command opened the port to every address')
            lines.append(f"window = {toml_string(format_duration(window))}")
    return "\n".join(lines) + "\n"
