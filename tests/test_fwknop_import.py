# Tests of guardian/fwknop_import.py: access.conf -> ssh-guardian TOML and notes. The converted
# TOML is always loaded back through parse_config and compared field by field; fwknopd's own
# reading of the same samples (`fwknopd --dump-config`, Debian's fwknop-server 2.6.10) is the
# reference for what a value means and for which files fwknopd refuses.
from __future__ import annotations

import base64
import datetime
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guardian.config import SpaStanza
from guardian.configfile import ConfigError, load_config, parse_config, spa_key_sources
from guardian.fwknop_import import import_fwknop
from guardian.knockd_import import ImportResult

KEY_B64 = "Etvos/HBZ1AzjavjxfcCpbiKyDu0ShEHQQKwxI3BJ6g="
HMAC_B64 = (
    "jGtH+on60Qq6Ryl5DeUNXZr6TeWkw0Im/Afs0f1mVIIi2KisY5liI0ghkxLHspl7q87FR8s6LzsSiHl+C+L7FQ=="
)
KEY = base64.b64decode(KEY_B64)
HMAC_KEY = base64.b64decode(HMAC_B64)
KEYS = f"KEY_BASE64 {KEY_B64}\nHMAC_KEY_BASE64 {HMAC_B64}\n"
TWO_BLANKS = "  "  # kept in a KEY: fwknopd keeps trailing blanks
PACKAGED = Path("/etc/fwknop/access.conf")  # from Debian's fwknop-server
FWKNOPD = shutil.which("fwknopd")

# A sample in the styles fwknopd accepts: "KEY: value", tabs, ';' ending a value, a passphrase
# with blanks, every converted key, and the keys that are not carried over.
SAMPLE = f"""\
# an access.conf written by hand
KEY_BASE64 {KEY_B64}
SOURCE: ANY
KEY_BASE64:  {KEY_B64}
HMAC_KEY_BASE64\t{HMAC_B64}
OPEN_PORTS tcp/22, udp/53 ,tcp/2222
RESTRICT_PORTS udp/53
FW_ACCESS_TIMEOUT 600
MAX_FW_TIMEOUT 60
ACCESS_EXPIRE 12/31/2027
REQUIRE_USERNAME alice ; a comment after ';'
REQUIRE_SOURCE_ADDRESS Y
DESTINATION ANY
ENABLE_CMD_EXEC N
bogus_key 1

SOURCE 192.0.2.0/24, 10.0.0.0/255.0.0.0
KEY  pass phrase{TWO_BLANKS}
HMAC_KEY hmacsecret
HMAC_DIGEST_TYPE sha512
ENCRYPTION_MODE legacy
ACCESS_EXPIRE_EPOCH 1830000000
REQUIRE_SOURCE no

SOURCE 198.51.100.7
KEY_BASE64 {KEY_B64}
KEY other-passphrase
HMAC_DIGEST_TYPE md5
GPG_REMOTE_ID 1234ABCD

SOURCE ANY
GPG_DECRYPT_ID ABCD1234
GPG_DECRYPT_PW secret
GPG_REMOTE_ID 1234ABCD

SOURCE ANY
{KEYS}FORCE_NAT 192.168.1.2 22

SOURCE ANY
{KEYS}ENCRYPTION_MODE CTR
"""


def convert(text: str) -> tuple[ImportResult, tuple[SpaStanza, ...]]:
    result = import_fwknop(text, "access.conf")
    return result, parse_config(result.toml, "converted.toml").spa.stanzas


def notes_text(result: ImportResult) -> str:
    return "\n".join(result.notes)


# -- the packaged file -----------------------------------------------------------------------------


def packaged_text() -> str:
    if not PACKAGED.is_file():
        pytest.skip(f"{PACKAGED} is missing (Debian's fwknop-server is not installed)")
    if not os.access(PACKAGED, os.R_OK):
        pytest.skip(f"{PACKAGED} is root's and 0600: run as root to test against it")
    return PACKAGED.read_text()


def test_packaged_access_conf_is_refused_for_its_placeholder_keys() -> None:
    text = packaged_text()
    line = next(n for n, raw in enumerate(text.splitlines(), 1) if raw.startswith("KEY_BASE64"))
    with pytest.raises(ConfigError) as caught:
        import_fwknop(text, str(PACKAGED))
    error = caught.value
    assert (error.path, error.line, error.key) == (str(PACKAGED), line, "KEY_BASE64")
    assert "still the placeholder __CHANGEME__" in error.reason
    assert "guardian keygen" in error.reason


