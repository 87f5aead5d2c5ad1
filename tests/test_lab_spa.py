# Acceptance tests of issue 5 (SPA) in the network-namespace lab: the real daemon, a real sshd, the
# real Debian `fwknop` client (2.6.10), `guardian knock --spa`, real ssh and nmap. The stock client
# opens access with HMAC-SHA256, HMAC-SHA512, a passphrase key and legacy mode (each its own
# stanza); ssh works and logout closes the grant as it does for knocks. A captured packet replayed
# from another host is refused, also after a restart of the guardian and in its bit-flipped form;
# each policy refusal is one log line naming source, stanza and reason; 10k garbage datagrams cost
# bounded CPU and a valid packet right after still opens; the SPA port looks like any closed UDP
# port to nmap; IPv6 works with `guardian knock --spa -6`. Every wait is bounded.
from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from guardian.lab import GuardianHandle, Lab, set_elements, ssh_argv
from guardian.lab.guardian_proc import LabServer
from guardian.lab.probes import nmap_argv, parse_nmap_states
from guardian.parsers.spa import SpaKey
from guardian.spa_packet import encode

SPA_PORT = 62201
UNUSED_UDP = 62202
POLL = 0.05
OPEN_WAIT = 3.0
LINGER = 2.0
KEY_B64 = base64.b64encode(bytes(range(100, 132))).decode()
HMAC_B64 = base64.b64encode(bytes(range(64))).decode()
HMAC512_B64 = base64.b64encode(bytes(range(1, 129))).decode()
PASSPHRASE = "correct horse battery staple"  # noqa: S105 (a throwaway lab key)
LEGACY_B64 = base64.b64encode(b"legacykey16bytes").decode()
OTHER_B64 = base64.b64encode(bytes(32)).decode()
EXPIRED_B64 = base64.b64encode(bytes(range(200, 232))).decode()
STRANGER_B64 = base64.b64encode(bytes(range(50, 82))).decode()

# A sender for the lab hosts: payloads (hex, one per line) from a file, each one UDP datagram.
SENDER = """
import socket, sys, time
target, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in target else socket.AF_INET
deadline = time.monotonic() + 30.0
with socket.socket(family, socket.SOCK_DGRAM) as sock, open(path) as lines:
    for n, line in enumerate(lines):
        sock.sendto(bytes.fromhex(line.strip()), (target, port))
        if n % 200 == 199:
            time.sleep(0.002)  # stay under the capture socket's buffer
        if time.monotonic() > deadline:
            break
"""


def secret(lab: Lab, name: str, content: str) -> Path:
    path = lab.workdir / name
    path.write_text(content + "\n")
    os.chmod(path, 0o600)
    return path


def config_text(lab: Lab) -> str:
    files = {
        "alice": (secret(lab, "alice.key", KEY_B64), secret(lab, "alice.hmac", HMAC_B64)),
        "sha512": (secret(lab, "s512.key", KEY_B64), secret(lab, "s512.hmac", HMAC512_B64)),
    }
    phrase = secret(lab, "carol.pass", PASSPHRASE)
    carol_hmac = secret(lab, "carol.hmac", HMAC_B64)
    legacy = secret(lab, "legacy.key", LEGACY_B64)
    nohmac = secret(lab, "nohmac.key", OTHER_B64)
    expired = secret(lab, "expired.key", EXPIRED_B64)
    return f"""\
[guard]
ports = [22]
answer = "reset"

[access]
window = "30s"
linger = "{LINGER:g}s"
# The module's sshd logs to a file, not the journal: its connections count as sessions.
require_auth = false

[spa]
port = {SPA_PORT}

[[spa.stanza]]
name = "alice"
key_base64_file = "{files["alice"][0]}"
hmac_key_base64_file = "{files["alice"][1]}"
require_username = "alice"

[[spa.stanza]]
name = "sha512"
key_base64_file = "{files["sha512"][0]}"
hmac_key_base64_file = "{files["sha512"][1]}"
hmac = "sha512"

[[spa.stanza]]
name = "carol"
key_file = "{phrase}"
hmac_key_base64_file = "{carol_hmac}"

[[spa.stanza]]
name = "legacy"
key_base64_file = "{legacy}"
hmac = "none"
encryption_mode = "legacy"

[[spa.stanza]]
name = "nohmac"
key_base64_file = "{nohmac}"
hmac = "none"

[[spa.stanza]]
name = "expired"
key_base64_file = "{expired}"
hmac_key_base64_file = "{files["alice"][1]}"
expires = "2020-01-01"
"""


