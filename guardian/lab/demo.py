# The narrated demo (`guardian demo`, scripts/demo.sh): a lab with a real sshd guarded by the
# real daemon, and the story told by real tools — nmap sees the port closed, the `knock` client
# opens it for that one client, ssh logs in, a second client stays out, a scan of the knock ports
# opens nothing, the close sequence closes it again. Every claim is checked as it is shown, so the
# demo fails (exit 1) instead of narrating something that did not happen.
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from guardian.lab.guardian_proc import GuardianHandle, start_guardian
from guardian.lab.netns import Lab, cleanup_stale
from guardian.lab.nft import allow_elements
from guardian.lab.probes import knock, nmap_port_state
from guardian.lab.sshd import ssh_argv, start_sshd

OPEN_SEQUENCE = ("7000/tcp", "8000/tcp", "9000/udp")
CLOSE_SEQUENCE = ("9000/tcp", "8000/tcp", "7000/tcp")
DEMO_CONFIG = """\
[guard]
ports = [22]
trusted = []
answer = "reset"

[access]
window = "30s"

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]
timeout = "5s"
tcp_flags = "syn"
close = ["9000/tcp", "8000/tcp", "7000/tcp"]
"""


@dataclass
class Narrator:
    console: Console
    pause: float
    failures: list[str] = field(default_factory=list)

    def chapter(self, title: str) -> None:
        time.sleep(self.pause)
        self.console.rule(f"[bold]{title}")

    def say(self, text: str) -> None:
        self.console.print(text)

    def command(self, host: str, argv: Sequence[str]) -> None:
        self.console.print(f"[dim]{host}$[/dim] [cyan]{' '.join(argv)}[/cyan]")

    def check(self, claim: str, ok: bool) -> None:
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.console.print(f"  {mark} {claim}")
        if not ok:
            self.failures.append(claim)


def _ssh(lab: Lab, n: Narrator, host: str, v: int = 4) -> bool:
    assert lab.sshd is not None
    argv = ssh_argv(
        lab.sshd, lab.addr("server", v), ["echo", "logged in as $USER from $SSH_CLIENT"]
    )
    n.command(host, ["ssh", "-i", "KEY", f"root@{lab.addr('server', v)}", "echo ..."])
    done = lab.run(host, argv, timeout=20)
    text = (done.stdout or done.stderr).strip() or f"exit {done.returncode}"
    n.say(f"  [dim]{text}[/dim]")
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
    argv = ["knock", "-d", "50", target, *(s.replace("/", ":") for s in steps)]
    n.command(host, argv)
    return knock(lab, host, target, steps, delay_ms=50).returncode == 0


def _grants(lab: Lab, n: Narrator) -> dict[str, float | None]:
    grants = allow_elements(lab, "server")
    n.command("server", ["nft", "list", "set", "inet", "guardian", "allow4"])
    if not grants:
        n.say("  [dim](no grants)[/dim]")
    for addr, expires in grants.items():
        left = "permanent" if expires is None else f"expires in {expires:.0f}s"
        n.say(f"  {addr}  [dim]{left}[/dim]")
    return grants


def _daemon_says(n: Narrator, guardian: GuardianHandle, since: int) -> int:
    text = guardian.log_text()
    for line in text[since:].splitlines():
        n.say(f"  [magenta]daemon:[/magenta] {line}")
    return len(text)


def _story(lab: Lab, n: Narrator) -> None:
    server, client = lab.addr("server"), lab.addr("client")
    table = Table("host", "IPv4", "IPv6", "role", title="the lab (network namespaces)")
    roles = {
        "server": "sshd + ssh-guardian",
        "client": "knows the knock",
        "client2": "does not knock",
        "attacker": "scans",
    }
    for host in lab.hosts:
        table.add_row(host, lab.addr(host, 4), lab.addr(host, 6), roles.get(host, ""))
    n.console.print(table)

    n.chapter("1. An unguarded sshd: everyone sees it")
    n.check("port 22 is open to a scan", _scan(lab, n, "attacker", [22])[22] == "open")

    n.chapter("2. Start ssh-guardian on the server")
    n.say("door 'ssh': knock 7000/tcp, 8000/tcp, 9000/udp within 5 s; window 30 s")
    guardian = start_guardian(lab, DEMO_CONFIG)
    seen = _daemon_says(n, guardian, 0)
    states = _scan(lab, n, "attacker", [22, 23])
    n.check("port 22 now looks exactly like unused port 23", states[22] == states[23] == "closed")
    n.check("ssh from the client is refused", not _ssh(lab, n, "client"))

    n.chapter("3. The client knocks (Debian's knock client)")
    n.check("knock sent", _knock(lab, n, "client", OPEN_SEQUENCE))
    time.sleep(0.2)
    seen = _daemon_says(n, guardian, seen)
    grants = _grants(lab, n)
    n.check(f"a grant for {client} only, with a kernel timeout", list(grants) == [client])

    n.chapter("4. The client logs in; nobody else does")
    n.check("client: ssh with a key logs in", _ssh(lab, n, "client"))
    n.check("client2 (did not knock): refused", not _ssh(lab, n, "client2"))

    n.chapter("5. A scan walks over the knock ports: nothing opens")
    n.command("attacker", ["nmap", "-Pn", "-sS", "-r", "-p", "6990-9010", server])
    lab.run("attacker", ["nmap", "-Pn", "-n", "-sS", "-r", "-p", "6990-9010", server], timeout=120)
    seen = _daemon_says(n, guardian, seen)
    n.check("the attacker still cannot ssh in", not _ssh(lab, n, "attacker"))

    n.chapter("6. The client sends the close sequence")
    n.check("close knock sent", _knock(lab, n, "client", CLOSE_SEQUENCE))
    time.sleep(0.2)
    seen = _daemon_says(n, guardian, seen)
    n.check("the grant is gone", client not in _grants(lab, n))
    n.check("ssh from the client is refused again", not _ssh(lab, n, "client"))
    n.check("port 22 looks closed again", _scan(lab, n, "client", [22])[22] == "closed")

    n.chapter("7. Stop the daemon")
    n.check("SIGTERM: clean exit", guardian.stop() == 0)
    _daemon_says(n, guardian, seen)


def run_demo(fast: bool = False) -> int:
    """Build the lab, tell the story, remove the lab. 0 when every claim held."""
    console = Console(highlight=False)
    if os.geteuid() != 0:
        console.print("[red]the demo needs root (network namespaces, nftables)[/red]")
        return 2
    n = Narrator(console, pause=0.0 if fast else 1.5)
    cleanup_stale()
    try:
        with Lab() as lab:
            start_sshd(lab)
            try:
                _story(lab, n)
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
