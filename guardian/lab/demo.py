# The narrated demo (`guardian demo`, scripts/demo.sh): the whole product in a lab of network
# namespaces, told with real tools against the real daemon, a real sshd, nftables, conntrack and
# journald. nmap sees port 22 closed; the `knock` client opens it for one client only; the
# session holds it past the window and its end closes it; a scan of the knock ports opens
# nothing; the close sequence closes it; the stock `fwknop` client opens it with one packet that
# the attacker cannot replay; the attacker replays a sniffed knock, guesses passwords and is
# banned (its grant closed, dropped on every port, its knocks ignored); `guardian status` shows it
# all; a stopped daemon leaves the ban to its kernel timeout. Every claim is checked as it is
# shown (narrator.py).
#
# Decisions:
# - sshd logs to syslog (/dev/log -> journald) and writes btmp into the lab's var_log, so the
#   daemon's journal and btmp watchers see what they see on a real server: "Accepted" lines make
#   sessions, failures make bans. guardian.lab.journald starts a journald where none runs.
# - Short times (window 10 s, linger 2 s, maxretry 3) keep the story under two minutes.
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from guardian.lab.guardian_proc import GuardianHandle, start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.narrator import Narrator, wait_until
from guardian.lab.netns import Lab, cleanup_stale
from guardian.lab.nft import allow_elements, set_elements
from guardian.lab.probes import knock, nmap_port_state
from guardian.lab.sshd import password_attempt_argv, prepare_var_log, ssh_argv, start_sshd

OPEN_SEQUENCE = ("7000/tcp", "8000/tcp", "9000/udp")
CLOSE_SEQUENCE = ("9000/tcp", "8000/tcp", "7000/tcp")
WINDOW = 10.0  # seconds a knock opens the door for a first connection
LINGER = 2.0  # seconds the door stays open after the last session ends
LINGER_SLACK = 1.5  # what the demo accepts on top of the linger (2 shared cores, polling)
PAST_WINDOW = 2.0  # how long after the window the session's grant is shown still open
MAXRETRY = 3
SPA_PORT = 62201
WRONG_PASSWORD = "hunter2"  # noqa: S105 (the attacker's guess; no account has it)
DEMO_CONFIG = """\
[guard]
ports = [22]
trusted = []
answer = "reset"

[access]
window = "{window:g}s"
linger = "{linger:g}s"

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]
timeout = "5s"
tcp_flags = "syn"
close = ["9000/tcp", "8000/tcp", "7000/tcp"]

[spa]
port = {spa_port}

{stanza}
[ban]
sources = ["journal", "btmp"]
maxretry = {maxretry}
findtime = "10m"
bantime = "10m"
"""

# The attacker replays a captured SPA datagram from its own address.
_SEND_DATAGRAM = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.sendto(open(sys.argv[3], "rb").read().strip(), (sys.argv[1], int(sys.argv[2])))
"""


def _ssh(lab: Lab, n: Narrator, host: str, command: Sequence[str] = ()) -> bool:
    assert lab.sshd is not None
    shown = " ".join(command) or "echo ..."
    n.command(host, ["ssh", "-i", "KEY", f"root@{lab.addr('server')}", shown])
    remote = list(command) or ["echo", "logged in as $USER from $SSH_CLIENT"]
    done = lab.run(host, ssh_argv(lab.sshd, lab.addr("server"), remote), timeout=30)
    n.output((done.stdout or done.stderr).strip() or f"exit {done.returncode}")
    return done.returncode == 0


def _scan(lab: Lab, n: Narrator, host: str, ports: Sequence[int]) -> dict[int, str]:
    target = lab.addr("server")
    states = {}
    for port in ports:
        n.command(host, ["nmap", "-Pn", "-sS", "-p", str(port), target])
        states[port] = nmap_port_state(lab, host, target, port)
        n.say(f"  port {port}/tcp: [bold]{states[port]}[/bold]")
    return states


def _knock(lab: Lab, n: Narrator, host: str, steps: Sequence[str]) -> bool:
    target = lab.addr("server")
    n.command(host, ["knock", "-d", "50", target, *(s.replace("/", ":") for s in steps)])
    return knock(lab, host, target, steps, delay_ms=50).returncode == 0


def _set(lab: Lab, n: Narrator, name: str) -> dict[str, float | None]:
    elements = set_elements(lab, "server", name)
    n.command("server", ["nft", "list", "set", "inet", "guardian", name])
    if not elements:
        n.output("(empty)")
    for addr, expires in elements.items():
        n.output(f"{addr}  " + ("permanent" if expires is None else f"expires in {expires:.0f}s"))
    return elements


def _cli(guardian: GuardianHandle, *args: str, width: int | None = None) -> str:
    """`guardian ARGS -s SOCKET` as an admin on the server runs it; its output. `width`: the
    columns it may use (rich reads $COLUMNS), so a frame fits the demo's indented output."""
    argv = [sys.executable, "-m", "guardian", *args, "-s", str(guardian.socket_path)]
    env = dict(os.environ)
    if width is not None:
        env["COLUMNS"] = str(width)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=env)
    return done.stdout if done.returncode == 0 else f"(exit {done.returncode}) {done.stderr}"


