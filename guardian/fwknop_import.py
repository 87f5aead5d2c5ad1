# Import of fwknopd's access.conf (fwknop 2.6.10, see shared/spec/fwknop-spa.md): its text ->
# equivalent ssh-guardian TOML ([guard] and [spa] with one [[spa.stanza]] per fwknop stanza) plus
# notes for everything not carried over. Pure, like knockd_import: the CLI reads the file, prints
# the TOML on stdout and the notes on stderr.
# The file is read the way fwknopd reads it (server/access.c): "KEY VALUE" lines, the value up to
# ';' or the line end, a ':' after the key ignored, keys compared case-sensitively, SOURCE starting
# a stanza, and the last of two values for one setting winning. Where fwknopd refuses to start
# (placeholder keys, bad base64, an unknown digest or mode, bad numbers, a stanza without keys) the
# import fails with a ConfigError naming the line. A stanza that fwknopd accepts but ssh-guardian
# cannot honour (GPG only, NAT, a mode other than CBC or legacy) is skipped with a note; every key
# that is not carried over is named with its line. Keys are written inline, so the TOML must be
# kept 0600 (the header and the notes say so; the loader refuses it otherwise).
from __future__ import annotations

import base64
import calendar
import datetime
import ipaddress
import re
from dataclasses import dataclass, field

from guardian.config import (
    DEFAULT_PORTS,
    DEFAULT_SPA_ACCESS_TIMEOUT,
    DEFAULT_SPA_MAX_AGE,
    DEFAULT_SPA_MAX_TIMEOUT,
    DEFAULT_SPA_PORT,
    SPA_HMACS,
    SPA_NO_HMAC,
    format_duration,
)
from guardian.configfile import (
    MAX_SPA_HMAC_KEY,
    MAX_SPA_KEY,
    MAX_SPA_USERNAME,
    ConfigError,
    decode_base64_key,
    parse_config,
    render_expires,
    toml_string,
)
from guardian.knockd_import import ImportResult

PLACEHOLDER = "__CHANGEME__"  # what the packaged access.conf ships; fwknopd refuses to start
MAX_FW_TIMEOUT = 2 << 22  # fwknopd's RCHK_MAX_FW_TIMEOUT, seconds
MAX_EXPIRE_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: the last instant a TOML date can say
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

# fwknopd's keys grouped by what becomes of them. Several keys fill one setting (fwknopd keeps
# one value: the last one given); _SLOTS names the setting.
_SLOTS = {
    "SOURCE": "source",
    "DESTINATION": "destination",
    "OPEN_PORTS": "open_ports",
    "RESTRICT_PORTS": "restrict_ports",
    "KEY": "key",
    "KEY_BASE64": "key",
    "HMAC_KEY": "hmac_key",
    "HMAC_KEY_BASE64": "hmac_key",
    "HMAC_DIGEST_TYPE": "hmac",
    "ENCRYPTION_MODE": "mode",
    "FW_ACCESS_TIMEOUT": "access_timeout",
    "MAX_FW_TIMEOUT": "max_timeout",
    "REQUIRE_SOURCE_ADDRESS": "require_source",
    "REQUIRE_SOURCE": "require_source",
    "REQUIRE_USERNAME": "username",
    "ACCESS_EXPIRE": "expires",
    "ACCESS_EXPIRE_EPOCH": "expires",
}
_GPG_KEYS = (
    "GPG_HOME_DIR",
    "GPG_EXE",
    "GPG_DECRYPT_ID",
    "GPG_DECRYPT_PW",
    "GPG_ALLOW_NO_PW",
    "GPG_REQUIRE_SIG",
    "GPG_DISABLE_SIG",
    "GPG_IGNORE_SIG_VERIFY_ERROR",
    "GPG_REMOTE_ID",
    "GPG_FINGERPRINT_ID",
)
_COMMAND_KEYS = (
    "ENABLE_CMD_EXEC",
    "ENABLE_CMD_SUDO_EXEC",
    "CMD_EXEC_USER",
    "CMD_EXEC_GROUP",
    "CMD_SUDO_EXEC_USER",
    "CMD_SUDO_EXEC_GROUP",
    "CMD_CYCLE_OPEN",
    "CMD_CYCLE_CLOSE",
    "CMD_CYCLE_TIMER",
    "SUDO_EXE",
)
_NAT_KEYS = ("FORCE_NAT", "FORCE_SNAT", "FORCE_MASQUERADE", "DISABLE_DNAT", "FORWARD_ALL")
_INCLUDES = ("%include", "%include_folder", "%include_keys")
# fwknop's ENCRYPTION_MODE names (enc_mode_strtoint, case-insensitive) -> what becomes of them.
_MODES = {"cbc": "cbc", "legacy": "legacy", "asymmetric": "gpg"}
_OTHER_MODES = ("ecb", "cfb", "ofb", "ctr")  # fwknopd knows them; ssh-guardian decodes CBC only