# -- the real fwknop client ------------------------------------------------------------------------

FWKNOP_KEYS: dict[str, list[str]] = {
    "alice": ["--key-base64-rijndael", KEY_B64, "--key-base64-hmac", HMAC_B64, "--use-hmac"],
    "sha512": [
        "--key-base64-rijndael",
        KEY_B64,
        "--key-base64-hmac",
        HMAC512_B64,
        "--use-hmac",
        "--hmac-digest-type",
        "sha512",
    ],
    "carol": ["--key-rijndael", PASSPHRASE, "--key-base64-hmac", HMAC_B64, "--use-hmac"],
    "legacy": ["--key-base64-rijndael", LEGACY_B64, "-M", "legacy"],
    "nohmac": ["--key-base64-rijndael", OTHER_B64],
}


def fwknop(
    lab: Lab, host: str, keys: list[str], *extra: str, user: str = "alice", v: int = 4
) -> None:
    home = lab.workdir / f"home-{host}"
    home.mkdir(exist_ok=True)
    argv = [
        "fwknop",
        "--no-save-args",
        "-A",
        "tcp/22",
        "-s",
        "-U",
        user,
        "-p",
        str(SPA_PORT),
        "-D",
        lab.addr("server", v),
        *keys,
        *extra,
    ]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = lab.run(host, argv, env=env, timeout=20)
    assert done.returncode == 0, f"fwknop failed: {done.stdout}{done.stderr}"