def test_packaged_access_conf_with_real_keys_converts() -> None:
    text = packaged_text()
    text = re.sub(r"(?m)^KEY_BASE64(\s+)__CHANGEME__", rf"KEY_BASE64\g<1>{KEY_B64}", text)
    text = re.sub(
        r"(?m)^HMAC_KEY_BASE64(\s+)__CHANGEME__", rf"HMAC_KEY_BASE64\g<1>{HMAC_B64}", text
    )
    result, (stanza,) = convert(text)
    assert (stanza.name, stanza.source, stanza.key, stanza.hmac_key) == (
        "stanza-1",
        (),
        KEY,
        HMAC_KEY,
    )
    assert (stanza.hmac, stanza.open_ports, stanza.access_timeout) == ("sha256", (("tcp", 22),), 30)
    assert "no OPEN_PORTS: fwknopd honoured any requested port" in notes_text(result)
    assert "GPG" not in notes_text(result)  # its GPG lines are comments


# -- a sample with every key ---------------------------------------------------------------------


def test_sample_converts_each_stanza() -> None:
    result, stanzas = convert(SAMPLE)
    alice, legacy, third = stanzas
    assert alice == SpaStanza(
        name="alice",
        key=KEY,
        hmac_key=HMAC_KEY,
        hmac="sha256",
        open_ports=(("tcp", 22), ("tcp", 2222)),
        restrict_ports=(("udp", 53),),
        access_timeout=60.0,
        max_timeout=60.0,
        require_source_address=True,
        require_username="alice",
        expires=datetime.datetime(2027, 12, 31, tzinfo=datetime.UTC).timestamp(),
        key_origin="inline",
    )
    assert [str(n) for n in legacy.source] == ["192.0.2.0/24", "10.0.0.0/8"]
    assert (legacy.name, legacy.key, legacy.hmac_key) == (
        "stanza-2",
        b"pass phrase  ",
        b"hmacsecret",
    )
    assert (legacy.hmac, legacy.legacy, legacy.require_source_address) == ("sha512", True, False)
    assert legacy.expires == 1830000000.0
    assert legacy.open_ports == (("tcp", 22), ("tcp", 2222))  # no OPEN_PORTS: the guarded ports
    assert [str(n) for n in third.source] == ["198.51.100.7/32"]
    assert (third.key, third.hmac, third.hmac_key) == (b"other-passphrase", "none", None)
    assert [source.form for source in spa_key_sources(third) if source] == ["key"]
    assert "ports = [22, 2222]" in result.toml


def test_sample_notes_name_every_key_not_carried_over_with_its_line() -> None:
    result, _ = convert(SAMPLE)
    notes = notes_text(result)
    for expected in (
        "line 2: KEY_BASE64 comes before the first SOURCE, outside any stanza",
        "stanza 1 (SOURCE at line 3): OPEN_PORTS udp/53 (line 6) not carried over: "
        "ssh-guardian guards TCP ports only",
        "stanza 1 (SOURCE at line 3): FW_ACCESS_TIMEOUT 600 is above MAX_FW_TIMEOUT 60",
        "ACCESS_EXPIRE 12/31/2027 (line 10): fwknopd stopped at the start of that day",
        'expires = "2027-12-30"',
        "DESTINATION ANY (line 13) not carried over: ssh-guardian accepts SPA packets sent to any",
        "ENABLE_CMD_EXEC (line 14) not carried over: ssh-guardian never runs commands",
        "bogus_key (line 15) not carried over: unknown key",
        "stanza 3 (SOURCE at line 25): KEY at line 27 replaces KEY_BASE64 at line 26",
        "stanza 3 (SOURCE at line 25): HMAC_DIGEST_TYPE (line 28) without an HMAC key is ignored",
        'stanza 3 (SOURCE at line 25): has no HMAC key: written as hmac = "none"',
        "GPG_REMOTE_ID (line 29) not carried over: ssh-guardian has no GnuPG mode",
        "stanza 4 (SOURCE at line 31): not converted: it uses GnuPG keys",
        "GPG_DECRYPT_PW (line 33) not carried over",
        "stanza 5 (SOURCE at line 36): not converted: FORCE_NAT (line 39) forwarded",
        "stanza 6 (SOURCE at line 41): not converted: ENCRYPTION_MODE CTR (line 44)",
        "no OPEN_PORTS: fwknopd honoured any requested port; open_ports = the guarded ports",
        "fwknopd.conf is not read",
        "the TOML holds the keys inline: save it with mode 0600",
        "every SPA grant opens all guarded ports (22, 2222) together",
    ):
        assert expected in notes, expected
    assert "DESTINATION" in notes and "REQUIRE_SOURCE no" not in notes


