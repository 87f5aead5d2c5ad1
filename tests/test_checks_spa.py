# Tests of the SPA warnings of guardian/checks.py (spa_warnings, and config_warnings and
# lockout_warnings where [[spa.stanza]] changes them), from configs parsed the way `guardian
# check` parses them; one run of the real `guardian check` at the end.
from __future__ import annotations

import base64
import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from guardian.checks import config_warnings, lockout_warnings, spa_warnings
from guardian.config import Config
from guardian.configfile import parse_config

KEY_B64 = "Etvos/HBZ1AzjavjxfcCpbiKyDu0ShEHQQKwxI3BJ6g="  # 32 bytes
HMAC_B64 = (
    "jGtH+on60Qq6Ryl5DeUNXZr6TeWkw0Im/Afs0f1mVIIi2KisY5liI0ghkxLHspl7q87FR8s6LzsSiHl+C+L7FQ=="
)
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC).timestamp()
# A stanza with nothing to warn about: random keys, HMAC, CBC, an explicit address required.
GOOD = (
    '[[spa.stanza]]\nname = "alice"\n'
    f'key_base64 = "{KEY_B64}"\nhmac_key_base64 = "{HMAC_B64}"\n'
    "require_source_address = true\n"
)


def config(text: str) -> Config:
    return parse_config(text, "g.toml")


def warned(text: str, now: float = NOW) -> str:
    return "\n".join(spa_warnings(config(text), now))


def test_a_good_stanza_gets_no_warning() -> None:
    assert spa_warnings(config(GOOD), NOW) == []
    assert spa_warnings(config(GOOD + 'expires = "2026-06-01"\n'), NOW) == []
    assert spa_warnings(config(""), NOW) == []


def test_no_hmac_is_warned() -> None:
    text = GOOD.replace(f'hmac_key_base64 = "{HMAC_B64}"\n', 'hmac = "none"\n')
    (warning,) = spa_warnings(config(text), NOW)
    assert warning.startswith("spa stanza 'alice' has hmac = \"none\"")
    assert "bit-flipped copy" in warning and "`guardian keygen`" in warning


def test_legacy_mode_is_warned_and_with_an_hmac_that_fwknop_cannot_send_it() -> None:
    legacy, with_hmac = spa_warnings(config(GOOD + 'encryption_mode = "legacy"\n'), NOW)
    assert 'encryption_mode = "legacy"' in legacy
    assert "at most 16 bytes of it count" in legacy
    assert "the fwknop client refuses that" in with_hmac
    no_hmac = GOOD.replace(f'hmac_key_base64 = "{HMAC_B64}"\n', 'hmac = "none"\n')
    warnings = spa_warnings(config(no_hmac + 'encryption_mode = "legacy"\n'), NOW)
    assert not [w for w in warnings if "fwknop client refuses" in w]


@pytest.mark.parametrize("key", ['key = "hunter2"', 'key = "a much longer passphrase!!"'])
def test_passphrase_keys_are_warned_whatever_their_length(key: str) -> None:
    text = GOOD.replace(f'key_base64 = "{KEY_B64}"', key)
    (warning,) = spa_warnings(config(text), NOW)
    assert "uses a passphrase (key)" in warning
    assert "single MD5 round" in warning and "`guardian keygen`" in warning


def test_passphrase_from_a_key_file_is_warned(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"hunter2\n")
    path.chmod(0o600)
    text = GOOD.replace(f'key_base64 = "{KEY_B64}"', f'key_file = "{path}"')
    assert "uses a passphrase (key_file)" in warned(text)


def test_short_random_keys_are_warned() -> None:
    short = base64.b64encode(bytes(range(8))).decode()
    text = GOOD.replace(KEY_B64, short).replace(HMAC_B64, base64.b64encode(b"h" * 10).decode())
    warnings = spa_warnings(config(text), NOW)
    assert len(warnings) == 2
    assert "has a 8-byte key" in warnings[0]
    assert "has a 10-byte HMAC key" in warnings[1]


