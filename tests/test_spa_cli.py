# `guardian keygen` and `guardian knock --spa` as a user runs them (no root, loopback only): keygen
# prints fwknop's --key-gen format or writes two 0600 files it never overwrites, plus the stanza to
# paste; knock --spa sends one datagram that our decoder accepts with the stanza's keys, asking for
# what the flags say.
from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from guardian.configfile import load_config
from guardian.engine.spa import spa_key
from guardian.parsers.spa import decode

REPO = Path(__file__).resolve().parents[1]


def guardian(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardian", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_keygen_prints_the_fwknop_key_gen_format() -> None:
    done = guardian("keygen")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["KEY_BASE64", "HMAC_KEY_BASE64"]
    key, hmac_key = (base64.b64decode(line.split(": ")[1], validate=True) for line in lines)
    assert (len(key), len(hmac_key)) == (32, 64)
    assert guardian("keygen").stdout != done.stdout  # random each time


def test_keygen_out_writes_0600_files_once_and_a_loadable_stanza(tmp_path: Path) -> None:
    prefix = tmp_path / "alice"
    done = guardian("keygen", "--out", str(prefix))
    assert done.returncode == 0, done.stderr
    for suffix in (".key", ".hmac"):
        assert stat.S_IMODE(os.stat(f"{prefix}{suffix}").st_mode) == 0o600
    again = guardian("keygen", "--out", str(prefix))
    assert again.returncode == 1 and "exists" in again.stderr
    stanza_text = done.stdout.split("\n", 1)[1]
    config = tmp_path / "client.toml"
    config.write_text(stanza_text)
    loaded = load_config(str(config))
    assert [s.name for s in loaded.spa.stanzas] == ["alice"]
    assert loaded.spa.stanzas[0].key == base64.b64decode(Path(f"{prefix}.key").read_text())


def test_knock_spa_sends_one_packet_the_decoder_accepts(tmp_path: Path) -> None:
    prefix = tmp_path / "bob"
    done = guardian("keygen", "--out", str(prefix))
    assert done.returncode == 0, done.stderr
    config = tmp_path / "client.toml"
    config.write_text(done.stdout.split("\n", 1)[1])
    stanza = load_config(str(config)).spa.stanzas[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        sent = guardian(
            "knock",
            "--spa",
            "-c",
            str(config),
            "--spa-port",
            str(port),
            "--user",
            "bob",
            "--timeout",
            "90",
            "--access",
            "tcp/22",
            "127.0.0.1",
        )
        assert sent.returncode == 0, sent.stderr
        payload = server.recv(4096)
    message = decode(payload, spa_key(stanza))
    assert (message.username, message.allow_ip, message.access) == (
        "bob",
        "0.0.0.0",
        (("tcp", 22),),
    )
    assert (message.message_type, message.client_timeout) == (3, 90)
    assert "sent SPA to 127.0.0.1 udp/" in sent.stdout


def test_knock_spa_without_a_stanza_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    done = guardian("knock", "--spa", "-c", str(config), "127.0.0.1")
    assert done.returncode == 2 and "no [[spa.stanza]]" in done.stderr