@dataclass(frozen=True, slots=True)
class _Value:
    key: str  # as written (without a trailing ':')
    text: str
    line: int


@dataclass(slots=True)
class _Stanza:
    number: int  # 1-based, file order, as fwknopd counts stanzas in its messages
    line: int  # of its SOURCE
    settings: dict[str, _Value] = field(default_factory=dict)  # slot -> the value that counts
    dropped: list[_Value] = field(default_factory=list)  # GPG, command, NAT and unknown keys

    @property
    def where(self) -> str:
        return f"stanza {self.number} (SOURCE at line {self.line})"

    def get(self, slot: str) -> _Value | None:
        return self.settings.get(slot)

    def has(self, key: str) -> _Value | None:
        return next((value for value in reversed(self.dropped) if value.key == key), None)


@dataclass(slots=True)
class _Converted:
    stanza: _Stanza
    name: str
    source: list[str]
    key: tuple[str, str]  # (TOML key, TOML value text)
    hmac_key: tuple[str, str] | None
    hmac: str
    mode: str
    open_ports: list[tuple[str, int]] | None  # None: fwknopd honoured any request
    restrict_ports: list[tuple[str, int]]
    access_timeout: int
    max_timeout: int
    require_source: bool
    username: str | None
    expires: float | None


def import_fwknop(text: str, path: str) -> ImportResult:
    """Convert access.conf text. Raises ConfigError (path, line, key) where fwknopd itself would
    refuse the file: placeholder or bad keys, unknown digests or modes, bad numbers, dates,
    sources or ports, a stanza with no key, a line without a value.

    Text with bytes that are not UTF-8 should be decoded with errors="surrogateescape": KEY and
    HMAC_KEY are then carried over byte for byte."""
    stanzas, notes = _read(text, path)
    converted: list[_Converted] = []
    names: set[str] = set()
    for stanza in stanzas:
        result = _convert(stanza, path, notes)
        if result is not None:
            result.name = _unique_name(stanza, names)
            converted.append(result)
    ports = _guarded_ports(converted, notes)
    _general_notes(converted, ports, notes)
    toml = _render(path, ports, converted)
    try:
        parse_config(toml, f"{path} (converted)")
    except ConfigError as exc:  # a bug here, not in the user's file: say so plainly
        reason = f"internal error, the converted TOML does not load: {exc}"
        raise ConfigError(path, None, "", reason) from None
    return ImportResult(toml=toml, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# Reading: fwknopd's line format, checked where fwknopd checks it.


def _read(text: str, path: str) -> tuple[list[_Stanza], list[str]]:
    stanzas: list[_Stanza] = []
    notes: list[str] = []
    current: _Stanza | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw or raw[0] in "#;\r\0" or raw.lstrip().startswith("#"):
            continue
        if not raw.strip():
            raise ConfigError(
                path, number, "", "a line of blanks only (fwknopd refuses the file: remove it)"
            )
        parsed = _split(raw)
        if parsed is None:
            key = raw.split()[0].rstrip(":")
            raise ConfigError(
                path, number, key, "expected 'KEY VALUE' (fwknopd refuses the file too)"
            )
        value = _Value(*parsed, number)
        if value.key in _INCLUDES:
            notes.append(_include_note(value, current))
            if value.key == "%include_keys" and current is not None:
                current.dropped.append(value)
            continue
        if value.key == "SOURCE":
            current = _Stanza(len(stanzas) + 1, number)
            stanzas.append(current)
        elif current is None:
            notes.append(
                f"line {number}: {value.key} comes before the first SOURCE, outside any "
                "stanza: fwknopd ignored it too"
            )
            continue
        _check(value, path)
        slot = _SLOTS.get(value.key)
        if slot is None:
            current.dropped.append(value)
            continue
        earlier = current.settings.get(slot)
        if earlier is not None:
            notes.append(
                f"{current.where}: {value.key} at line {number} replaces {earlier.key} at line "
                f"{earlier.line}: the later one counts, as in fwknopd"
            )
        current.settings[slot] = value
    return stanzas, notes


def _split(raw: str) -> tuple[str, str] | None:
    """fwknopd's sscanf("%s %[^;\\n\\r]"): a key, whitespace, a value up to ';' or the line end
    (trailing blanks kept: they are part of a KEY). A ':' ending the key is dropped."""
    match = re.match(r"\s*(\S+)\s+([^;\n\r\s][^;\n\r]*)", raw)
    if match is None:
        return None
    key = match.group(1)
    if ":" in key:
        key = key[: key.rindex(":")]
    return key, match.group(2)


def _include_note(value: _Value, stanza: _Stanza | None) -> str:
    target = value.text.strip()
    if value.key == "%include_keys":
        if stanza is None:
            return f"line {value.line}: %include_keys {target} outside any stanza: ignored"
        return (
            f"{stanza.where}: %include_keys {target} (line {value.line}) was not read: this "
            "stanza's keys are in that file; put them in the TOML (or in key files) yourself"
        )
    return (
        f"line {value.line}: {value.key} {target} was not followed: import that "
        f"{'file' if value.key == '%include' else 'folder'}'s stanzas separately"
    )


def _check(value: _Value, path: str) -> None:
    """What fwknopd checks while reading a line, with its verdict: refuse the file."""
    key, text = value.key, value.text.strip()

    def refuse(reason: str) -> ConfigError:
        return ConfigError(path, value.line, key, reason)

    if key in ("KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64", "GPG_DECRYPT_PW") and (
        text.lower() == PLACEHOLDER.lower()
    ):
        raise refuse(
            f"still the placeholder {PLACEHOLDER} (fwknopd refuses to start with it too): put "
            "the keys printed by `guardian keygen` or `fwknop --key-gen` here, then import again"
        )
    if key in ("KEY_BASE64", "HMAC_KEY_BASE64"):
        try:
            decode_base64_key(text)
        except ValueError as exc:
            raise refuse(f"{exc} (fwknopd refuses it too)") from None
    elif key == "HMAC_DIGEST_TYPE" and text.lower() not in SPA_HMACS:
        raise refuse(f"unknown digest {text!r} (fwknopd knows: {', '.join(SPA_HMACS)})")
    elif key == "ENCRYPTION_MODE" and text.lower() not in (*_MODES, *_OTHER_MODES):
        raise refuse(f"unknown mode {text!r} (fwknopd knows: CBC, CTR, legacy, Asymmetric...)")
    elif key in ("FW_ACCESS_TIMEOUT", "MAX_FW_TIMEOUT") and not 0 <= _strtol(text) <= (
        MAX_FW_TIMEOUT
    ):
        raise refuse(f"expected whole seconds 0..{MAX_FW_TIMEOUT}, got {text!r}")
    elif key == "ACCESS_EXPIRE" and _fwknop_date(text) is None:
        raise refuse(f"expected a date MM/DD/YYYY, got {text!r}")
    elif key == "SOURCE" and _networks(text) is None:
        raise refuse(f"not an address, network or ANY (fwknopd refuses it too): {text!r}")
    elif key in ("OPEN_PORTS", "RESTRICT_PORTS") and _accesses(text) is None:
        raise refuse(f'expected "tcp/PORT" or "udp/PORT" entries, comma-separated: {text!r}')


def _strtol(text: str) -> int:
    """C's strtol as fwknopd uses it: the leading integer, 0 when there is none ("45s" -> 45,
    "abc" -> 0)."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _number_note(stanza: _Stanza, value: _Value, number: int) -> str | None:
    """A note when fwknopd read a number out of something that is not one."""
    if value.text.strip().isdigit():
        return None
    return (
        f"{stanza.where}: {value.key} {value.text.strip()!r} (line {value.line}) is not a "
        f"whole number: fwknopd read it as {number}, and so does this import"
    )


def _fwknop_date(text: str) -> datetime.date | None:
    """MM/DD/YYYY as fwknopd reads it: sscanf "%2d/%2d/%4d" (a two-digit year is 20YY), then
    mktime, which carries days and months over (02/30/2027 is 2027-03-02, 13/01/2027 is
    2028-01-01, day 0 the month's eve)."""
    match = re.match(r"^(\d{1,2})/(\d{1,2})/(\d{1,4})", text)
    if match is None:
        return None
    month, day, year = (int(group) for group in match.groups())
    if year < 100:
        year += 2000
    month = max(month, 1) - 1  # fwknopd leaves a month of 0 at January
    year, month = year + month // 12, month % 12 + 1
    try:
        return datetime.date(year, month, 1) + datetime.timedelta(days=day - 1)
    except (ValueError, OverflowError):
        return None


def _networks(text: str) -> list[str] | None:
    """SOURCE's comma-separated list -> TOML source entries ("ANY" alone when ANY is listed:
    it covers the rest); None when an entry is not valid."""
    out: list[str] = []
    any_listed = False
    for item in text.split(","):
        item = item.strip()
        if item.upper() == "ANY":
            any_listed = True
            continue
        try:
            network = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            return None
        if network not in out:
            out.append(network)
    return ["ANY"] if any_listed else out


def _accesses(text: str) -> list[tuple[str, int]] | None:
    """OPEN_PORTS / RESTRICT_PORTS: "tcp/22, udp/53" -> [("tcp", 22), ("udp", 53)]."""
    out: list[tuple[str, int]] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z]+)/(\d+)\s*", item)
        if match is None or match.group(1).lower() not in ("tcp", "udp"):
            return None
        port = int(match.group(2))
        if port > 65535:
            return None
        access = (match.group(1).lower(), port)
        if access not in out:
            out.append(access)
    return out