def _cli_json(guardian: GuardianHandle, command: str) -> Any:
    try:
        return json.loads(_cli(guardian, command, "--json"))
    except json.JSONDecodeError:
        return None


def _spa_keys(lab: Lab, n: Narrator) -> tuple[str, dict[str, str]]:
    """`guardian keygen` makes the stanza's key files (0600); the client gets the same keys."""
    directory = lab.workdir / "spa"
    directory.mkdir(mode=0o700, exist_ok=True)
    prefix = directory / "client"
    n.command("server", ["guardian", "keygen", "--out", "/etc/guardian/spa/client"])
    argv = [sys.executable, "-m", "guardian", "keygen", "--out", str(prefix)]
    subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    key = prefix.with_suffix(".key").read_text().strip()
    hmac = prefix.with_suffix(".hmac").read_text().strip()
    stanza = (
        '[[spa.stanza]]\nname = "client"\n'
        f'key_base64_file = "{prefix.with_suffix(".key")}"\n'
        f'hmac_key_base64_file = "{prefix.with_suffix(".hmac")}"\n'
    )
    return stanza, {"key": key, "hmac": hmac}


def _fwknop(lab: Lab, n: Narrator, keys: dict[str, str], saved: Path) -> bool:
    home = lab.workdir / "home-client"
    home.mkdir(exist_ok=True)
    shown = ["fwknop", "-A", "tcp/22", "-s", "-D", lab.addr("server"), "-p", str(SPA_PORT)]
    n.command("client", [*shown, "--key-base64-rijndael", "KEY", "--key-base64-hmac", "HMAC_KEY"])
    argv = [
        *shown,
        "--no-save-args",
        "--key-base64-rijndael",
        keys["key"],
        "--key-base64-hmac",
        keys["hmac"],
        "--use-hmac",
        "-B",
        str(saved),  # the packet as sent, which the attacker is about to replay
    ]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return lab.run("client", argv, env=env, timeout=30).returncode == 0


def _guess_password(lab: Lab, n: Narrator) -> None:
    assert lab.sshd is not None
    argv = password_attempt_argv(lab.addr("server"), "root", port=lab.sshd.port)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSHPASS": WRONG_PASSWORD}
    n.command("attacker", ["sshpass", "-p", WRONG_PASSWORD, "ssh", f"root@{lab.addr('server')}"])
    try:
        done = lab.run("attacker", argv, env=env, timeout=30)
    except subprocess.TimeoutExpired:
        n.output("(no answer)")
        return
    n.output(done.stderr.strip() or f"exit {done.returncode}")