def test_output_says_it_holds_secrets_and_must_be_0600(tmp_path: Path) -> None:
    result, stanzas = convert(SAMPLE)
    assert "SECRET KEYS INSIDE: keep this file mode 0600" in result.toml.splitlines()[2]
    assert result.toml.count("# secret: an inline key, so this file must stay 0600") == 3
    path = tmp_path / "guardian.toml"
    path.write_text(result.toml)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644 and holds an inline key"):
        load_config(str(path))
    path.chmod(0o600)
    assert load_config(str(path)).spa.stanzas == stanzas


def test_keys_are_carried_byte_for_byte() -> None:
    raw = "pass\udcff\udcfe phrase"  # bytes ff fe, as errors="surrogateescape" decodes them
    text = f"SOURCE ANY\nKEY {raw}\nHMAC_KEY  spaced hmac \t\n"
    _, (stanza,) = convert(text)
    assert stanza.key == b"pass\xff\xfe phrase"
    assert stanza.hmac_key == b"spaced hmac \t"
    result, _ = convert(text)
    # not printable text: written as base64 (the same bytes)
    key_text = base64.b64encode(b"pass\xff\xfe phrase").decode()
    hmac_text = base64.b64encode(b"spaced hmac \t").decode()
    assert f'key_base64 = "{key_text}"' in result.toml
    assert f'hmac_key_base64 = "{hmac_text}"' in result.toml
    _, (printable,) = convert("SOURCE ANY\nKEY  two words \nHMAC_KEY x\n")
    assert printable.key == b"two words "
    assert 'key = "two words "' in import_fwknop("SOURCE ANY\nKEY two words \nHMAC_KEY x", "a").toml


def test_usernames_name_stanzas_when_they_can() -> None:
    text = "".join(
        f"SOURCE ANY\nKEY pw{n}\nHMAC_KEY hm{n}\nREQUIRE_USERNAME {user}\n"
        for n, user in enumerate(["bob", "bob", "x y", "stanza-5", "ok"])
    )
    _, stanzas = convert(text)
    assert [s.name for s in stanzas] == ["bob", "stanza-2", "stanza-3", "stanza-5", "ok"]
    assert [s.require_username for s in stanzas] == ["bob", "bob", "x y", "stanza-5", "ok"]


def test_dates_carry_over_as_fwknopd_reads_them() -> None:
    for written, through in (
        ("02/30/2027", "2027-03-01"),
        ("13/01/2027", "2027-12-31"),
        ("1/1/28", "2027-12-31"),
        ("03/00/2027", "2027-02-27"),
    ):
        result, (stanza,) = convert(f"SOURCE ANY\n{KEYS}ACCESS_EXPIRE {written}\n")
        assert f'expires = "{through}"' in result.toml, written
        day = datetime.date.fromisoformat(through) + datetime.timedelta(days=1)
        start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
        assert stanza.expires == start.timestamp()
    result, _ = convert(f"SOURCE ANY\n{KEYS}ACCESS_EXPIRE 02/30/2027\n")
    assert "02/30/2027 (line 4) is no calendar date: fwknopd reads it as 2027-03-02" in (
        notes_text(result)
    )


def test_lenient_numbers_are_read_as_fwknopd_reads_them() -> None:
    text = f"SOURCE ANY\n{KEYS}FW_ACCESS_TIMEOUT 45s\nMAX_FW_TIMEOUT 0\nACCESS_EXPIRE_EPOCH abc\n"
    result, (stanza,) = convert(text)
    assert (stanza.access_timeout, stanza.max_timeout, stanza.expires) == (45.0, 300.0, None)
    notes = notes_text(result)
    assert "FW_ACCESS_TIMEOUT '45s' (line 4) is not a whole number: fwknopd read it as 45" in notes
    assert "ACCESS_EXPIRE_EPOCH 'abc' (line 6) is not a whole number" in notes