# ---------------------------------------------------------------------------------------------
# Converting one stanza: fwknopd's end-of-stanza checks, then each setting.


def _convert(stanza: _Stanza, path: str, notes: list[str]) -> _Converted | None:
    where = stanza.where
    gpg = _uses_gpg(stanza)
    key_value = stanza.get("key")
    mode_value = stanza.get("mode")
    mode = _MODES.get(mode_value.text.strip().lower(), "other") if mode_value else "cbc"
    for value in stanza.dropped:
        notes.append(_dropped_note(stanza, value))
    destination = stanza.get("destination")
    if destination is not None:
        notes.append(
            f"{where}: DESTINATION {destination.text.strip()} (line {destination.line}) not "
            "carried over: ssh-guardian accepts SPA packets sent to any address of this host"
        )
    if key_value is None:
        if gpg:
            notes.append(f"{where}: not converted: it uses GnuPG keys, which ssh-guardian lacks")
            return None
        if stanza.has("%include_keys"):
            notes.append(f"{where}: not converted: its keys are in an %include_keys file")
            return None
        raise ConfigError(
            path, stanza.line, "SOURCE", "the stanza has no KEY or KEY_BASE64 (fwknopd refuses it)"
        )
    skip = _unsupported(stanza, mode)
    if skip:
        notes.append(f"{where}: not converted: {skip}")
        return None
    key = _key_bytes(key_value)
    hmac_value = stanza.get("hmac_key")
    hmac_key = None if hmac_value is None else _key_bytes(hmac_value)
    if hmac_key is not None and hmac_value is not None and hmac_key == key:
        raise ConfigError(
            path,
            hmac_value.line,
            hmac_value.key,
            "the HMAC key equals the encryption key (fwknopd refuses this too)",
        )
    lengths = [(key_value, key, MAX_SPA_KEY)]
    if hmac_value is not None and hmac_key is not None:
        lengths.append((hmac_value, hmac_key, MAX_SPA_HMAC_KEY))
    for value, data, limit in lengths:
        if not 0 < len(data) <= limit:
            notes.append(
                f"{where}: not converted: {value.key} at line {value.line} is {len(data)} bytes; "
                f"fwknop uses 1 to {limit}, so no packet could ever match it"
            )
            return None
    usable, username = _username(stanza, notes)
    if not usable:
        return None
    access_timeout, max_timeout = _timeouts(stanza, notes)
    return _Converted(
        stanza=stanza,
        name="",
        source=_networks(stanza.settings["source"].text) or ["ANY"],
        key=_secret_toml("key", key_value, key),
        hmac_key=(
            None
            if hmac_value is None or hmac_key is None
            else _secret_toml("hmac_key", hmac_value, hmac_key)
        ),
        hmac=_hmac(stanza, hmac_value is not None, notes),
        mode=mode,
        open_ports=_open_ports(stanza, notes),
        restrict_ports=_restrict_ports(stanza, notes),
        access_timeout=access_timeout,
        max_timeout=max_timeout,
        require_source=_yes(stanza.get("require_source")),
        username=username,
        expires=_expires(stanza, notes),
    )


