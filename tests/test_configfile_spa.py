# Tests of the [spa] section in guardian/configfile.py: TOML -> Spa/SpaStanza (keys inline or
# from 0600 root files), errors naming file:line: key, the SPA port against the doors' ports, the
# config file's own mode when it carries keys, and render_config round trips that never write a
# key that came from a file. Pure except for the tmp_path key files (chown needs root; without
# root the ownership test fakes the reading user instead).
from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from guardian.config import (
    DEFAULT_SPA_ACCESS_TIMEOUT,
    DEFAULT_SPA_HMAC,
    DEFAULT_SPA_MAX_AGE,
    DEFAULT_SPA_MAX_TIMEOUT,
    DEFAULT_SPA_PORT,
    KnockStep,
    Spa,
    SpaStanza,
)
from guardian.configfile import (
    ConfigError,
    SpaKeySource,
    decode_base64_key,
    load_config,
    parse_config,
    read_secret_file,
    render_config,
    render_expires,
    spa_key_origin,
    spa_key_sources,
)

# The spec's throwaway test-vector keys (a real `fwknop --key-gen` pair).
KEY_B64 = "Etvos/HBZ1AzjavjxfcCpbiKyDu0ShEHQQKwxI3BJ6g="
HMAC_B64 = (
    "jGtH+on60Qq6Ryl5DeUNXZr6TeWkw0Im/Afs0f1mVIIi2KisY5liI0ghkxLHspl7q87FR8s6LzsSiHl+C+L7FQ=="
)
KEY = base64.b64decode(KEY_B64)
HMAC_KEY = base64.b64decode(HMAC_B64)
INLINE = f'key_base64 = "{KEY_B64}"\nhmac_key_base64 = "{HMAC_B64}"\n'

# The issue's example, verbatim (its key files are served by a fake reader below).
ISSUE = """\
[spa]
port = 62201
max_age = "120s"
[[spa.stanza]]
source = ["ANY"]
key_base64_file = "/etc/guardian/spa/alice.key"      # 0600 or refused; inline keys allowed too
hmac_key_base64_file = "/etc/guardian/spa/alice.hmac"
hmac = "sha256"
open_ports = ["tcp/22"]
access_timeout = "30s"
max_timeout = "300s"
require_source_address = true
require_username = "alice"
expires = "2027-12-31"
"""
ISSUE_FILES = {
    "/etc/guardian/spa/alice.key": (KEY_B64 + "\n").encode(),
    "/etc/guardian/spa/alice.hmac": (HMAC_B64 + "\n").encode(),
}


def fake_reader(files: dict[str, bytes]) -> Callable[[str], bytes]:
    def read(path: str) -> bytes:
        return files[path]

    return read


def stanza_text(body: str, header: str = "") -> str:
    return f"{header}[[spa.stanza]]\n{body}"


def parse(text: str) -> tuple[SpaStanza, ...]:
    return parse_config(text, "g.toml").spa.stanzas


