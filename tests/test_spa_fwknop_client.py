# Packets made by the real fwknop client (Debian's fwknop-client 2.6.10), decoded by ours. The
# client builds the packet without sending it (`--test`, and `-B FILE` saves the exact payload);
# HOME is a temporary directory and `--no-save-args` is given, so nothing is written outside it.
# Covered: HMAC with every algorithm the client offers, every plaintext digest (`-m`), passphrase
# keys, legacy mode, a client timeout (message type 3), `-U`, `-s` (allow-IP 0.0.0.0), several
# ports; wrong keys are refused; and `fwknop --key-gen` output matches ours in shape. No root, no
# network: these run with the pure tests (a missing client is a failure, not a skip).
from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from guardian.parsers.spa import HMAC_TAG_LENGTHS, SpaError, SpaKey, decode
from guardian.spa_packet import HMAC_KEY_LENGTHS, generate_keys, render_keygen

KEY_B64 = "Etvos/HBZ1AzjavjxfcCpbiKyDu0ShEHQQKwxI3BJ6g="
HMAC_B64 = (
    "jGtH+on60Qq6Ryl5DeUNXZr6TeWkw0Im/Afs0f1mVIIi2KisY5liI0ghkxLHspl7q87FR8s6LzsSiHl+C+L7FQ=="
)
KEY = SpaKey(base64.b64decode(KEY_B64), base64.b64decode(HMAC_B64))
ALLOW = "192.0.2.4"


@dataclass(frozen=True)
class ClientPacket:
    wire: bytes
    encoded: bytes  # the client's "Encoded Data:" line: P, which our canonical key hashes
    output: str  # stdout and stderr


@pytest.fixture(scope="module")
def fwknop() -> str:
    path = shutil.which("fwknop")
    if path is None:
        pytest.fail("the fwknop client is not installed (Debian package fwknop-client)")
    return path


class RunClient(Protocol):
    def __call__(self, *args: str, base64_keys: bool = True, hmac: bool = True) -> ClientPacket: ...


@pytest.fixture
def run_client(fwknop: str, tmp_path: Path) -> RunClient:
    counter = iter(range(1000))

    def run(*args: str, base64_keys: bool = True, hmac: bool = True) -> ClientPacket:
        saved = tmp_path / f"packet{next(counter)}.txt"
        argv = [fwknop, "--test", "--no-save-args", "-D", "127.0.0.1", "-B", str(saved)]
        if base64_keys:
            argv += ["--key-base64-rijndael", KEY_B64]
            if hmac:
                argv += ["--key-base64-hmac", HMAC_B64, "--use-hmac"]
        if "-s" not in args and "-a" not in args:
            argv += ["-a", ALLOW]
        if "-A" not in args:
            argv += ["-A", "tcp/22"]
        env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        done = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=20, env=env, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SPA packet not actually sent" in done.stdout  # --test really built only
        wire = saved.read_bytes().rstrip(b"\n")
        final = re.search(r"^ Final SPA Data: (\S+)$", done.stdout, re.M)
        encoded = re.search(r"^ +Encoded Data: (\S+)$", done.stdout, re.M)
        assert final is not None and encoded is not None, done.stdout
        assert final[1].encode() == wire  # -B saved exactly the printed packet
        return ClientPacket(wire, encoded[1].encode(), done.stdout + done.stderr)

    return run


def test_default_hmac_sha256(run_client: RunClient) -> None:
    sent = run_client("-U", "alice")
    message = decode(sent.wire, KEY)
    assert (message.username, message.allow_ip, message.access) == ("alice", ALLOW, (("tcp", 22),))
    assert (message.message_type, message.version, message.digest_type) == (1, "3.0.0", "sha256")
    assert message.client_timeout is None and message.nat_access is None
    assert message.canonical == hashlib.sha256(sent.encoded).digest()
    assert sent.encoded.startswith(message.random.encode() + b":")


@pytest.mark.parametrize(
    "hmac_name", ["md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512"]
)
def test_every_hmac_digest_type(run_client: RunClient, hmac_name: str) -> None:
    hmac_key = os.urandom(HMAC_KEY_LENGTHS[hmac_name])
    sent = run_client(
        "--key-base64-rijndael",
        KEY_B64,
        "--key-base64-hmac",
        base64.b64encode(hmac_key).decode(),
        "--use-hmac",
        "--hmac-digest-type",
        hmac_name,
        "-U",
        "root",
        base64_keys=False,
    )
    key = SpaKey(KEY.key, hmac_key, hmac_name)
    assert re.search(rf"HMAC Type: \d+ \({hmac_name.upper()}\)", sent.output), sent.output
    message = decode(sent.wire, key)
    assert (message.access, message.username) == ((("tcp", 22),), "root")
    assert len(sent.wire) - HMAC_TAG_LENGTHS[hmac_name] == 161  # the spec's no-HMAC size
    # The same packet under the default sha256 stanza, or another HMAC key: refused.
    other = SpaKey(KEY.key, os.urandom(64), hmac_name)
    with pytest.raises(SpaError) as caught:
        decode(sent.wire, other)
    assert caught.value.reason == "hmac"