def _uses_gpg(stanza: _Stanza) -> bool:
    password = stanza.has("GPG_DECRYPT_PW")
    allow_no_pw = stanza.has("GPG_ALLOW_NO_PW")
    mode = stanza.get("mode")
    return (
        password is not None
        or (allow_no_pw is not None and allow_no_pw.text.strip()[:1].upper() == "Y")
        or (mode is not None and mode.text.strip().lower() == "asymmetric")
    )


def _unsupported(stanza: _Stanza, mode: str) -> str:
    """Why ssh-guardian cannot honour this stanza, or "" when it can."""
    mode_value = stanza.get("mode")
    if mode == "gpg":
        return "ENCRYPTION_MODE Asymmetric means GnuPG, which ssh-guardian lacks"
    if mode == "other" and mode_value is not None:
        return (
            f"ENCRYPTION_MODE {mode_value.text.strip()} (line {mode_value.line}): ssh-guardian "
            "decodes CBC and legacy packets only (the fwknop clients' modes)"
        )
    for key in ("FORCE_NAT", "FORWARD_ALL"):
        value = stanza.has(key)
        if value is not None and (key == "FORCE_NAT" or _yes(value)):
            return (
                f"{key} (line {value.line}) forwarded its clients to another host; "
                "ssh-guardian opens only this host's guarded ports"
            )
    return ""