def secret_file(directory: Path, name: str, content: bytes, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


def utc(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=datetime.UTC).timestamp()


# -- the issue's example and the defaults -------------------------------------------------------


def test_issue_example() -> None:
    spa = parse_config(ISSUE, "g.toml", read_secret=fake_reader(ISSUE_FILES)).spa
    assert (spa.port, spa.max_age, spa.enabled) == (62201, 120.0, True)
    (stanza,) = spa.stanzas
    assert stanza.name == "stanza-1"
    assert (stanza.key, stanza.hmac_key, stanza.hmac) == (KEY, HMAC_KEY, "sha256")
    assert stanza.source == () and stanza.legacy is False
    assert stanza.open_ports == (("tcp", 22),) and stanza.restrict_ports == ()
    assert (stanza.access_timeout, stanza.max_timeout) == (30.0, 300.0)
    assert stanza.require_source_address is True
    assert stanza.require_username == "alice"
    # valid THROUGH 2027-12-31 (UTC): expires at the next day's first instant
    assert stanza.expires == utc(2028, 1, 1)
    assert spa_key_sources(stanza) == (
        SpaKeySource("key_base64_file", "/etc/guardian/spa/alice.key"),
        SpaKeySource("hmac_key_base64_file", "/etc/guardian/spa/alice.hmac"),
    )


def test_no_spa_section_is_spa_off_with_defaults() -> None:
    spa = parse_config("", "g.toml").spa
    assert spa == Spa() and not spa.enabled
    assert (spa.port, spa.max_age) == (DEFAULT_SPA_PORT, DEFAULT_SPA_MAX_AGE)
    assert parse_config("[spa]\nport = 4000\n", "g").spa == Spa(port=4000)


def test_stanza_defaults_come_from_the_config_module() -> None:
    (stanza,) = parse(stanza_text(INLINE))
    assert stanza == SpaStanza(
        name="stanza-1",
        key=KEY,
        hmac_key=HMAC_KEY,
        hmac=DEFAULT_SPA_HMAC,
        access_timeout=DEFAULT_SPA_ACCESS_TIMEOUT,
        max_timeout=DEFAULT_SPA_MAX_TIMEOUT,
        key_origin="inline",
    )
    assert stanza.require_source_address is False and stanza.expires is None


def test_names_default_to_their_position_and_keep_file_order() -> None:
    text = stanza_text(INLINE) + stanza_text('name = "bob"\n' + INLINE) + stanza_text(INLINE)
    assert [s.name for s in parse(text)] == ["stanza-1", "bob", "stanza-3"]


def test_every_key_form_and_option() -> None:
    text = stanza_text(
        'name = "ops"\n'
        'source = "192.0.2.0/24, 2001:db8::/32,::ffff:198.51.100.0/120"\n'
        'key = "correct horse"\n'
        'hmac_key = "battery staple"\n'
        'hmac = "SHA3-512"\n'
        'encryption_mode = "LEGACY"\n'
        'open_ports = ["tcp/22", "2222/TCP", "udp/53"]\n'
        'restrict_ports = "udp/53"\n'
        "access_timeout = 45\n"
        'max_timeout = "10m"\n'
        "expires = 2027-06-01T12:30:00+02:00\n"
    )
    (stanza,) = parse(text)
    assert [str(n) for n in stanza.source] == ["192.0.2.0/24", "2001:db8::/32", "198.51.100.0/24"]
    assert (stanza.key, stanza.hmac_key) == (b"correct horse", b"battery staple")
    assert (stanza.hmac, stanza.legacy) == ("sha3_512", True)
    assert stanza.open_ports == (("tcp", 22), ("tcp", 2222), ("udp", 53))
    assert stanza.restrict_ports == (("udp", 53),)
    assert (stanza.access_timeout, stanza.max_timeout) == (45.0, 600.0)
    assert stanza.expires == utc(2027, 6, 1, 10, 30)
    assert spa_key_sources(stanza) == (SpaKeySource("key"), SpaKeySource("hmac_key"))


def test_hmac_none_must_be_explicit_and_then_takes_no_key() -> None:
    (stanza,) = parse(stanza_text(f'key_base64 = "{KEY_B64}"\nhmac = "none"\n'))
    assert (stanza.hmac, stanza.hmac_key) == ("none", None)
    assert spa_key_sources(stanza) == (SpaKeySource("key_base64"), None)


def test_base64_keys_may_leave_out_the_padding() -> None:
    text = stanza_text(f'key_base64 = "{KEY_B64.rstrip("=")}"\nhmac_key_base64 = "{HMAC_B64}"\n')
    assert parse(text)[0].key == KEY
    assert decode_base64_key(" QUJD ") == b"ABC"
    for bad in ("QUJD\nQUJD", "QU JD", "QUJD===", "Q", "QUJ-", ""):
        with pytest.raises(ValueError):
            decode_base64_key(bad)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ('"2027-12-31"', (2028, 1, 1)),
        ("2027-12-31", (2028, 1, 1)),  # a TOML date
        ('"2028-02-29"', (2028, 3, 1)),
        ('"2027-12-31T18:00:00Z"', (2027, 12, 31, 18)),
        ('"2027-12-31T20:00:00+02:00"', (2027, 12, 31, 18)),
        ("2027-12-31T18:00:00Z", (2027, 12, 31, 18)),  # a TOML offset date-time
        ('"2027-12-31T18:00:00.250Z"', (2027, 12, 31, 18, 0, 0, 250000)),
        ('"9999-12-31"', None),  # the last day a date can name: expires at year 10000
    ],
)
def test_expires_forms(when: str, expected: tuple[int, ...] | None) -> None:
    config = parse_config(stanza_text(INLINE + f"expires = {when}\n"), "g.toml")
    (stanza,) = config.spa.stanzas
    if expected is not None:
        assert stanza.expires == utc(*expected)
    else:
        assert stanza.expires == float((datetime.date(9999, 12, 31).toordinal() - 719162) * 86400)
    assert parse_config(render_config(config), "g.toml") == config


