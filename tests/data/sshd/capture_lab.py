# Capture real sshd log lines from this machine's OpenSSH (Debian 12: 9.2p1) for the annotated
# corpus: `sudo .venv/bin/python tests/data/sshd/capture_lab.py [OUT]` (root: network namespaces).
#
# Two network namespaces gp7-srv / gp7-cli joined by a veth pair (192.0.2.1-2/24, 2001:db8::1-2/64),
# a throw-away sshd in gp7-srv whose syslog() goes to our own /dev/log (a unix datagram socket
# bind-mounted over /dev/log in a private mount namespace, so nothing reaches the host's journal;
# /var/log/btmp likewise: sshd's btmp records are captured to OUT.btmp),
# and a client driving scenarios: wrong passwords (OpenSSH's SSH_ASKPASS, no sshpass needed),
# invalid users, wrong keys then the right one, MaxAuthTries, pre-auth closes, banner garbage, a
# cipher mismatch, LoginGraceTime expiry, a real session. Each raw datagram is written out with the
# scenario it belongs to; turning them into annotated corpus lines is done by hand (see debian12-*).
# Everything is removed on exit, on failure too.
from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SRV, CLI = "gp7-srv", "gp7-cli"
SRV4, CLI4, SRV6 = "192.0.2.1", "192.0.2.2", "2001:db8::1"
PY = "/usr/bin/python3"
SSH_OPTS = ("ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null")  # fmt: skip
RUNS = ((True, "INFO", 60), (False, "VERBOSE", 60), (True, "INFO", 3), (False, "VERBOSE", 3))


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw: object) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv}: {done.stderr.strip()}")
    return str(done.stdout)


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@contextlib.contextmanager
def namespaces() -> Iterator[None]:
    try:
        for ns in (SRV, CLI):
            run(["ip", "netns", "add", ns])
            run(in_ns(ns, ["ip", "link", "set", "lo", "up"]))
        run(
            [
                "ip",
                "link",
                "add",
                "gp7v0",
                "netns",
                SRV,
                "type",
                "veth",
                "peer",
                "gp7v1",
                "netns",
                CLI,
            ]
        )
        for ns, dev, v4, v6 in ((SRV, "gp7v0", SRV4, SRV6), (CLI, "gp7v1", CLI4, "2001:db8::2")):
            run(in_ns(ns, ["ip", "addr", "add", f"{v4}/24", "dev", dev]))
            run(in_ns(ns, ["ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad"]))
            run(in_ns(ns, ["ip", "link", "set", dev, "up"]))
        yield
    finally:
        for ns in (SRV, CLI):
            for pid in run(["ip", "netns", "pids", ns], check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            run(["ip", "netns", "del", ns], check=False)


class Capture:
    """Our /dev/log: a unix datagram socket the lab sshd logs to, read by a thread all the time
    (a unix datagram queue holds only ~10 messages; a full one blocks sshd's syslog())."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # noqa: S103 - our /dev/log socket, in our own temp dir
        self.raw: list[tuple[float, str]] = []
        self.steps: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if ready:
                data = self.sock.recv(8192)
                self.raw.append((time.monotonic(), data.decode("utf-8", "replace").rstrip("\n")))

    def drain(self, label: str, settle: float = 1.0) -> None:
        """Wait `settle` seconds, then close the step: lines so far belong to `label`."""
        time.sleep(settle)
        self.steps.append((time.monotonic(), label))

    @property
    def lines(self) -> list[tuple[str, str]]:
        out = []
        for when, line in self.raw:
            label = next((lab for end, lab in self.steps if when <= end), "after the last step")
            out.append((label, line))
        return out


def sshd_config(work: Path, use_pam: bool, level: str, grace: int) -> Path:
    key = work / "host_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    config = work / f"sshd_config_{use_pam}_{level}_{grace}"
    config.write_text(
        "\n".join(
            [
                "Port 22",
                "ListenAddress 0.0.0.0",
                "ListenAddress ::",
                f"HostKey {key}",
                f"PidFile {work}/sshd.pid",
                f"AuthorizedKeysFile {work}/authorized_keys",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                f"UsePAM {'yes' if use_pam else 'no'}",
                "StrictModes no",
                f"LogLevel {level}",
                "SyslogFacility AUTH",
                f"LoginGraceTime {grace}",
                "UseDNS no",
                "",
            ]
        )
    )
    return config


def client_keys(work: Path) -> tuple[Path, list[Path]]:
    good = work / "good_key"
    bad = [work / f"bad_key{i}" for i in range(7)]
    for key in (good, *bad):
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    (work / "authorized_keys").write_text(good.with_suffix(".pub").read_text())
    return good, bad


def ssh(
    work: Path, target: str, user: str, opts: Sequence[str], *, password: str | None = None
) -> None:
    env = dict(os.environ)
    argv = [*SSH_OPTS, "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", *opts, "-l", user, target,
            "true"]  # fmt: skip
    if password is not None:
        askpass = work / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
        askpass.chmod(0o755)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            in_ns(CLI, argv),
            env=env,
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def raw(target: str, payload: bytes, hold: float) -> None:
    code = (
        "import socket,sys,time\n"
        f"s=socket.create_connection(({target!r},22),timeout=5)\n"
        f"s.sendall({payload!r})\n"
        f"time.sleep({hold})\n"
        "s.close()\n"
    )
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(in_ns(CLI, [PY, "-c", code]), capture_output=True, timeout=30, check=False)


def scenarios(work: Path, cap: Capture, tag: str, grace: int) -> None:
    def step(label: str, settle: float = 1.5) -> None:
        cap.drain(f"{tag}: {label}", settle)

    if grace < 10:  # this sshd only shows LoginGraceTime's end
        raw(SRV4, b"SSH-2.0-slow\r\n", grace + 2.0)
        step("banner then silence past LoginGraceTime", 2.0)
        raw(SRV6, b"", grace + 2.0)
        step("TCP connect, silence past LoginGraceTime (v6)", 2.0)
        return
    good, bad = client_keys(work)
    pw = [
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=2",
    ]
    keys_only = [
        "-o",
        "PreferredAuthentications=publickey",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
    ]

    ssh(work, SRV4, "nosuchuser", pw, password="wrong1")  # noqa: S106 - a wrong password, on purpose
    step("invalid user, 2 wrong passwords (v4)", 4.5)
    ssh(work, SRV4, "root", pw, password="wrong2")  # noqa: S106 - a wrong password, on purpose
    step("valid user root, 2 wrong passwords (v4)", 4.5)
    ssh(work, SRV6, "admin", pw, password="wrong3")  # noqa: S106 - a wrong password, on purpose
    step("invalid user, 2 wrong passwords (v6)", 4.5)
    ssh(work, SRV4, "root", [*keys_only, "-i", str(bad[0]), "-i", str(bad[1]), "-i", str(good)])
    step("root: two wrong keys, then the right one")
    ssh(work, SRV4, "root", [*keys_only, *(a for k in bad for a in ("-i", str(k)))])
    step("root: seven wrong keys (MaxAuthTries)")
    ssh(work, SRV4, "nosuchuser", [*keys_only, "-i", str(bad[0])])
    step("invalid user, one key")
    ssh(work, SRV6, "root", [*keys_only, "-i", str(good)])
    step("root: accepted key, session, logout (v6)")
    argv = [*SSH_OPTS, *keys_only, "-i", str(good), "-l", "root", SRV4, "sleep", "30"]
    killed = subprocess.Popen(
        in_ns(CLI, argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)
    for pid in run(["ip", "netns", "pids", CLI], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)  # the client dies mid-session: TCP closes, no SSH disconnect
    killed.wait(10)
    step("root: session, then the client is killed", 2.0)
    raw(SRV4, b"", 0.2)
    step("TCP connect, close without a banner")
    raw(SRV4, b"SSH-2.0-scanner\r\n", 0.5)
    step("banner sent, close before kex")
    raw(SRV4, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.5)
    step("HTTP on the ssh port")
    ssh(work, SRV4, "root", ["-o", "Ciphers=aes128-cbc"])
    step("cipher mismatch")


def main(out: Path) -> None:
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gp7-capture-"))
    os.chmod(work, 0o755)  # noqa: S103 - sshd's privilege-separated side reads keys here
    try:
        cap = Capture(work / "devlog")
        btmp = work / "btmp"
        btmp.touch(mode=0o600)  # sshd writes btmp only if it exists, root's, no group/other bits
        with namespaces():
            for use_pam, level, grace in RUNS:
                config = sshd_config(work, use_pam, level, grace)
                # Our own /dev/log and btmp, in a private mount namespace: nothing of the lab
                # reaches the host's journal or /var/log/btmp.
                script = (
                    f"mount --bind {work}/devlog /dev/log && mount --bind {btmp} /var/log/btmp"
                    f" && exec /usr/sbin/sshd -D -f {config}"
                )
                proc = subprocess.Popen(in_ns(SRV, ["unshare", "-m", "sh", "-c", script]))
                try:
                    time.sleep(1.0)
                    pam = "yes" if use_pam else "no"
                    tag = f"UsePAM {pam}, LogLevel {level}, LoginGraceTime {grace}"
                    scenarios(work, cap, tag, grace)
                finally:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(5)
                    cap.drain("shutdown", 0.5)
        cap.stop.set()
        version = run(["dpkg-query", "-W", "-f", "${Version}", "openssh-server"], check=False)
        with out.open("w") as fh:
            fh.write(f"# raw /dev/log datagrams, openssh-server {version}\n")
            for label, line in cap.lines:
                fh.write(f"{label}\t{line}\n")
        shutil.copyfile(btmp, out.with_suffix(".btmp"))
        print(f"{len(cap.lines)} lines -> {out}, btmp -> {out.with_suffix('.btmp')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/gp7-capture.tsv"))