def _dropped_note(stanza: _Stanza, value: _Value) -> str:
    shown = f"{value.key} (line {value.line})"
    if value.key in _GPG_KEYS:
        why = "ssh-guardian has no GnuPG mode"
    elif value.key in _COMMAND_KEYS:
        why = "ssh-guardian never runs commands for SPA packets (and refuses command messages)"
        if value.key == "CMD_CYCLE_OPEN":
            why = (
                "fwknopd ran this command instead of opening the firewall; ssh-guardian opens "
                "the guarded ports instead, and runs nothing"
            )
    elif value.key in _NAT_KEYS:
        why = "ssh-guardian does no NAT or forwarding"
    elif value.key == "%include_keys":
        why = "the file was not read"
    else:
        why = "unknown key (fwknopd ignored it too; its keys are upper case)"
    return f"{stanza.where}: {shown} not carried over: {why}"


def _key_bytes(value: _Value) -> bytes:
    """The raw key: KEY byte for byte (trailing blanks included, as fwknopd keeps them),
    KEY_BASE64 decoded."""
    if value.key.endswith("BASE64"):
        return decode_base64_key(value.text)
    return value.text.encode("utf-8", "surrogateescape")


def _secret_toml(form: str, value: _Value, data: bytes) -> tuple[str, str]:
    """The TOML key and value for a key: a passphrase stays a passphrase when it is printable
    text (so `guardian check` can say it is one), anything else goes in as base64."""
    if not value.key.endswith("BASE64"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and text.isprintable():
            return form, toml_string(text)
    return f"{form}_base64", toml_string(base64.b64encode(data).decode("ascii"))


def _hmac(stanza: _Stanza, has_key: bool, notes: list[str]) -> str:
    digest = stanza.get("hmac")
    if not has_key:
        if digest is not None:
            notes.append(
                f"{stanza.where}: HMAC_DIGEST_TYPE (line {digest.line}) without an HMAC key is "
                "ignored, as fwknopd ignores it"
            )
        notes.append(
            f'{stanza.where}: has no HMAC key: written as hmac = "none" (packets without HMAC; '
            "fwknopd can be replayed this way, and `guardian check` warns); add an HMAC key "
            "with `guardian keygen` and the clients' --use-hmac"
        )
        return SPA_NO_HMAC
    return digest.text.strip().lower() if digest is not None else "sha256"


def _username(stanza: _Stanza, notes: list[str]) -> tuple[bool, str | None]:
    """(usable, REQUIRE_USERNAME); not usable when no client could ever send that name (the
    stanza is then skipped, with a note)."""
    value = stanza.get("username")
    if value is None:
        return True, None
    name = value.text.strip()
    if not 0 < len(name) <= MAX_SPA_USERNAME or not name.isprintable():
        notes.append(
            f"{stanza.where}: not converted: REQUIRE_USERNAME (line {value.line}) is not 1 to "
            f"{MAX_SPA_USERNAME} printable characters, so no fwknop client can send it"
        )
        return False, None
    return True, name


def _timeouts(stanza: _Stanza, notes: list[str]) -> tuple[int, int]:
    """FW_ACCESS_TIMEOUT and MAX_FW_TIMEOUT; 0 means fwknopd's default, and a timeout beyond
    the cap is cut to it (fwknopd honours MAX_FW_TIMEOUT too)."""
    access_value, max_value = stanza.get("access_timeout"), stanza.get("max_timeout")
    access = _strtol(access_value.text) if access_value else 0
    cap = _strtol(max_value.text) if max_value else 0
    for value, number in ((access_value, access), (max_value, cap)):
        note = None if value is None else _number_note(stanza, value, number)
        if note:
            notes.append(note)
    access = access or int(DEFAULT_SPA_ACCESS_TIMEOUT)
    cap = cap or int(DEFAULT_SPA_MAX_TIMEOUT)
    if access > cap:
        notes.append(
            f"{stanza.where}: FW_ACCESS_TIMEOUT {access} is above MAX_FW_TIMEOUT {cap}: "
            f"access_timeout = {cap}s, as fwknopd honoured the cap"
        )
        access = cap
    return access, cap


def _yes(value: _Value | None) -> bool:
    """fwknopd's booleans: a value starting with Y or y."""
    return value is not None and value.text.strip()[:1].upper() == "Y"


def _open_ports(stanza: _Stanza, notes: list[str]) -> list[tuple[str, int]] | None:
    value = stanza.get("open_ports")
    if value is None:
        return None
    kept: list[tuple[str, int]] = []
    for proto, port in _accesses(value.text) or []:
        if proto == "tcp" and port > 0:
            kept.append((proto, port))
            continue
        why = "port 0 is no port" if port == 0 else "ssh-guardian guards TCP ports only"
        notes.append(
            f"{stanza.where}: OPEN_PORTS {proto}/{port} (line {value.line}) not carried over: {why}"
        )
    return kept


def _restrict_ports(stanza: _Stanza, notes: list[str]) -> list[tuple[str, int]]:
    value = stanza.get("restrict_ports")
    if value is None:
        return []
    kept = [access for access in _accesses(value.text) or [] if access[1] > 0]
    if len(kept) < len(_accesses(value.text) or []):
        notes.append(
            f"{stanza.where}: RESTRICT_PORTS (line {value.line}): port 0 left out, it is no port"
        )
    return kept


def _expires(stanza: _Stanza, notes: list[str]) -> float | None:
    value = stanza.get("expires")
    if value is None:
        return None
    text = value.text.strip()
    if value.key == "ACCESS_EXPIRE_EPOCH":
        epoch = _strtol(text)
        note = _number_note(stanza, value, epoch)
        if note:
            notes.append(note)
        if epoch <= 0:
            return None  # fwknopd: 0 is "no expiry"
        if epoch > MAX_EXPIRE_EPOCH:
            notes.append(
                f"{stanza.where}: ACCESS_EXPIRE_EPOCH {epoch} (line {value.line}) is after the "
                "year 9999: the stanza does not expire"
            )
            return None
        return float(epoch)
    day = _fwknop_date(text)
    if day is None:  # _check refused it already; kept for the type checker
        return None
    match = re.match(r"^(\d{1,2})/(\d{1,2})/(\d{1,4})", text)
    if match and (int(match.group(1)), int(match.group(2))) != (day.month, day.day):
        notes.append(
            f"{stanza.where}: ACCESS_EXPIRE {text} (line {value.line}) is no calendar date: "
            f"fwknopd reads it as {day.isoformat()}, and so does this import"
        )
    # fwknopd stops at the START of that day (mktime: local midnight); ours is valid through the
    # day before, until the next 00:00 UTC.
    through = day - datetime.timedelta(days=1)
    start = float(calendar.timegm(day.timetuple()))
    notes.append(
        f"{stanza.where}: ACCESS_EXPIRE {text} (line {value.line}): fwknopd stopped at the start "
        f"of that day, local time; expires = {toml_string(through.isoformat())} keeps it valid "
        "through the day before, until 00:00 UTC"
    )
    return start


def _unique_name(stanza: _Stanza, taken: set[str]) -> str:
    """REQUIRE_USERNAME when it makes a valid, unused name (the name `guardian knock --spa
    --stanza` takes), else "stanza-N" after fwknopd's stanza number."""
    username = stanza.get("username")
    candidates = [f"stanza-{stanza.number}"]
    if username is not None and _NAME.match(username.text.strip()):
        candidates.insert(0, username.text.strip())
    for candidate in candidates:
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    number = 2
    while f"{candidates[-1]}-{number}" in taken:
        number += 1
    taken.add(f"{candidates[-1]}-{number}")
    return f"{candidates[-1]}-{number}"


def _guarded_ports(converted: list[_Converted], notes: list[str]) -> tuple[int, ...]:
    """The TCP ports of every OPEN_PORTS, in file order: what fwknop protected; a stanza without
    OPEN_PORTS (fwknopd honoured any request) gets all of them."""
    ports: list[int] = []
    for item in converted:
        ports.extend(p for _, p in item.open_ports or [] if p not in ports)
    guarded = tuple(ports) or DEFAULT_PORTS
    for item in list(converted):
        if item.open_ports is None:
            item.open_ports = [("tcp", port) for port in guarded]
            notes.append(
                f"{item.stanza.where}: no OPEN_PORTS: fwknopd honoured any requested port; "
                f"open_ports = the guarded ports ({', '.join(map(str, guarded))})"
            )
        elif not item.open_ports:
            notes.append(f"{item.stanza.where}: not converted: OPEN_PORTS has no TCP port left")
            converted.remove(item)
    return guarded


def _general_notes(converted: list[_Converted], ports: tuple[int, ...], notes: list[str]) -> None:
    notes.append(
        "fwknopd.conf is not read: if it changed the SPA port (PCAP_FILTER / UDPSERV_PORT, "
        f"{DEFAULT_SPA_PORT}) or MAX_SPA_PACKET_AGE ({int(DEFAULT_SPA_MAX_AGE)}), set spa.port "
        "or spa.max_age"
    )
    if not converted:
        notes.append(
            "no stanza was converted: SPA stays off; only guard.trusted networks (empty for "
            "now) will reach the guarded ports; add a [[spa.stanza]], a [[door]] or trusted "
            "networks before running"
        )
        return
    notes.append(
        "the TOML holds the keys inline: save it with mode 0600 (e.g. `umask 077` first), or "
        "guardian refuses to load it; better, move each key into its own 0600 file "
        "(key_base64_file, hmac_key_base64_file)"
    )
    notes.append(
        "FW_ACCESS_TIMEOUT became access_timeout: the time for a first connection; sessions "
        "that started go on, and access closes after the last one ends (fwknopd removed its "
        "rule after the timeout)"
    )
    if len(ports) > 1:
        notes.append(
            f"every SPA grant opens all guarded ports ({', '.join(map(str, ports))}) together; "
            "a packet must still ask only for ports its stanza's open_ports lists"
        )


# ---------------------------------------------------------------------------------------------
# Output


def _render(path: str, ports: tuple[int, ...], converted: list[_Converted]) -> str:
    lines = [
        f"# Converted from {path} by `guardian import fwknop`.",
        "# Its notes (on stderr) list everything that was not carried over: read them.",
    ]
    if converted:
        lines.append(
            "# SECRET KEYS INSIDE: keep this file mode 0600, owned by root (guardian refuses to "
            "load it otherwise)."
        )
    lines += [
        "",
        "[guard]",
        f"ports = [{', '.join(map(str, ports))}]",
        "# fwknop had no trusted networks: add yours (e.g. your LAN) so you cannot be locked out",
        "trusted = []",
        "",
        "[spa]",
        f"port = {DEFAULT_SPA_PORT}  # fwknopd's default; fwknopd.conf was not read",
        f"max_age = {toml_string(format_duration(DEFAULT_SPA_MAX_AGE))}",
    ]
    for item in converted:
        lines += [
            "",
            f"# from {item.stanza.where}",
            "[[spa.stanza]]",
            f"name = {toml_string(item.name)}",
            "source = [" + ", ".join(toml_string(s) for s in item.source) + "]",
            "# secret: an inline key, so this file must stay 0600",
            f"{item.key[0]} = {item.key[1]}",
        ]
        if item.hmac_key is not None:
            lines.append(f"{item.hmac_key[0]} = {item.hmac_key[1]}")
        lines += [
            f"hmac = {toml_string(item.hmac)}",
            f"encryption_mode = {toml_string(item.mode)}",
            f"open_ports = {_access_list(item.open_ports or [])}",
            f"restrict_ports = {_access_list(item.restrict_ports)}",
            f"access_timeout = {toml_string(f'{item.access_timeout}s')}",
            f"max_timeout = {toml_string(f'{item.max_timeout}s')}",
            f"require_source_address = {'true' if item.require_source else 'false'}",
        ]
        if item.username is not None:
            lines.append(f"require_username = {toml_string(item.username)}")
        if item.expires is not None:
            lines.append(f"expires = {render_expires(item.expires)}")
    return "\n".join(lines) + "\n"


def _access_list(accesses: list[tuple[str, int]]) -> str:
    return "[" + ", ".join(toml_string(f"{proto}/{port}") for proto, port in accesses) + "]"