def test_render_expires_writes_days_as_dates_and_instants_in_utc() -> None:
    assert render_expires(utc(2028, 1, 1)) == '"2027-12-31"'
    assert render_expires(utc(2027, 12, 31, 18)) == '"2027-12-31T18:00:00Z"'
    assert render_expires(1830000000.0) == '"2027-12-28T13:20:00Z"'


# -- errors: file:line: key: reason -------------------------------------------------------------

KEY2 = f'key_base64 = "{KEY_B64}"\n'  # line 2 of a one-stanza text
HMAC3 = f'hmac_key_base64 = "{HMAC_B64}"\n'  # line 3


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        (stanza_text(HMAC3), 1, "spa.stanza[1]", "needs a key: one of key_base64_file"),
        (stanza_text(KEY2 + 'key = "pw"\n' + HMAC3), 3, "spa.stanza[1].key", "not both"),
        (stanza_text('key_base64 = "no!"\n' + HMAC3), 2, "spa.stanza[1].key_base64", "not base64"),
        (
            stanza_text(f'key_base64 = "{base64.b64encode(bytes(33)).decode()}"\n' + HMAC3),
            2,
            "spa.stanza[1].key_base64",
            "the key is 33 bytes; fwknop allows 1 to 32",
        ),
        (stanza_text(f'key = "{"x" * 33}"\n' + HMAC3), 2, "spa.stanza[1].key", "33 bytes"),
        (stanza_text('key = ""\n' + HMAC3), 2, "spa.stanza[1].key", "non-empty string"),
        (stanza_text(KEY2), 1, "spa.stanza[1]", "needs an HMAC key"),
        (stanza_text(KEY2 + HMAC3 + 'hmac = "none"\n'), 3, "spa.stanza[1].hmac_key_base64", ""),
        (stanza_text(KEY2 + HMAC3 + 'hmac = "sha224"\n'), 4, "spa.stanza[1].hmac", "one of md5"),
        (
            stanza_text(KEY2 + f'hmac_key_base64 = "{KEY_B64}"\n'),
            3,
            "spa.stanza[1].hmac_key_base64",
            "equals the encryption key",
        ),
        (
            stanza_text(KEY2 + f'hmac_key = "{"h" * 137}"\n'),
            3,
            "spa.stanza[1].hmac_key",
            "137 bytes; fwknop allows 1 to 136",
        ),
        (
            stanza_text(KEY2 + HMAC3 + 'encryption_mode = "ctr"\n'),
            4,
            "spa.stanza[1].encryption_mode",
            '"cbc" or "legacy"',
        ),
        (stanza_text(KEY2 + HMAC3 + 'open_ports = ["tcp22"]\n'), 4, "", '"tcp/PORT"'),
        (stanza_text(KEY2 + HMAC3 + 'open_ports = [\n "tcp/22",\n "sctp/9"]\n'), 6, "", "sctp"),
        (stanza_text(KEY2 + HMAC3 + 'open_ports = ["tcp/0"]\n'), 4, "", "out of range"),
        (stanza_text(KEY2 + HMAC3 + 'open_ports = ["tcp/22", "22/tcp"]\n'), 4, "", "repeats"),
        (stanza_text(KEY2 + HMAC3 + "open_ports = []\n"), 4, "", "at least one"),
        (stanza_text(KEY2 + HMAC3 + "restrict_ports = 22\n"), 4, "", 'like ["tcp/22"]'),
        (stanza_text(KEY2 + HMAC3 + 'source = ["ANY", "192.0.2.1"]\n'), 4, "", "write it alone"),
        (stanza_text(KEY2 + HMAC3 + 'source = ["192.0.2.300"]\n'), 4, "", "not an IPv4/IPv6"),
        (stanza_text(KEY2 + HMAC3 + 'source = "10.0.0.0/8,10.0.0.0/8"\n'), 4, "", "repeats"),
        (stanza_text(KEY2 + HMAC3 + "source = []\n"), 4, "", 'like ["ANY"]'),
        (
            stanza_text(KEY2 + HMAC3 + 'access_timeout = "10m"\n'),
            4,
            "spa.stanza[1].access_timeout",
            "longer than max_timeout (5m)",
        ),
        (
            stanza_text(KEY2 + HMAC3 + 'max_timeout = "10s"\n'),
            4,
            "spa.stanza[1].max_timeout",
            "longer than max_timeout",
        ),
        (stanza_text(KEY2 + HMAC3 + 'access_timeout = "0s"\n'), 4, "", "longer than 0"),
        (stanza_text(KEY2 + HMAC3 + 'require_source_address = "Y"\n'), 4, "", "true or false"),
        (stanza_text(KEY2 + HMAC3 + f'require_username = "{"u" * 65}"\n'), 4, "", "1 to 64"),
        (stanza_text(KEY2 + HMAC3 + 'expires = "2027-13-01"\n'), 4, "", 'a date "YYYY-MM-DD"'),
        (stanza_text(KEY2 + HMAC3 + 'expires = "next week"\n'), 4, "", "valid through that day"),
        (stanza_text(KEY2 + HMAC3 + "expires = 2027-12-31T10:00:00\n"), 4, "", "UTC offset"),
        (stanza_text(KEY2 + HMAC3 + 'expires = "2027-12-31T10:00:00"\n'), 4, "", "UTC offset"),
        (stanza_text(KEY2 + HMAC3 + "expires = 1830000000\n"), 4, "", "got an integer"),
        (stanza_text(KEY2 + HMAC3 + "keys = 1\n"), 4, "spa.stanza[1].keys", "unknown key"),
        (stanza_text(KEY2 + HMAC3 + 'name = "a b"\n'), 4, "spa.stanza[1].name", "letters"),
        (
            stanza_text('key_file = "relative.key"\n' + HMAC3),
            2,
            "spa.stanza[1].key_file",
            "an absolute path",
        ),
        ("[spa]\nport = 0\n", 2, "spa.port", "out of range"),
        ("[spa]\nmax_age = true\n", 2, "spa.max_age", "a duration"),
        ("[spa]\nstanzas = []\n", 2, "spa.stanzas", "unknown key (known: port, max_age, stanza)"),
        ('[spa.stanza]\nkey = "k"\n', 1, "spa.stanza", "write [[spa.stanza]]"),
        ("spa = 1\n", 1, "spa", "expected a table [spa]"),
    ],
)
def test_errors_name_line_and_key(text: str, line: int, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "g.toml")
    error = caught.value
    assert error.line == line, str(error)
    if key:
        assert error.key == key, str(error)
    assert reason in error.reason
    assert str(error).startswith(f"g.toml:{line}: {error.key}: ")