@dataclass
class Scene:
    """What the chapters share: the lab, the narrator, the daemon and how much of its log has
    been shown."""

    lab: Lab
    n: Narrator
    guardian: GuardianHandle | None = None
    shown: int = 0
    knocked: float = 0.0  # monotonic time of the client's first knock
    spa_keys: dict[str, str] = field(default_factory=dict)

    @property
    def daemon(self) -> GuardianHandle:
        assert self.guardian is not None, "the daemon is not started yet"
        return self.guardian

    def daemon_says(self) -> None:
        text = self.daemon.log_text()
        for line in text[self.shown :].splitlines():
            self.n.output(f"daemon: {line}", style="magenta")
        self.shown = len(text)

    def granted(self, host: str) -> bool:
        return self.lab.addr(host) in allow_elements(self.lab, "server")

    def banned(self, host: str) -> bool:
        return self.lab.addr(host) in set_elements(self.lab, "server", "ban4")


def _cast(s: Scene) -> None:
    table = Table("host", "IPv4", "IPv6", "role", title="the lab (network namespaces)")
    roles = {
        "server": "sshd + ssh-guardian",
        "client": "knows the knock and the SPA key",
        "client2": "knows nothing",
        "attacker": "scans, sniffs, guesses passwords",
    }
    for host in s.lab.hosts:
        table.add_row(host, s.lab.addr(host, 4), s.lab.addr(host, 6), roles.get(host, ""))
    s.n.console.print(table)


def _unguarded(s: Scene) -> None:
    s.n.chapter("1. An unguarded sshd: everyone sees it")
    s.n.check("port 22 is open to a scan", _scan(s.lab, s.n, "attacker", [22])[22] == "open")


def _start(s: Scene) -> None:
    lab, n = s.lab, s.n
    n.chapter("2. Start ssh-guardian on the server")
    stanza, s.spa_keys = _spa_keys(lab, n)
    config = DEMO_CONFIG.format(
        window=WINDOW, linger=LINGER, spa_port=SPA_PORT, stanza=stanza, maxretry=MAXRETRY
    )
    n.say(f"door 'ssh': knock 7000/tcp, 8000/tcp, 9000/udp within 5 s; window {WINDOW:g} s")
    n.say(f"SPA on udp/{SPA_PORT}; a ban after {MAXRETRY} failed logins (journal, btmp)")
    s.guardian = start_guardian(lab, config)
    s.daemon_says()
    states = _scan(lab, n, "attacker", [22, 23])
    n.check("port 22 now looks exactly like unused port 23", states[22] == states[23] == "closed")
    n.check("ssh from the client is refused", not _ssh(lab, n, "client"))


def _knock_opens(s: Scene) -> None:
    lab, n = s.lab, s.n
    n.chapter("3. The client knocks (Debian's knock client)")
    n.check("knock sent", _knock(lab, n, "client", OPEN_SEQUENCE))
    s.knocked = time.monotonic()
    wait_until(lambda: s.granted("client"), 3.0)
    s.daemon_says()
    grants = _set(lab, n, "allow4")
    n.check(
        f"a grant for {lab.addr('client')} only, with a kernel timeout",
        list(grants) == [lab.addr("client")],
    )
    n.check("client2 (did not knock): refused", not _ssh(lab, n, "client2"))


