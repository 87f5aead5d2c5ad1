# A real OpenSSH server inside a lab namespace, with its own throw-away host key, client key and
# authorized_keys (all in the lab's work dir), plus the ssh client argv that logs in with that key.
# The host's own sshd, its config and root's ~/.ssh are never read or touched.
# With `var_log`, sshd runs with a lab directory bind-mounted over /var/log in its own mount
# namespace, so the btmp (and wtmp) records it writes go to the lab's files, never the host's.
from __future__ import annotations

import grp
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from guardian.lab.netns import Lab, LabError

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
# Run by the lab's own interpreter inside `ip netns exec` (which gives every command a private,
# slave mount namespace): bind the lab directory over /var/log there only, then become sshd.
_BIND_VAR_LOG_AND_EXEC = (
    "import os, subprocess, sys\n"
    "subprocess.run(['mount', '--bind', sys.argv[1], '/var/log'], check=True)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
_LISTEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class SshdHandle:
    """A running lab sshd and the files a client needs to log in to it."""

    lab: Lab
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    directory: Path
    config_path: Path
    client_key: Path  # private key whose public half is in authorized_keys (for root)
    log_path: Path  # sshd's stderr (-e); empty when it logs to syslog instead

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the listener and wait (bounded); SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def root_account_locked(shadow: Path = Path("/etc/shadow")) -> bool:
    """True when root's password field is locked ("!..."): sshd then refuses root unless UsePAM."""
    try:
        for line in shadow.read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "root" and len(fields) > 1:
                return fields[1].startswith("!") or fields[1] == "*LK*"
    except OSError:
        pass
    return False


def prepare_var_log(directory: Path) -> Path:
    """A lab /var/log for start_sshd(var_log=...): the directory with an empty btmp that sshd
    will write (root-owned, group utmp, 0660 as on Debian: sshd skips a btmp with "other"
    bits or another owner). Returns the btmp path."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    btmp = directory / "btmp"
    fd = os.open(btmp, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    try:
        gid = grp.getgrnam("utmp").gr_gid
    except KeyError:
        gid = 0
    os.chown(btmp, 0, gid)
    os.chmod(btmp, 0o660)
    return btmp


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _render_config(options: Mapping[str, str | Sequence[str]]) -> str:
    lines: list[str] = []
    for key, value in options.items():
        values = [value] if isinstance(value, str) else list(value)
        lines.extend(f"{key} {v}" for v in values)
    return "\n".join(lines) + "\n"


def _listening(pid: int, port: int) -> tuple[bool, bool]:
    """(v4, v6) listeners on `port` in the namespace of `pid`, from /proc/PID/net/tcp{,6}."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            rows = []
        hit = False
        for row in rows:
            cols = row.split()
            # cols[1] = "ADDR:PORT" in hex, cols[3] = state; 0A is LISTEN.
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                hit = True
                break
        found.append(hit)
    return found[0], found[1]


def start_sshd(
    lab: Lab,
    host: str = "server",
    *,
    port: int = 22,
    login_grace_time: int | None = None,
    extra_config: Mapping[str, str | Sequence[str]] | None = None,
    use_pam: bool | None = None,
    log_to_stderr: bool = True,
    var_log: Path | None = None,
    timeout: float = _LISTEN_TIMEOUT,
) -> SshdHandle:
    """Start `sshd -D` in `host` and wait until it listens on v4 and v6.

    extra_config entries replace the default option of the same name (case-insensitive); a list
    value repeats the keyword. use_pam=None means "no", unless root's account is locked, where
    sshd without PAM would refuse root. log_to_stderr=False drops `-e`, so sshd logs to syslog
    (/dev/log) for the journald/rsyslog labs. var_log: a directory (see prepare_var_log) that
    sshd sees as /var/log, so its btmp records land there and not in the host's /var/log/btmp.
    """
    directory = lab.workdir / f"sshd-{host}-{port}"
    directory.mkdir(mode=0o700)
    host_key = directory / "ssh_host_ed25519_key"
    client_key = directory / "client_ed25519"
    _keygen(host_key, f"guardian-lab-host@{host}")
    _keygen(client_key, "guardian-lab-client")
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    if use_pam is None:
        use_pam = root_account_locked()

    options: dict[str, str | Sequence[str]] = {
        "Port": str(port),
        "ListenAddress": ["0.0.0.0", "::"],  # noqa: S104 - inside the lab namespace only
        "HostKey": str(host_key),
        "PidFile": str(directory / "sshd.pid"),
        "AuthorizedKeysFile": str(authorized),
        "PermitRootLogin": "prohibit-password",
        "PasswordAuthentication": "yes",  # later labs brute-force it
        "KbdInteractiveAuthentication": "no",
        "UsePAM": "yes" if use_pam else "no",
        "StrictModes": "no",
        "LogLevel": "VERBOSE",
        "SyslogFacility": "AUTH",
        "UseDNS": "no",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "Subsystem": "sftp /usr/lib/openssh/sftp-server",  # scp uses sftp since OpenSSH 9.0
    }
    if login_grace_time is not None:
        options["LoginGraceTime"] = str(login_grace_time)
    for key, value in (extra_config or {}).items():
        for existing in [k for k in options if k.lower() == key.lower()]:
            del options[existing]
        options[key] = value
    config_path = directory / "sshd_config"
    config_path.write_text(_render_config(options))

    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    check = subprocess.run(
        [SSHD, "-t", "-f", str(config_path)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise LabError(f"sshd_config rejected: {check.stderr.strip()}")

    log_path = directory / "sshd.log"
    argv = [SSHD, "-D", "-f", str(config_path)]
    if log_to_stderr:
        argv.insert(2, "-e")
    if var_log is not None:
        argv = [sys.executable, "-I", "-c", _BIND_VAR_LOG_AND_EXEC, str(var_log), *argv]
    with log_path.open("ab") as log:
        proc = lab.popen(host, argv, stdout=log, stderr=log)
    handle = SshdHandle(lab, host, port, proc, directory, config_path, client_key, log_path)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"sshd in {host} exited ({proc.returncode}): {handle.log_text()}")
        if all(_listening(proc.pid, port)):
            if host == "server" or lab.sshd is None:
                lab.sshd = handle
            return handle
        time.sleep(0.02)
    handle.stop()
    raise LabError(f"sshd in {host} did not listen on port {port} within {timeout}s")


def password_attempt_argv(
    target_addr: str, user: str, *, port: int = 22, source: str | None = None
) -> list[str]:
    """A password login that fails: ssh under sshpass, the password taken from $SSHPASS (never
    the command line), one prompt, no keys. `source` binds the client to that address (-b), for
    attackers with several addresses. The caller sets SSHPASS to a wrong password."""
    bind = ("-b", source) if source else ()
    return [
        "sshpass",
        "-e",
        "ssh",
        "-F",
        "/dev/null",
        *bind,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
        "-l",
        user,
        "--",
        target_addr,
        "true",
    ]


def ssh_argv(
    handle: SshdHandle,
    target_addr: str,
    command: Sequence[str] = ("true",),
    extra_opts: Sequence[str] = (),
    *,
    user: str = "root",
) -> list[str]:
    """An ssh client argv that logs in to the lab sshd with its key, non-interactively.

    `-F /dev/null` and IdentitiesOnly keep the caller's ssh config and agent out of the lab;
    extra_opts come before the defaults, so `("-o", "ConnectTimeout=1")` wins (ssh takes the first
    value it sees).
    """
    return [
        "ssh",
        "-F",
        "/dev/null",
        *extra_opts,
        "-i",
        str(handle.client_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "ConnectionAttempts=1",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(handle.port),
        "-l",
        user,
        "--",
        target_addr,
        *command,
    ]


def try_ssh(
    lab: Lab,
    host: str,
    target: str,
    handle: SshdHandle | None = None,
    *,
    command: Sequence[str] = ("true",),
    extra_opts: Sequence[str] = (),
    timeout: float = 20.0,
) -> bool:
    """True when an ssh key login from `host` to address `target` runs `command` successfully.

    handle defaults to the lab's sshd (lab.sshd).
    """
    handle = handle or lab.sshd
    if handle is None:
        raise LabError("no sshd started in this lab")
    try:
        done = lab.run(host, ssh_argv(handle, target, command, extra_opts), timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0