def test_errors_count_stanzas_from_one() -> None:
    text = stanza_text(INLINE) + stanza_text(INLINE + 'open_ports = ["tcp/x"]\n')
    with pytest.raises(ConfigError, match=r"^g:7: spa\.stanza\[2\]\.open_ports: ") as caught:
        parse_config(text, "g")
    assert caught.value.key == "spa.stanza[2].open_ports"


def test_stanza_names_are_unique_even_against_the_default_names() -> None:
    text = stanza_text('name = "stanza-2"\n' + INLINE) + stanza_text(INLINE)
    with pytest.raises(ConfigError, match="already named 'stanza-2'") as caught:
        parse_config(text, "g")
    assert (caught.value.line, caught.value.key) == (5, "spa.stanza[2].name")


# -- the SPA port against the doors --------------------------------------------------------------

DOOR = '[[door]]\nname = "d"\nsequence = ["7000/udp", "8000/tcp", "62201/udp"]\n'


def test_spa_port_may_not_be_a_knock_port_while_spa_is_on() -> None:
    with pytest.raises(ConfigError, match=r"62201/udp is the SPA port") as caught:
        parse_config(DOOR + stanza_text(INLINE), "g")
    assert (caught.value.line, caught.value.key) == (3, "door[1].sequence")
    # SPA off (no stanza): nothing listens there, the door may use the port
    assert parse_config(DOOR + "[spa]\nport = 62201\n", "g").doors[0].sequence[2].port == 62201
    # another SPA port: fine
    assert parse_config(DOOR + "[spa]\nport = 62202\n" + stanza_text(INLINE), "g").spa.enabled