def test_any_source_without_required_address_is_warned() -> None:
    text = GOOD.replace("require_source_address = true\n", "")
    (warning,) = spa_warnings(config(text), NOW)
    assert "accepts packets from ANY source that ask for 0.0.0.0" in warning
    assert "delivers it first" in warning and "replay cache only stops a second use" in warning
    assert "rules out SPA over IPv6" in warning
    # a narrower source, or a required address: no warning
    assert warned(text + 'source = ["192.0.2.0/24"]\n') == ""
    assert warned(text + "require_source_address = true\n") == ""


def test_expired_stanzas_are_warned_from_the_expiry_on() -> None:
    text = GOOD + 'expires = "2026-05-31"\n'  # valid through May 31st: expires June 1st 00:00
    assert warned(text, NOW - 1) == ""
    assert "spa stanza 'alice' has expired (expires = \"2026-05-31\")" in warned(text, NOW)
    instant = GOOD + 'expires = "2026-06-01T12:00:00Z"\n'
    assert warned(instant, NOW) == ""
    assert 'expires = "2026-06-01T12:00:00Z"' in warned(instant, NOW + 12 * 3600)


def test_open_ports_that_are_not_guarded_tcp_ports_are_warned() -> None:
    text = GOOD + 'open_ports = ["tcp/22", "tcp/2222", "udp/53"]\n'
    warnings = spa_warnings(config(text), NOW)
    assert len(warnings) == 2
    assert "lists tcp/2222 in open_ports, but it is not a guarded TCP port" in warnings[0]
    assert "(guard.ports = [22])" in warnings[0] and "is refused" in warnings[0]
    assert "lists udp/53 in open_ports" in warnings[1]
    guarded = "[guard]\nports = [22, 2222]\n" + text
    assert [w for w in spa_warnings(config(guarded), NOW) if "lists tcp/2222" in w] == []


def test_every_stanza_is_checked_and_named() -> None:
    weak = GOOD.replace('"alice"', '"bob"') + 'encryption_mode = "legacy"\n'
    warnings = spa_warnings(config(GOOD + weak), NOW)
    assert len(warnings) == 2 and all("'bob'" in w for w in warnings)  # legacy, with an HMAC


def test_config_warnings_include_spa_and_read_the_clock_when_not_given_a_time() -> None:
    expired = config(GOOD + 'expires = "2001-01-01"\n')
    assert any("has expired" in w for w in config_warnings(expired))  # the real clock
    assert not any("has expired" in w for w in config_warnings(expired, now=0.0))
    assert any("has expired" in w for w in config_warnings(expired, now=NOW))


# -- lockout warnings with SPA ----------------------------------------------------------------

DOOR = '[[door]]\nname = "ssh"\nsequence = ["7000", "8000", "9000"]\n'


def test_spa_is_a_way_in_so_nobody_is_not_locked_out() -> None:
    assert "nobody can open" in "\n".join(lockout_warnings(config(""), None))
    assert lockout_warnings(config(GOOD), None) == []


def test_untrusted_operator_is_told_to_send_an_spa_packet() -> None:
    (warning,) = lockout_warnings(config(GOOD), "192.0.2.7 5 22")
    assert "to connect to port 22 again you must send an SPA packet first (stanza: alice)" in (
        warning
    )
    (both,) = lockout_warnings(config(DOOR + GOOD), "192.0.2.7 5 22")
    assert "must knock first (door: ssh) or send an SPA packet first (stanza: alice)" in both
    (door_only,) = lockout_warnings(config(DOOR), "192.0.2.7 5 22")
    assert "SPA" not in door_only


# -- through the real `guardian check` ----------------------------------------------------------


def test_guardian_check_prints_spa_warnings_and_no_key_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "a.key"
    key.write_text(KEY_B64 + "\n")
    key.chmod(0o600)
    path = tmp_path / "g.toml"
    path.write_text(
        f'[[spa.stanza]]\nname = "alice"\nkey_base64_file = "{key}"\nhmac = "none"\n'
        'encryption_mode = "legacy"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "guardian", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f'key_base64_file = "{key}"' in done.stdout
    assert KEY_B64 not in done.stdout and KEY_B64 not in done.stderr
    assert "warning: spa stanza 'alice' has hmac = \"none\"" in done.stderr
    assert "warning: spa stanza 'alice' has encryption_mode = \"legacy\"" in done.stderr
    assert "warning: spa stanza 'alice' accepts packets from ANY source" in done.stderr
    assert "nobody can open" not in done.stderr