@pytest.mark.parametrize(
    ("lines", "note"),
    [
        ("KEY_BASE64 " + base64.b64encode(bytes(33)).decode(), "KEY_BASE64 at line 2 is 33 bytes"),
        ("KEY " + "k" * 33, "KEY at line 2 is 33 bytes; fwknop uses 1 to 32"),
        ("KEY pw\nHMAC_KEY " + "h" * 137, "HMAC_KEY at line 3 is 137 bytes"),
        ("KEY pw\nOPEN_PORTS udp/53", "OPEN_PORTS has no TCP port left"),
        ("KEY pw\nREQUIRE_USERNAME " + "u" * 65, "REQUIRE_USERNAME (line 3) is not 1 to 64"),
        ("KEY pw\nFORWARD_ALL Y", "FORWARD_ALL (line 3) forwarded its clients"),
        ("KEY pw\nENCRYPTION_MODE Asymmetric", "ENCRYPTION_MODE Asymmetric means GnuPG"),
        ("%include_keys /etc/fwknop/keys.conf", "its keys are in an %include_keys file"),
    ],
)
def test_stanzas_that_cannot_work_here_are_skipped_with_a_note(lines: str, note: str) -> None:
    result, stanzas = convert(f"SOURCE ANY\n{lines}\n")
    assert stanzas == ()
    assert note in notes_text(result)
    assert "no stanza was converted: SPA stays off" in notes_text(result)
    assert "SECRET KEYS INSIDE" not in result.toml


def test_includes_are_named_not_followed() -> None:
    text = f"%include /etc/fwknop/more.conf\nSOURCE ANY\n{KEYS}%include_folder /etc/fwknop/d\n"
    result, stanzas = convert(text)
    assert len(stanzas) == 1
    notes = notes_text(result)
    assert "line 1: %include /etc/fwknop/more.conf was not followed" in notes
    assert "line 5: %include_folder /etc/fwknop/d was not followed" in notes


def test_ipv6_sources_and_any_in_a_list() -> None:
    text = f"SOURCE 2001:db8::/32,192.0.2.1\n{KEYS}SOURCE 192.0.2.0/24, ANY\n{KEYS}"
    _, (v6, anywhere) = convert(text)
    assert [str(n) for n in v6.source] == ["2001:db8::/32", "192.0.2.1/32"]
    assert anywhere.source == ()


# -- what fwknopd refuses ------------------------------------------------------------------------

BAD = [
    (f"SOURCE ANY\nHMAC_KEY_BASE64 {HMAC_B64}\n", 1, "SOURCE", "no KEY or KEY_BASE64"),
    ("SOURCE ANY\nKEY same\nHMAC_KEY same\n", 3, "HMAC_KEY", "equals the encryption key"),
    ("SOURCE ANY\nKEY_BASE64 abc$%\nHMAC_KEY x\n", 2, "KEY_BASE64", "not base64"),
    ("SOURCE ANY\nKEY __changeme__\n", 2, "KEY", "placeholder"),
    ("SOURCE ANY\nKEY pw\nHMAC_KEY_BASE64 __CHANGEME__\n", 3, "HMAC_KEY_BASE64", "placeholder"),
    (f"SOURCE ANY\n{KEYS}HMAC_DIGEST_TYPE sha3-256\n", 4, "HMAC_DIGEST_TYPE", "unknown digest"),
    (f"SOURCE ANY\n{KEYS}ENCRYPTION_MODE pcbc\n", 4, "ENCRYPTION_MODE", "unknown mode"),
    (f"SOURCE ANY\n{KEYS}FW_ACCESS_TIMEOUT -5\n", 4, "FW_ACCESS_TIMEOUT", "whole seconds"),
    (f"SOURCE ANY\n{KEYS}MAX_FW_TIMEOUT 9999999\n", 4, "MAX_FW_TIMEOUT", "0..8388608"),
    (f"SOURCE ANY\n{KEYS}ACCESS_EXPIRE 2027-12-31\n", 4, "ACCESS_EXPIRE", "MM/DD/YYYY"),
    (f"SOURCE ANY\n{KEYS}ACCESS_EXPIRE 12-31-2027\n", 4, "ACCESS_EXPIRE", "MM/DD/YYYY"),
    (f"SOURCE 10.0.0.300\n{KEYS}", 1, "SOURCE", "not an address"),
    (f"SOURCE ANY\n{KEYS}OPEN_PORTS sctp/22\n", 4, "OPEN_PORTS", '"tcp/PORT"'),
    (f"SOURCE ANY\n{KEYS}RESTRICT_PORTS tcp/70000\n", 4, "RESTRICT_PORTS", '"tcp/PORT"'),
    (f"SOURCE ANY\n{KEYS}KEY\n", 4, "KEY", "expected 'KEY VALUE'"),
    (f"SOURCE ANY\n{KEYS}KEY   \n", 4, "KEY", "expected 'KEY VALUE'"),
    (f"SOURCE: ANY\n{KEYS}REQUIRE_USERNAME ;bob\n", 4, "REQUIRE_USERNAME", "'KEY VALUE'"),
    (f"SOURCE ANY\n   \n{KEYS}", 2, "", "a line of blanks only"),
]