def test_spa_port_may_not_be_a_close_port_or_a_single_decoy() -> None:
    close = '[[door]]\nname = "d"\nsequence = ["7000", "8000", "9000"]\nclose = ["4000/udp"]\n'
    with pytest.raises(ConfigError, match=r"door\[1\]\.close: 4000/udp is the SPA port"):
        parse_config(close + "[spa]\nport = 4000\n" + stanza_text(INLINE), "g")
    decoy = '[[door]]\nname = "d"\nsequence = ["7000", "8000", "9000"]\ndecoys = ["4000/udp"]\n'
    with pytest.raises(ConfigError, match=r"door\[1\]\.decoys: 4000/udp is the SPA port"):
        parse_config(decoy + "[spa]\nport = 4000\n" + stanza_text(INLINE), "g")


def test_decoy_bands_and_ranges_leave_the_spa_port_out() -> None:
    door = (
        '[[door]]\nname = "d"\nsequence = ["62200/udp", "7000", "8000"]\n'
        'decoys = ["4000-4010/udp"]\n'
    )
    spa_step = KnockStep(62201, "udp")
    off = parse_config(door, "g")
    assert spa_step in off.doors[0].decoys  # the band around 62200/udp covers it
    on = parse_config(door + stanza_text(INLINE), "g")
    assert spa_step not in on.doors[0].decoys
    assert set(off.doors[0].decoys) - set(on.doors[0].decoys) == {spa_step}
    moved = parse_config(door + "[spa]\nport = 4005\n" + stanza_text(INLINE), "g")
    assert KnockStep(4005, "udp") not in moved.doors[0].decoys
    assert KnockStep(4004, "udp") in moved.doors[0].decoys
    for config in (on, moved):
        assert parse_config(render_config(config), "g") == config


# -- key files -----------------------------------------------------------------------------------


def file_stanza(key: Path, hmac: Path, key_form: str = "key_base64_file") -> str:
    hmac_form = "hmac_" + key_form
    return stanza_text(f'{key_form} = "{key}"\n{hmac_form} = "{hmac}"\n')


def test_key_files_are_read_base64_stripped_and_raw_with_one_newline_dropped(
    tmp_path: Path,
) -> None:
    key = secret_file(tmp_path, "a.key", f"  {KEY_B64}\n\n".encode())
    hmac = secret_file(tmp_path, "a.hmac", HMAC_B64.encode(), mode=0o400)
    (stanza,) = parse(file_stanza(key, hmac))
    assert (stanza.key, stanza.hmac_key) == (KEY, HMAC_KEY)
    raw_key = secret_file(tmp_path, "raw.key", b"pass phrase \n\n")
    raw_hmac = secret_file(tmp_path, "raw.hmac", b"\x00\xffhmac")
    (stanza,) = parse(file_stanza(raw_key, raw_hmac, "key_file"))
    assert (stanza.key, stanza.hmac_key) == (b"pass phrase \n", b"\x00\xffhmac")
    assert spa_key_sources(stanza) == (
        SpaKeySource("key_file", str(raw_key)),
        SpaKeySource("hmac_key_file", str(raw_hmac)),
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700, 0o4600])
def test_key_files_readable_by_others_are_refused_naming_file_and_mode(
    tmp_path: Path, mode: int
) -> None:
    key = secret_file(tmp_path, "a.key", KEY_B64.encode(), mode=mode)
    hmac = secret_file(tmp_path, "a.hmac", HMAC_B64.encode())
    with pytest.raises(ConfigError) as caught:
        parse_config(file_stanza(key, hmac), "g.toml")
    error = caught.value
    assert (error.line, error.key) == (2, "spa.stanza[1].key_base64_file")
    assert f"{key} has mode {mode:04o}: secrets files must be 0600 or refused" in error.reason