@pytest.mark.parametrize(
    "digest", ["md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512"]
)
def test_every_plaintext_digest(run_client: RunClient, digest: str) -> None:
    sent = run_client("-m", digest)
    assert decode(sent.wire, KEY).digest_type == digest


def test_passphrase_key_without_hmac(run_client: RunClient) -> None:
    sent = run_client("--key-rijndael", "correct horse battery", base64_keys=False)
    key = SpaKey(b"correct horse battery", None, "none")
    message = decode(sent.wire, key)
    assert message.access == (("tcp", 22),) and message.allow_ip == ALLOW
    with pytest.raises(SpaError) as caught:
        decode(sent.wire, SpaKey(b"correct horse batterx", None, "none"))
    assert caught.value.reason == "decrypt"


def test_passphrase_keys_with_hmac(run_client: RunClient) -> None:
    sent = run_client(
        "--key-rijndael", "my pass", "--key-hmac", "hmac pass", "--use-hmac", base64_keys=False
    )
    message = decode(sent.wire, SpaKey(b"my pass", b"hmac pass"))
    assert message.username  # the login name of whoever runs the tests
    with pytest.raises(SpaError) as caught:
        decode(sent.wire, SpaKey(b"my pass", b"hmac pasS"))
    assert caught.value.reason == "hmac"
    with pytest.raises(SpaError) as caught:
        decode(sent.wire, SpaKey(b"my pasS", b"hmac pass"))
    assert caught.value.reason == "decrypt"


def test_legacy_mode_short_passphrase(run_client: RunClient) -> None:
    sent = run_client("--key-rijndael", "secretpw", "-M", "legacy", base64_keys=False)
    assert "Encryption Mode: 8 (legacy)" in sent.output
    legacy = SpaKey(b"secretpw", None, "none", legacy=True)
    assert decode(sent.wire, legacy).access == (("tcp", 22),)
    with pytest.raises(SpaError) as caught:
        decode(sent.wire, SpaKey(b"secretpw", None, "none"))  # a modern stanza refuses it
    assert caught.value.reason == "decrypt"


def test_legacy_mode_long_key(run_client: RunClient) -> None:
    # The client truncates a key over 16 bytes in legacy mode (and says so); so do we. (Legacy
    # mode has no HMAC in fwknop: the client refuses the combination.)
    sent = run_client("-M", "legacy", hmac=False)
    assert "truncating" in sent.output
    legacy = SpaKey(KEY.key, None, "none", legacy=True)
    assert decode(sent.wire, legacy).allow_ip == ALLOW
    with pytest.raises(SpaError) as caught:
        decode(sent.wire, SpaKey(KEY.key, None, "none"))
    assert caught.value.reason == "decrypt"


def test_client_timeout_makes_type_3(run_client: RunClient) -> None:
    sent = run_client("-f", "600", "-A", "tcp/22,udp/53")
    message = decode(sent.wire, KEY)
    assert (message.message_type, message.client_timeout) == (3, 600)
    assert message.access == (("tcp", 22), ("udp", 53))


def test_source_ip_flag_sends_0_0_0_0(run_client: RunClient) -> None:
    sent = run_client("-s", "-U", "bob")
    message = decode(sent.wire, KEY)
    assert (message.allow_ip, message.username) == ("0.0.0.0", "bob")


def test_two_client_packets_have_distinct_canonical_keys(run_client: RunClient) -> None:
    first, second = decode(run_client().wire, KEY), decode(run_client().wire, KEY)
    assert first.random != second.random
    assert first.canonical != second.canonical


def test_wrong_keys_refuse_client_packets(run_client: RunClient) -> None:
    wire = run_client().wire
    wrong_key = SpaKey(os.urandom(32), KEY.hmac_key)
    wrong_hmac = SpaKey(KEY.key, os.urandom(64))
    no_hmac = SpaKey(KEY.key, None, "none")
    reasons = []
    for key in (wrong_key, wrong_hmac, no_hmac):
        with pytest.raises(SpaError) as caught:
            decode(wire, key)
        reasons.append(caught.value.reason)
    assert reasons[:2] == ["decrypt", "hmac"]
    assert reasons[2] in {"wire", "decrypt"}  # the tag read as ciphertext


@pytest.mark.parametrize("hmac_name", ["md5", "sha1", "sha256", "sha384", "sha512"])
def test_key_gen_output_matches_ours(fwknop: str, tmp_path: Path, hmac_name: str) -> None:
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run(
        [fwknop, "--key-gen", "--hmac-digest-type", hmac_name],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = [line for line in done.stdout.splitlines() if "KEY_BASE64" in line]
    ours = render_keygen(*generate_keys(hmac_name)).splitlines()
    shape = re.compile(r"(KEY_BASE64|HMAC_KEY_BASE64): ([A-Za-z0-9+/]+=*)")
    for their_line, our_line in zip(theirs, ours, strict=True):
        their_match, our_match = shape.fullmatch(their_line), shape.fullmatch(our_line)
        assert their_match is not None and our_match is not None
        assert their_match[1] == our_match[1]
        assert len(base64.b64decode(their_match[2])) == len(base64.b64decode(our_match[2]))