def _session_holds(s: Scene) -> None:
    lab, n, client, server = s.lab, s.n, s.lab.addr("client"), s.lab.addr("server")
    n.chapter("4. Open while used: the session holds it, its end closes it")
    assert lab.sshd is not None
    hold = max(3, round(s.knocked + WINDOW + PAST_WINDOW + 2.0 - time.monotonic()))
    n.command("client", ["ssh", "-i", "KEY", f"root@{server}", f"sleep {hold}", "&"])
    session = lab.popen("client", ssh_argv(lab.sshd, server, ["sleep", str(hold)]))
    time.sleep(max(0.0, s.knocked + WINDOW + PAST_WINDOW - time.monotonic()))
    n.say(f"{WINDOW + PAST_WINDOW:g} s after the knock, {PAST_WINDOW:g} s past its window:")
    n.check("the session still holds the client's grant", client in _set(lab, n, "allow4"))
    n.say("[dim](its kernel timeout is a lease the daemon renews while a session lives: if the")
    n.say("[dim] daemon died, access would lapse by itself and the session would go on)[/dim]")
    n.command("server", ["guardian", "sessions", "--json"])
    sessions = [x for x in _cli_json(s.daemon, "sessions") or [] if x.get("source") == client]
    for x in sessions:
        n.output(json.dumps({k: x.get(k) for k in ("source", "dport", "user", "authenticated")}))
    n.check(
        "the daemon knows it as an authenticated sshd session (journal)",
        any(x.get("authenticated") for x in sessions),
    )
    s.daemon_says()
    ended = session.wait(timeout=hold + 30)
    n.say(f"the session ends (ssh exit {ended}); the grant lingers {LINGER:g} s, then:")
    closed = wait_until(lambda: not s.granted("client"), LINGER + 10.0)
    s.daemon_says()
    n.check(
        "the grant closed "
        + ("late or never" if closed is None else f"{closed:.1f} s after the session ended"),
        closed is not None and closed <= LINGER + LINGER_SLACK,
    )
    n.check("ssh from the client is refused again", not _ssh(lab, n, "client"))


def _scan_opens_nothing(s: Scene) -> None:
    lab, n, server = s.lab, s.n, s.lab.addr("server")
    n.chapter("5. A scan walks over the knock ports: nothing opens")
    n.command("attacker", ["nmap", "-Pn", "-sS", "-r", "-p", "6990-9010", server])
    lab.run("attacker", ["nmap", "-Pn", "-n", "-sS", "-r", "-p", "6990-9010", server], timeout=120)
    s.daemon_says()
    n.check("no grant for the attacker", not s.granted("attacker"))


def _close_sequence(s: Scene) -> None:
    lab, n = s.lab, s.n
    n.chapter("6. The close sequence closes at once")
    n.check("knock sent", _knock(lab, n, "client", OPEN_SEQUENCE))
    n.check("granted", wait_until(lambda: s.granted("client"), 3.0) is not None)
    n.check("close knock sent", _knock(lab, n, "client", CLOSE_SEQUENCE))
    wait_until(lambda: not s.granted("client"), 3.0)
    s.daemon_says()
    n.check("the grant is gone", lab.addr("client") not in _set(lab, n, "allow4"))
    n.check("port 22 looks closed again", _scan(lab, n, "client", [22])[22] == "closed")


def _spa(s: Scene) -> None:
    lab, n, server = s.lab, s.n, s.lab.addr("server")
    n.chapter("7. SPA: one encrypted packet from the stock fwknop client")
    captured = lab.workdir / "captured.spa"
    n.check("fwknop sent its packet", _fwknop(lab, n, s.spa_keys, captured))
    n.check("granted", wait_until(lambda: s.granted("client"), 3.0) is not None)
    s.daemon_says()
    n.check("client: ssh with a key logs in", _ssh(lab, n, "client"))
    n.say("The attacker captured that packet and replays it from its own address:")
    n.command("attacker", ["send", "captured.spa", "to", f"udp/{SPA_PORT}"])
    send = [sys.executable, "-I", "-S", "-c", _SEND_DATAGRAM, server, str(SPA_PORT), str(captured)]
    lab.run("attacker", send, timeout=30, check=True)
    refused = f"spa_refused source={lab.addr('attacker')} door=spa (replay"
    n.check("refused as a replay", s.daemon.wait_for_log(refused, 5.0, after=s.shown))
    s.daemon_says()
    n.check("no grant for the attacker", not s.granted("attacker"))