def test_key_files_owned_by_another_user_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secret_file(tmp_path, "a.key", KEY_B64.encode())
    hmac = secret_file(tmp_path, "a.hmac", HMAC_B64.encode())
    if os.geteuid() == 0:
        os.chown(hmac, 65534, 65534)
    else:  # without root: pretend to be someone else reading our own file
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
        os.chmod(key, 0o600)
    with pytest.raises(ConfigError) as caught:
        parse_config(file_stanza(key, hmac), "g.toml")
    owner = hmac.stat().st_uid if os.geteuid() == 0 else key.stat().st_uid
    assert f"is owned by uid {owner}: secrets files must be owned by root" in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_key_files_of_the_reading_user_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `guardian knock --spa` run by a user reads that user's own 0600 key files
    key = secret_file(tmp_path, "a.key", KEY_B64.encode())
    os.chown(key, 65534, 65534)
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    assert read_secret_file(str(key)) == KEY_B64.encode()


def test_key_files_must_be_regular_files(tmp_path: Path) -> None:
    target = secret_file(tmp_path, "real.key", KEY_B64.encode())
    link = tmp_path / "link.key"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    big = secret_file(tmp_path, "big.key", b"A" * 5000)
    for path, reason in (
        (link, "is a symbolic link: secrets files must be regular files"),
        (fifo, "is not a regular file"),
        (directory, "is not a regular file"),
        (tmp_path / "missing.key", "cannot read"),
        (big, "larger than 4096 bytes"),
    ):
        with pytest.raises(ConfigError, match=reason):
            parse_config(file_stanza(path, target), "g.toml")


def test_a_key_gen_file_is_recognised_and_refused(tmp_path: Path) -> None:
    both = secret_file(
        tmp_path, "both", f"KEY_BASE64: {KEY_B64}\nHMAC_KEY_BASE64: {HMAC_B64}\n".encode()
    )
    with pytest.raises(ConfigError, match="not base64"):
        parse_config(file_stanza(both, both), "g.toml")
    one = secret_file(tmp_path, "one", f"KEY_BASE64: {KEY_B64}\n".encode())
    hmac = secret_file(tmp_path, "a.hmac", HMAC_B64.encode())
    with pytest.raises(ConfigError, match="fwknop --key-gen-file output"):
        parse_config(file_stanza(one, hmac), "g.toml")


def test_the_reader_can_be_injected() -> None:
    asked: list[str] = []

    def read(path: str) -> bytes:
        asked.append(path)
        return ISSUE_FILES[path]

    parse_config(ISSUE, "g.toml", read_secret=read)
    assert asked == list(ISSUE_FILES)


# -- the config file's own mode when it holds keys ---------------------------------------------