@pytest.mark.parametrize(("text", "line", "key", "reason"), BAD)
def test_what_fwknopd_refuses_fails_with_line_and_key(
    text: str, line: int, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        import_fwknop(text, "access.conf")
    error = caught.value
    assert (error.path, error.line, error.key) == ("access.conf", line, key), str(error)
    assert reason in error.reason
    assert str(error).startswith(f"access.conf:{line}: ")


# -- fwknopd as the reference ----------------------------------------------------------------------

needs_fwknopd = pytest.mark.skipif(FWKNOPD is None, reason="fwknopd (fwknop-server) missing")


def dump_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`fwknopd --dump-config` on an access.conf, with an empty fwknopd.conf (its defaults)."""
    server = tmp_path / "fwknopd.conf"
    server.write_text("")
    server.chmod(0o600)
    access = tmp_path / "access.conf"
    access.write_text(text, errors="surrogateescape")
    access.chmod(0o600)
    return subprocess.run(
        [str(FWKNOPD), "-c", str(server), "-a", str(access), "--dump-config"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def dumped_stanzas(output: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    for line in output.splitlines():
        if match := re.match(r"^SOURCE \((\d+)\):\s+(.*)$", line):
            stanzas.append({"SOURCE": match.group(2)})
        elif stanzas and (match := re.match(r"^\s*([A-Z_ ()]+?):\s+(.*)$", line)):
            stanzas[-1][match.group(1)] = match.group(2)
    return stanzas


@needs_fwknopd
def test_fwknopd_reads_the_sample_as_the_import_does(tmp_path: Path) -> None:
    readable = SAMPLE.split("\nSOURCE ANY\nGPG_DECRYPT_ID")[0] + "\n"  # fwknopd needs gpg there
    done = dump_config(tmp_path, readable)
    assert done.returncode == 0, done.stderr
    theirs = dumped_stanzas(done.stdout)
    _, ours = convert(readable)
    assert len(theirs) == len(ours) == 3
    digests = {"1": "md5", "3": "sha256", "5": "sha512"}
    for fwknopd, stanza in zip(theirs, ours, strict=True):
        assert int(fwknopd["KEY_LEN"]) == len(stanza.key)
        assert int(fwknopd["HMAC_KEY_LEN"]) == len(stanza.hmac_key or b"")
        if stanza.hmac_key is not None:
            assert digests[fwknopd["HMAC_DIGEST_TYPE"]] == stanza.hmac
        cap = int(fwknopd["MAX_FW_TIMEOUT"])
        assert min(int(fwknopd["FW_ACCESS_TIMEOUT"]), cap) == stanza.access_timeout
        assert cap == stanza.max_timeout
        assert (fwknopd["REQUIRE_SOURCE_ADDRESS"] == "Yes") == stanza.require_source_address
        username = fwknopd["REQUIRE_USERNAME"].strip()
        assert (None if username == "<not set>" else username) == stanza.require_username


@needs_fwknopd
@pytest.mark.parametrize(("text", "line", "key", "reason"), BAD)
def test_fwknopd_refuses_what_the_import_refuses(
    tmp_path: Path, text: str, line: int, key: str, reason: str
) -> None:
    done = dump_config(tmp_path, text)
    assert done.returncode != 0, done.stdout[-500:]


@needs_fwknopd
def test_fwknopd_accepts_what_the_import_skips_or_reads_leniently(tmp_path: Path) -> None:
    for text in (
        "SOURCE ANY\nKEY " + "k" * 33 + "\n",
        f"SOURCE ANY\n{KEYS}OPEN_PORTS tcp/0\n",
        f"SOURCE ANY\n{KEYS}FW_ACCESS_TIMEOUT 45s\nACCESS_EXPIRE_EPOCH abc\n",
        f"SOURCE ANY\n{KEYS}ACCESS_EXPIRE 02/30/2027\n",
        f"SOURCE ANY\n{KEYS}bogus_key 1\nsource 10.0.0.1\n",
    ):
        done = dump_config(tmp_path, text)
        assert done.returncode == 0, (text, done.stderr)
        import_fwknop(text, "access.conf")  # and the import does not refuse them either