def _ban(s: Scene) -> None:
    lab, n = s.lab, s.n
    n.chapter("8. Ban the brute force")
    n.say("Knocks cross the network in the clear: the attacker replays the client's...")
    n.check("knock sent", _knock(lab, n, "attacker", OPEN_SEQUENCE))
    granted = wait_until(lambda: s.granted("attacker"), 3.0) is not None
    n.check("granted: a knock cannot tell who sends it", granted)
    n.say(f"...and guesses root's password, {MAXRETRY} times:")
    for _ in range(MAXRETRY):
        _guess_password(lab, n)
    banned = wait_until(lambda: s.banned("attacker"), 5.0)
    s.daemon_says()
    n.check(
        f"banned after {MAXRETRY} failures, with a kernel timeout",
        s.banned("attacker") and lab.addr("attacker") in _set(lab, n, "ban4"),
    )
    if banned is not None:
        n.say(f"  [dim](in the ban set {banned * 1000:.0f} ms after the last attempt ended)[/dim]")
    n.check("the ban closed the attacker's grant", not s.granted("attacker"))
    n.check("its next ssh gets no answer: dropped, on every port", not _ssh(lab, n, "attacker"))
    before = _counter(s, "knocks_banned")
    n.check("knock sent", _knock(lab, n, "attacker", OPEN_SEQUENCE))
    ignored = wait_until(lambda: _counter(s, "knocks_banned") >= before + len(OPEN_SEQUENCE), 3.0)
    n.check(
        "a banned source's knocks are ignored", ignored is not None and not s.granted("attacker")
    )
    n.command("server", ["guardian", "bans"])
    n.output(_cli(s.daemon, "bans"))


def _status(s: Scene) -> None:
    n = s.n
    n.chapter("9. See it: guardian status")
    n.command("server", ["guardian", "status", "--once"])
    n.output(_cli(s.daemon, "status", "--once", width=n.console.width - 2), style="")
    n.say("[dim](without --once it is live; --json gives the same to scripts)[/dim]")


def _stop(s: Scene) -> None:
    n = s.n
    n.chapter("10. Stop the daemon")
    n.check("SIGTERM: clean exit", s.daemon.stop() == 0)
    s.daemon_says()
    n.check(
        "the ban stays in the kernel until its timeout",
        s.lab.addr("attacker") in _set(s.lab, n, "ban4"),
    )


CHAPTERS = (
    _cast,
    _unguarded,
    _start,
    _knock_opens,
    _session_holds,
    _scan_opens_nothing,
    _close_sequence,
    _spa,
    _ban,
    _status,
    _stop,
)


def _counter(s: Scene, name: str) -> int:
    doc = _cli_json(s.daemon, "status")
    counters = doc.get("counters", {}) if isinstance(doc, dict) else {}
    value = counters.get(name, 0)
    return value if isinstance(value, int) else 0


def run_demo(fast: bool = False) -> int:
    """Build the lab, tell the story, remove the lab. 0 when every claim held."""
    console = Console(highlight=False)
    if os.geteuid() != 0:
        console.print("[red]the demo needs root (network namespaces, nftables)[/red]")
        return 2
    n = Narrator(console, pause=0.0 if fast else 1.5)
    cleanup_stale()
    journald = ensure_journald()
    if not journald.syslog_to_journal:
        console.print("[red]/dev/log does not reach journald: sshd's lines would be lost[/red]")
        return 1
    try:
        with Lab() as lab:
            var_log = lab.workdir / "var_log"
            prepare_var_log(var_log)
            start_sshd(lab, log_to_stderr=False, var_log=var_log)
            try:
                scene = Scene(lab, n)
                for chapter in CHAPTERS:
                    chapter(scene)
            except Exception as exc:
                n.failures.append(f"{type(exc).__name__}: {exc}")
                console.print(f"[red]demo aborted: {exc}[/red]")
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted; the lab has been removed[/yellow]")
        return 130
    console.rule()
    if n.failures:
        console.print(f"[red]{len(n.failures)} claim(s) did not hold:[/red]")
        for claim in n.failures:
            console.print(f"  - {claim}")
        return 1
    console.print("[green]every claim held; the lab has been removed[/green]")
    return 0