def test_config_with_inline_keys_must_be_0600(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[guard]\nports = [22]\n" + stanza_text(INLINE))
    for mode in (0o644, 0o640, 0o660):
        path.chmod(mode)
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        error = caught.value
        assert (error.path, error.line, error.key) == (str(path), 4, "spa.stanza[1].key_base64")
        assert f"this file has mode {mode:04o} and holds an inline key" in error.reason
        assert "secrets files must be 0600 or refused" in error.reason
    for mode in (0o600, 0o400):
        path.chmod(mode)
        assert load_config(str(path)).spa.stanzas[0].key == KEY


def test_config_with_only_key_files_may_be_readable(tmp_path: Path) -> None:
    key = secret_file(tmp_path, "a.key", KEY_B64.encode())
    hmac = secret_file(tmp_path, "a.hmac", HMAC_B64.encode())
    path = tmp_path / "g.toml"
    path.write_text(file_stanza(key, hmac))
    path.chmod(0o644)
    assert load_config(str(path)).spa.stanzas[0].hmac_key == HMAC_KEY
    # one inline key is enough to need 0600
    path.write_text(stanza_text(f'key_base64_file = "{key}"\nhmac_key = "h"\n'))
    with pytest.raises(ConfigError, match=r"g.toml:3: spa.stanza\[1\].hmac_key: .* mode 0644"):
        load_config(str(path))


# -- rendering ------------------------------------------------------------------------------------


def test_render_writes_key_files_never_their_content(tmp_path: Path) -> None:
    key = secret_file(tmp_path, "a.key", KEY_B64.encode())
    hmac = secret_file(tmp_path, "a.hmac", HMAC_B64.encode())
    raw = secret_file(tmp_path, "raw.key", b"passphrase")
    text = file_stanza(key, hmac) + stanza_text(
        f'name = "p"\nkey_file = "{raw}"\nhmac_key_base64_file = "{hmac}"\n'
    )
    config = parse_config(text, "g.toml")
    rendered = render_config(config)
    assert f'key_base64_file = "{key}"' in rendered
    assert f'hmac_key_base64_file = "{hmac}"' in rendered
    assert f'key_file = "{raw}"' in rendered
    for secret in (KEY_B64, HMAC_B64, "passphrase", KEY_B64.rstrip("=")):
        assert secret not in rendered
    assert parse_config(rendered, "g.toml") == config


def test_render_writes_inline_keys_inline_in_their_form() -> None:
    text = (
        stanza_text(INLINE)
        + stanza_text('key = "pass \\"phrase\\""\nhmac_key = "mac"\n')
        + stanza_text(f'key_base64 = "{KEY_B64}"\nhmac = "none"\n')
    )
    config = parse_config(text, "g.toml")
    rendered = render_config(config)
    assert f'key_base64 = "{KEY_B64}"' in rendered
    assert f'hmac_key_base64 = "{HMAC_B64}"' in rendered
    assert 'key = "pass \\"phrase\\""' in rendered and 'hmac_key = "mac"' in rendered
    assert 'hmac = "none"' in rendered
    assert rendered.count("hmac_key") == 2  # the no-HMAC stanza has none
    assert parse_config(rendered, "g.toml") == config


def test_render_round_trips_every_option(tmp_path: Path) -> None:
    key = secret_file(tmp_path, "a.key", KEY_B64.encode())
    text = (
        '[guard]\nports = [22, 2222]\n[spa]\nport = 5000\nmax_age = "90s"\n'
        + stanza_text(
            'name = "ops"\nsource = ["192.0.2.0/24", "2001:db8::/48"]\n'
            f'key_base64_file = "{key}"\nhmac_key = "mac"\nhmac = "md5"\n'
            'encryption_mode = "legacy"\nopen_ports = ["tcp/22", "tcp/2222"]\n'
            'restrict_ports = ["udp/53"]\naccess_timeout = "1.5s"\nmax_timeout = "1h"\n'
            'require_source_address = true\nrequire_username = "al \\"ice\\""\n'
            'expires = "2030-01-02T03:04:05Z"\n'
        )
        + stanza_text(INLINE)
    )
    config = parse_config(text, "g.toml")
    rendered = render_config(config)
    assert parse_config(rendered, "g.toml") == config
    assert "[spa]\nport = 5000\nmax_age = " in rendered
    assert 'expires = "2030-01-02T03:04:05Z"' in rendered
    # and a config without [spa] renders the defaults, which read back the same
    plain = parse_config("", "g")
    assert parse_config(render_config(plain), "g") == plain


def test_key_origin_round_trips_odd_paths() -> None:
    odd = '/etc/guardian/spa/a "b", c\\d.key'
    sources = (SpaKeySource("key_file", odd), SpaKeySource("hmac_key_base64"))
    origin = spa_key_origin(*sources)
    assert origin.startswith("key_file ")
    stanza = SpaStanza("s", b"k", b"h", key_origin=origin)
    assert spa_key_sources(stanza) == sources
    assert spa_key_origin(SpaKeySource("key_base64"), None) == "inline"
    assert spa_key_origin(SpaKeySource("key_base64"), SpaKeySource("hmac_key_base64")) == "inline"
    # an origin it does not understand reads as inline base64 keys
    for strange in ("file:/etc/k", "key_file", 'key "x"', "inline"):
        found = spa_key_sources(SpaStanza("s", b"k", b"h", key_origin=strange))
        assert found == (SpaKeySource("key_base64"), SpaKeySource("hmac_key_base64")), strange