def send_payloads(lab: Lab, host: str, payloads: list[bytes], v: int = 4) -> None:
    path = lab.workdir / f"payloads-{host}-{time.monotonic_ns()}.hex"
    path.write_text("".join(p.hex() + "\n" for p in payloads))
    done = lab.run(
        host,
        [sys.executable, "-c", SENDER, lab.addr("server", v), str(SPA_PORT), str(path)],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# -- observing -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def granted(lab: Lab, host: str, v: int = 4) -> bool:
    return lab.addr(host, v) in set_elements(lab, "server", "allow4" if v == 4 else "allow6")


def status(lab: Lab, handle: GuardianHandle) -> dict[str, object]:
    argv = [sys.executable, "-m", "guardian", "status", "--json", "-s", str(handle.socket_path)]
    done = lab.run("server", argv, timeout=30)
    assert done.returncode == 0, done.stderr
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def refusals(lab: Lab, handle: GuardianHandle) -> dict[str, int]:
    spa = status(lab, handle)["spa"]
    assert isinstance(spa, dict)
    found: dict[str, int] = spa["refusals"]
    return found


def ssh_ok(lab: Lab, host: str, v: int = 4) -> bool:
    assert lab.sshd is not None
    argv = ssh_argv(lab.sshd, lab.addr("server", v), ["true"], ("-o", "ConnectTimeout=3"))
    return lab.run(host, argv, timeout=20).returncode == 0


class Server(LabServer):
    def start_spa(self) -> GuardianHandle:
        return self.start(config_text(self.lab))

    def cleanup(self) -> None:
        super().cleanup()
        self.forget_state()


@pytest.fixture
def server(lab_module: Lab) -> Iterator[Server]:
    with Server(lab_module) as helper:
        yield helper


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stanza", ["alice", "sha512", "carol", "legacy"])
def test_the_real_fwknop_client_opens_access_ssh_works_and_logout_closes_it(
    server: Server, stanza: str
) -> None:
    lab = server.lab
    handle = server.start_spa()
    assert not granted(lab, "client")
    assert not ssh_ok(lab, "client")  # shut before: a reset, like an unused port
    fwknop(lab, "client", FWKNOP_KEYS[stanza])
    assert wait_for(lambda: granted(lab, "client"), OPEN_WAIT), handle.log_text()[-2000:]
    assert f"door=spa:{stanza}" in handle.log_text()
    assert ssh_ok(lab, "client")
    # Logout: the grant closes after linger, as for knocks (window 30 s would keep it longer).
    assert wait_for(lambda: not granted(lab, "client"), LINGER + 4.0), handle.log_text()[-2000:]
    assert not granted(lab, "client2")


def test_a_replayed_packet_is_refused_also_after_a_restart_and_bit_flipped(server: Server) -> None:
    lab = server.lab
    handle = server.start_spa()
    saved = lab.workdir / "captured.spa"
    # The no-HMAC stanza: the one where fwknopd itself can be replayed with the bit flip.
    fwknop(lab, "client", FWKNOP_KEYS["nohmac"], "-B", str(saved))
    assert wait_for(lambda: granted(lab, "client"), OPEN_WAIT), handle.log_text()[-2000:]
    captured = saved.read_text().strip().encode()
    # The attacker replays the sniffed packet: 0.0.0.0 would mean "grant the attacker".
    send_payloads(lab, "attacker", [captured])
    assert wait_for(lambda: refusals(lab, handle).get("replay", 0) == 1, OPEN_WAIT)
    assert not granted(lab, "attacker")
    log = handle.log_text()
    # The exact copy is caught before any crypto, so no stanza is named.
    assert f"spa_refused source={lab.addr('attacker')} door=spa (replay: " in log
    # After a restart (kill -9: no orderly shutdown), the state store still knows it.
    handle.kill()
    handle = server.start_spa()
    flipped = _flip_low_bits(captured)
    assert flipped != captured
    send_payloads(lab, "attacker", [captured, flipped])
    assert wait_for(lambda: refusals(lab, handle).get("replay", 0) == 2, OPEN_WAIT), refusals(
        lab, handle
    )
    assert not granted(lab, "attacker")


def _flip_low_bits(payload: bytes) -> bytes:
    """fwknopd's weakness: the unused low bits of the last base64 character change the text (its
    replay key) but not the decoded ciphertext."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    index = alphabet.index(payload[-1:])
    return payload[:-1] + alphabet[index ^ 1 : (index ^ 1) + 1]


def test_each_refusal_has_its_own_reason_in_one_log_line(server: Server) -> None:
    lab = server.lab
    handle = server.start_spa()
    attacker = lab.addr("attacker")
    key = SpaKey(base64.b64decode(KEY_B64), base64.b64decode(HMAC_B64), "sha256")

    def ours(**fields: object) -> bytes:
        args: dict[str, object] = {
            "username": "alice",
            "allow_ip": "0.0.0.0",
            "access": (("tcp", 22),),
            "timestamp": int(time.time()),
        }
        args.update(fields)
        return encode(key, **args)  # type: ignore[arg-type]

    cases = [
        ("not_authentic", lambda: fwknop(lab, "attacker", ["--key-base64-rijndael", STRANGER_B64])),
        (
            "not_authentic",
            lambda: fwknop(
                lab,
                "attacker",
                ["--key-base64-rijndael", KEY_B64, "--key-base64-hmac", OTHER_B64, "--use-hmac"],
            ),
        ),
        (
            "too_old",
            lambda: send_payloads(lab, "attacker", [ours(timestamp=int(time.time()) - 125)]),
        ),
        (
            "from_future",
            lambda: send_payloads(lab, "attacker", [ours(timestamp=int(time.time()) + 125)]),
        ),
        (
            "port_not_allowed",
            lambda: send_payloads(lab, "attacker", [ours(access=(("tcp", 2222),))]),
        ),
        ("username", lambda: fwknop(lab, "attacker", FWKNOP_KEYS["alice"], user="mallory")),
        (
            "expired_stanza",
            lambda: fwknop(
                lab,
                "attacker",
                ["--key-base64-rijndael", EXPIRED_B64, "--key-base64-hmac", HMAC_B64, "--use-hmac"],
            ),
        ),
    ]
    expected: dict[str, int] = {}
    for reason, send in cases:
        before = len(handle.log_text())
        send()
        expected[reason] = expected.get(reason, 0) + 1
        assert wait_for(lambda: refusals(lab, handle) == expected, OPEN_WAIT), (
            reason,
            refusals(lab, handle),
        )
        lines = [ln for ln in handle.log_text()[before:].splitlines() if "spa_refused" in ln]
        assert len(lines) == 1, lines
        assert f"source={attacker}" in lines[0] and f"({reason}:" in lines[0], lines[0]
        assert "door=spa" in lines[0]
    skew_lines = [ln for ln in handle.log_text().splitlines() if "clock skew" in ln]
    # 125 s off, give or take the second the packet spent being built and sent.
    assert len(skew_lines) == 2 and all(" 2m" in ln for ln in skew_lines), skew_lines
    assert not granted(lab, "attacker")


def test_garbage_costs_bounded_cpu_and_a_valid_packet_right_after_opens(server: Server) -> None:
    lab = server.lab
    handle = server.start_spa()
    rng = __import__("random").Random(8)
    key = SpaKey(base64.b64decode(KEY_B64), base64.b64decode(HMAC_B64), "sha256")
    valid = encode(
        key, username="alice", allow_ip="0.0.0.0", access=(("tcp", 22),), timestamp=int(time.time())
    )
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    garbage: list[bytes] = []
    for i in range(10_000):
        kind = i % 4
        if i % 100 == 99:  # beyond the MTU: IP fragments, which the kernel filter never passes
            garbage.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(1500, 8000))))
            continue
        if kind == 0:
            garbage.append(rng.randbytes(rng.randrange(1, 1400)))  # random bytes
        elif kind == 1:
            garbage.append(valid[: rng.randrange(1, len(valid))])  # truncated
        elif kind == 2:  # oversized, still one packet (the verifier refuses it unread)
            garbage.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(600, 1472))))
        else:  # the right alphabet and length, wrong content: costs an HMAC per stanza
            garbage.append(bytes(rng.choice(alphabet) for _ in range(len(valid))))
    process = psutil.Process(handle.pid)
    cpu_before = sum(process.cpu_times()[:2])
    started = time.monotonic()
    send_payloads(lab, "attacker", garbage)
    send_payloads(lab, "client", [valid])
    assert wait_for(lambda: granted(lab, "client"), OPEN_WAIT), handle.log_text()[-2000:]
    opened_after = time.monotonic() - started
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    assert handle.returncode is None  # alive
    counters = status(lab, handle)["counters"]
    assert isinstance(counters, dict)
    seen = counters["spa_refused"] + counters.get("knock_kernel_drops", 0)
    # Nearly all reached the verifier (kernel drops are counted; the 100 fragmented ones never do).
    assert seen >= 9_000, counters
    assert not granted(lab, "attacker")
    # Bounded: the whole flood costs the daemon well under a second of CPU per 10k packets
    # (measured 0.29 s here); 5 s leaves room for a loaded CI machine.
    print(f"garbage: {cpu:.2f} s CPU for 10k packets, valid one opened {opened_after:.1f} s later")
    assert cpu < 5.0, f"{cpu:.2f} s CPU for 10k garbage packets ({opened_after:.1f} s wall)"


def test_the_spa_port_looks_like_any_closed_udp_port_to_nmap(server: Server) -> None:
    lab = server.lab
    server.start_spa()
    # One scan of both ports: nmap paces itself to the kernel's ICMP rate limit (one port
    # unreachable per second by default), which two back-to-back scans would run into.
    argv = nmap_argv(lab.addr("server"), SPA_PORT, extra=["-sU", "--max-retries", "4"])
    argv[argv.index("-sS")] = "-sU"
    argv[argv.index(str(SPA_PORT))] = f"{SPA_PORT},{UNUSED_UDP}"
    done = lab.run("attacker", argv, timeout=90)
    assert done.returncode == 0, done.stderr
    states = parse_nmap_states(done.stdout)
    assert states[SPA_PORT] == states[UNUSED_UDP] == "closed", states


def test_guardian_knock_spa_over_ipv6_grants_the_ipv6_source(server: Server) -> None:
    lab = server.lab
    handle = server.start_spa()
    client_config = lab.workdir / "client.toml"  # a client keeps the same stanza with its keys
    client_config.write_text(config_text(lab))
    argv = [
        sys.executable,
        "-m",
        "guardian",
        "knock",
        "--spa",
        "-c",
        str(client_config),
        "--stanza",
        "sha512",
        "-6",
        lab.addr("server", 6),
    ]
    done = lab.run("client", argv, timeout=30)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: granted(lab, "client", 6), OPEN_WAIT), handle.log_text()[-2000:]
    assert not granted(lab, "client", 4)
    assert ssh_ok(lab, "client", 6)
