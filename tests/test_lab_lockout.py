# Lockout (issue 8, item 5), against the product as shipped: no config reload, operator ban, brute
# force or crash cuts a live authenticated ssh session or bans a trusted network. The real daemon
# in the server namespace guards a real sshd that logs to the machine's journald (require_auth =
# true: the session is one sshd accepted, not a bare TCP connection) and writes a lab btmp.
#
# The live session is interactive: the client writes a line every TICK seconds and the remote
# `cat` echoes it back. A session whose packets from the client are dropped (a ban of its source)
# stops echoing at once, even though the server could still send: a one-way ticker would not see
# that.
#
# What the product does, checked here:
# - SIGHUP with a config that does not load (syntax, unknown key, bad network, port out of range, a
#   door on the guarded port, the file gone): "reload refused", and `nft -j list table inet
#   guardian` is identical afterwards (rule handles included; only the elements' "expires"
#   countdowns are left out of the comparison). SIGHUP with a changed valid config: applied, the
#   session goes on, the client's grant stays (in_session), another login needs no new knock.
#   kill -9 right after that SIGHUP and a restart: the session goes on and is adopted. A SIGHUP
#   that changes [guard] ports keeps the session too, and its logout still closes the grant at
#   linger (the new conntrack watcher dumps the live connections first; a bug found here, fixed).
# - `guardian ban` of a network holding a trusted client is refused (bans_refused, a ban_refused
#   line) and the table is untouched; so is a ban of the trusted address itself. The command
#   says so and exits 1 (it used to say "done": a bug found here, fixed).
# - `guardian ban` of the address of a live authenticated session is carried out: an operator's
#   explicit choice (an intruder with a stolen key, say). It is counted (bans_of_sessions) and, as
#   nft_rules.py says, the ban rule comes before `ct state established`: the session stops at
#   once. `guardian unban` lets it go on. A SIGHUP that makes a banned address trusted lifts the
#   ban.
# - Failed logins from the address of a live session (the operator mistyping in a second terminal)
#   and from a trusted network never ban (failures_in_session, failures_trusted); an attacker's do.
# - `guardian check`, run over a real ssh session (SSH_CLIENT set by the real sshd), warns before
#   a config that would lock that operator out. (The rules themselves: tests/test_checks.py.)
#
# Isolation: journald is one per machine; the clients use 198.51.100.x addresses no other lab uses
# (their 192.0.2.x address is removed), so other labs' sshd lines never name them.
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from guardian.control_client import request
from guardian.lab import GuardianHandle, Lab, knock, set_elements, ssh_argv, start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.nft import flush_ruleset
from guardian.lab.sshd import SshdHandle, prepare_var_log, start_sshd
from tests.conftest import require_root, save_artifacts

pytestmark = pytest.mark.lab

PREFIX = "gfld"
HOSTS = ("server", "client", "client2", "attacker")
SERVER = "198.51.100.200"  # an extra address on the server; the clients reach it on-link
CLIENT = "198.51.100.211"  # the operator: knocks, holds the live session
TRUSTED_NET = "198.51.100.216/29"
CLIENT2 = "198.51.100.217"  # inside TRUSTED_NET
ATTACKER = "198.51.100.241"
PREFIXLEN = 24
OPEN = ("7000/tcp", "8000/tcp", "9000/udp")
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - wrong on purpose
MAXRETRY = 3
GRANT_WAIT = 3.0
STATE_WAIT = 5.0
TICK = 0.2  # the live session echoes a line this often
ALIVE_WAIT = 3.0  # a fresh echo arrives within this while the session lives
STALLED_FOR = 3.0  # no echo for this long (with the client writing): the session is cut
RESUME_WAIT = 20.0  # after an unban, TCP's retransmission (backed off) resumes it within this


def config_text(
    *,
    sequence: Sequence[str] = OPEN,
    door: str = "ssh",
    trusted: Sequence[str] = (TRUSTED_NET,),
    linger: str = "2s",
    doors: bool = True,
) -> str:
    text = f"""\
[guard]
ports = [22]
trusted = {json.dumps(list(trusted))}
answer = "reset"

[access]
window = "30s"
linger = "{linger}"
lease = "20s"
require_auth = true
login_grace_time = "10s"

[ban]
sources = ["journal", "btmp"]
maxretry = {MAXRETRY}
findtime = "10m"
bantime = "60s"
"""
    if doors:
        text += f"""
[[door]]
name = "{door}"
sequence = {json.dumps(list(sequence))}
timeout = "5s"
tcp_flags = "syn"
"""
    return text


GOOD = config_text()
# Configs that do not load, each for another reason; `None` stands for "the file is gone".
REFUSED: dict[str, str | None] = {
    "syntax": GOOD.replace('window = "30s"', 'window = "30s'),
    "unknown-key": GOOD.replace('answer = "reset"', 'answer = "reset"\ncolour = "blue"'),
    "bad-network": GOOD.replace(TRUSTED_NET, "198.51.100.300/29"),
    "port-out-of-range": GOOD.replace("ports = [22]", "ports = [22, 70000]"),
    "door-on-guarded-port": GOOD.replace('"8000/tcp"', '"22/tcp"'),
    "file-gone": None,
}


# -- the interactive session -----------------------------------------------------------------------


class Echo:
    """An ssh session running `cat`: a thread writes "ping N" every TICK seconds (at most 3000),
    another reads the echoes. Alive means an echo of a fresh line came back."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.first = ""
        self.echoes = 0
        self.last_echo = time.monotonic()
        self._up = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("up "):
                self.first = line
                self._up.set()
            elif line.startswith("ping "):
                self.echoes += 1
                self.last_echo = time.monotonic()

    def _write(self) -> None:
        assert self.proc.stdin is not None
        for n in range(3000):
            if self._stop.wait(TICK) or self.proc.poll() is not None:
                return
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(f"ping {n}\n".encode())
                self.proc.stdin.flush()

    def close(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def wait_up(self, timeout: float = 15.0) -> None:
        assert self._up.wait(timeout), "the ssh session never started"
        assert self.first.split()[1] == CLIENT, self.first

    @property
    def sport(self) -> int:
        return int(self.first.split()[2])  # "up ADDR PORT 22"

    def alive(self, timeout: float = ALIVE_WAIT) -> bool:
        """A new echo arrives within `timeout` (the client process still runs)."""
        before = self.echoes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.echoes > before:
                return self.proc.poll() is None
            time.sleep(0.05)
        return False

    def assert_alive(self, label: str) -> None:
        assert self.alive(), f"{label}: the live session stopped echoing (exit {self.proc.poll()})"


# -- the lab ---------------------------------------------------------------------------------------


def _ip(argv: Sequence[str]) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"ip {' '.join(argv)}: {done.stderr}"


@pytest.fixture(scope="module")
def lockout_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_root()
    journald = ensure_journald()
    assert journald.syslog_to_journal, "/dev/log does not reach journald: sshd's lines are lost"
    lab = Lab(hosts=HOSTS, prefix=PREFIX)
    failed_before = request.session.testsfailed
    try:
        lab.start()
        _ip(["-n", lab.ns("server"), "addr", "add", f"{SERVER}/{PREFIXLEN}", "dev", "eth0"])
        for host, address in (("client", CLIENT), ("client2", CLIENT2), ("attacker", ATTACKER)):
            _ip(["-n", lab.ns(host), "-4", "addr", "flush", "dev", "eth0"])
            _ip(["-n", lab.ns(host), "addr", "add", f"{address}/{PREFIXLEN}", "dev", "eth0"])
        var_log = lab.workdir / "var_log"  # start_guardian's --btmp is var_log/btmp: the same file
        prepare_var_log(var_log)
        start_sshd(lab, log_to_stderr=False, var_log=var_log)
        yield lab
    finally:
        if request.session.testsfailed != failed_before:
            print(f"lab artifacts kept in {save_artifacts(lab, 'lab_lockout')}")
        lab.close()


@dataclass
class Server:
    lab: Lab
    handles: list[GuardianHandle] = field(default_factory=list)
    sessions: list[Echo] = field(default_factory=list)

    @property
    def sshd(self) -> SshdHandle:
        assert self.lab.sshd is not None
        return self.lab.sshd

    def start(self, config: str = GOOD) -> GuardianHandle:
        handle = start_guardian(self.lab, config, ready_timeout=15.0)
        self.handles.append(handle)
        return handle

    def session(self) -> Echo:
        """Knock from client, then a live authenticated session that echoes."""
        done = knock(self.lab, "client", SERVER, OPEN)
        assert done.returncode == 0, f"knock failed: {done.stdout} {done.stderr}"
        assert wait_for(lambda: granted(self.lab, CLIENT), GRANT_WAIT), "the knock opened nothing"
        argv = ssh_argv(self.sshd, SERVER, ["sh", "-c", "'echo up $SSH_CLIENT; exec cat'"])
        proc = self.lab.popen("client", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        echo = Echo(proc)
        self.sessions.append(echo)
        echo.wait_up()
        echo.assert_alive("right after login")
        return echo

    def cleanup(self) -> None:
        for echo in self.sessions:
            echo.close()
        for handle in self.handles:
            handle.kill()
        flush_ruleset(self.lab, "server")
        self.lab.run("server", ["conntrack", "-F"])
        for state in self.lab.workdir.glob("state-server.db*"):
            state.unlink()


@pytest.fixture
def server(lockout_lab: Lab) -> Iterator[Server]:
    flush_ruleset(lockout_lab, "server")
    helper = Server(lockout_lab)
    try:
        yield helper
    finally:
        helper.cleanup()


# -- observing -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def granted(lab: Lab, address: str) -> bool:
    return address in set_elements(lab, "server", "allow4")


def banned(lab: Lab) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for name in ("ban4", "bannet4"):
        found.update(set_elements(lab, "server", name))
    return found


def snapshot(handle: GuardianHandle) -> dict[str, Any]:
    reply = request(str(handle.socket_path), {"cmd": "snapshot"}, timeout=10.0)
    doc: dict[str, Any] = reply["snapshot"]
    return doc


def counter(handle: GuardianHandle, name: str, want: int) -> int:
    """The counter once it has reached `want` (bounded wait: a snapshot may be up to 0.25 s old,
    control.py's cache); the caller asserts equality."""
    have = [0]

    def reached() -> bool:
        have[0] = int(snapshot(handle)["counters"].get(name, 0))
        return have[0] >= want

    wait_for(reached, STATE_WAIT, 0.1)
    time.sleep(0.3)  # anything counted twice arrives with the rest
    return int(snapshot(handle)["counters"].get(name, 0))


def grant_of(handle: GuardianHandle, address: str) -> dict[str, Any] | None:
    for grant in snapshot(handle)["grants"]:
        if grant["source"] == address:
            return dict(grant)
    return None


def wait_in_session(handle: GuardianHandle, sessions: int = 1) -> dict[str, Any]:
    seen: list[dict[str, Any] | None] = []

    def reached() -> bool:
        seen.append(grant_of(handle, CLIENT))
        grant = seen[-1]
        return grant is not None and (grant["state"], grant["sessions"]) == (
            "in_session",
            sessions,
        )

    assert wait_for(reached, STATE_WAIT, 0.1), f"grant of {CLIENT}: {seen[-1:]}"
    last = seen[-1]
    assert last is not None
    return last


def _drop_expires(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_expires(v) for k, v in node.items() if k != "expires"}
    if isinstance(node, list):
        return [_drop_expires(v) for v in node]
    return node


def table_json(lab: Lab) -> Any:
    """`nft -j list table inet guardian`, without the elements' "expires" countdowns (they run
    down between two listings; their "timeout" stays in)."""
    done = lab.run("server", ["nft", "-j", "list", "table", "inet", "guardian"], timeout=30)
    assert done.returncode == 0, done.stderr
    return _drop_expires(json.loads(done.stdout))


def guardian_cli(lab: Lab, handle: GuardianHandle, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "guardian", *args, "-s", str(handle.socket_path)]
    return lab.run("server", argv, timeout=30)


def ssh_ok(lab: Lab, host: str, command: Sequence[str] = ("true",)) -> bool:
    assert lab.sshd is not None
    argv = ssh_argv(lab.sshd, SERVER, command, ("-o", "ConnectTimeout=3"))
    try:
        return lab.run(host, argv, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wrong_password(lab: Lab, host: str) -> None:
    """One ssh login with a wrong password for root (one failure: journal and btmp each)."""
    argv = ["sshpass", "-e", "ssh", "-F", "/dev/null"]
    for option in (
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "PreferredAuthentications=password",
        "PubkeyAuthentication=no",
        "NumberOfPasswordPrompts=1",
        "ConnectTimeout=3",
        "LogLevel=ERROR",
    ):
        argv += ["-o", option]
    argv += ["-l", "root", SERVER, "true"]
    run_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    run_env["SSHPASS"] = WRONG_PASSWORD
    with contextlib.suppress(subprocess.TimeoutExpired):  # a ban may drop it mid-way
        done = lab.run(host, argv, env=run_env, timeout=20)
        assert "Permission denied" in done.stderr, done.stderr


def reload(handle: GuardianHandle, text: str | None, expect: str) -> None:
    """Replace (or remove) the daemon's config file, SIGHUP it, wait for `expect` in its log."""
    offset = len(handle.log_text())
    if text is None:
        handle.config_path.unlink()
    else:
        handle.config_path.write_text(text)
    handle.hup()
    assert handle.wait_for_log(expect, timeout=5.0, after=offset), handle.log_text()[offset:]
    assert handle.returncode is None, "the daemon exited on SIGHUP"


# -- reloads ---------------------------------------------------------------------------------------


def test_refused_reloads_touch_nothing_and_a_changed_config_keeps_the_session(
    server: Server,
) -> None:
    lab = server.lab
    guardian = server.start()
    echo = server.session()
    wait_in_session(guardian)
    before = table_json(lab)
    for n, (case, text) in enumerate(REFUSED.items(), 1):
        reload(guardian, text, "reload refused")
        assert table_json(lab) == before, f"{case}: the table changed on a refused reload"
        assert counter(guardian, "reload_failures", n) == n, case
        echo.assert_alive(f"after the refused reload ({case})")
        assert wait_in_session(guardian)["door"] == "ssh", case
    guardian.config_path.write_text(GOOD)  # "file-gone" removed it

    # A changed config: another door and sequence, another linger, one more trusted network.
    changed = config_text(
        door="ssh2",
        sequence=("7100/tcp", "8100/tcp", "9100/udp"),
        trusted=(TRUSTED_NET, "203.0.113.0/24"),
        linger="3s",
    )
    reload(guardian, changed, "reloaded")
    echo.assert_alive("after the reload")
    assert granted(lab, CLIENT)
    assert wait_in_session(guardian)["door"] == "ssh"  # the grant keeps the door that opened it
    trusted = set_elements(lab, "server", "trusted4")
    assert set(trusted) == {TRUSTED_NET, "203.0.113.0/24"}, trusted
    assert ssh_ok(lab, "client"), "a second login needed a new knock after the reload"

    # kill -9 right after another SIGHUP (mid-reload, perhaps), then a restart: the session lives
    # on the kernel's `ct state established` rule, and the new daemon adopts it.
    guardian.config_path.write_text(config_text(linger="4s"))
    guardian.hup()
    time.sleep(0.01)
    guardian.kill()
    echo.assert_alive("after kill -9")
    restarted = server.start(config_text(linger="4s"))
    echo.assert_alive("after the restart")
    assert wait_in_session(restarted)["door"] == "adopted"
    assert granted(lab, CLIENT)


def test_a_reload_that_changes_the_guarded_ports_keeps_the_session(server: Server) -> None:
    guardian = server.start()
    echo = server.session()
    wait_in_session(guardian)
    reload(guardian, GOOD.replace("ports = [22]", "ports = [22, 2200]"), "reloaded")
    echo.assert_alive("after the reload")
    time.sleep(1.0)  # past the socket-table listing the reload asks for
    assert wait_in_session(guardian)["door"] == "ssh"
    assert granted(server.lab, CLIENT)


def test_after_a_reload_that_changes_the_guarded_ports_logout_still_closes_at_linger(
    server: Server,
) -> None:
    guardian = server.start()
    echo = server.session()
    wait_in_session(guardian)
    reload(guardian, GOOD.replace("ports = [22]", "ports = [22, 2200]"), "reloaded")
    echo.assert_alive("after the reload")
    time.sleep(1.0)
    echo.close()  # logout
    logout = time.monotonic()
    assert wait_for(lambda: not granted(server.lab, CLIENT), 2.0 + STATE_WAIT), (
        f"still granted {time.monotonic() - logout:.1f} s after logout (linger 2 s): "
        f"{grant_of(guardian, CLIENT)}"
    )


# -- operator bans ---------------------------------------------------------------------------------


def test_an_operator_ban_covering_a_trusted_client_is_refused_and_touches_nothing(
    server: Server,
) -> None:
    lab = server.lab
    guardian = server.start()
    echo = server.session()
    before = table_json(lab)
    for n, target in enumerate(("198.51.100.0/24", CLIENT2, "198.51.100.216/30"), 1):
        offset = len(guardian.log_text())
        done = guardian_cli(lab, guardian, "ban", target)
        print(f"`guardian ban {target}`: exit {done.returncode}: {done.stdout}{done.stderr}")
        assert guardian.wait_for_log("ban_refused", timeout=STATE_WAIT, after=offset), target
        assert f"{target}" in guardian.log_text()[offset:]
        assert counter(guardian, "bans_refused", n) == n
        assert table_json(lab) == before, f"the table changed on the refused ban of {target}"
    assert not banned(lab)
    assert ssh_ok(lab, "client2"), "the trusted client could not log in"
    echo.assert_alive("after the refused bans")


def test_the_ban_command_tells_the_operator_it_was_refused(server: Server) -> None:
    lab = server.lab
    guardian = server.start()
    done = guardian_cli(lab, guardian, "ban", "198.51.100.0/24")
    assert guardian.wait_for_log("ban_refused", timeout=STATE_WAIT)  # the premise
    assert done.returncode != 0 and "refused" in (done.stdout + done.stderr), done


def test_an_operator_ban_of_a_live_session_is_carried_out_and_undone_by_unban(
    server: Server,
) -> None:
    lab = server.lab
    guardian = server.start()
    echo = server.session()
    wait_in_session(guardian)
    done = guardian_cli(lab, guardian, "ban", CLIENT, "--for", "60s")
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: CLIENT in banned(lab), STATE_WAIT), guardian.log_text()[-2000:]
    assert counter(guardian, "bans_of_sessions", 1) == 1
    # The ban drops the client's packets before `ct state established`: the session stops.
    assert not echo.alive(STALLED_FOR), "the session went on through a ban of its source"
    done = guardian_cli(lab, guardian, "unban", CLIENT)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: CLIENT not in banned(lab), STATE_WAIT)
    assert echo.alive(RESUME_WAIT), "the session did not resume after the unban"


def test_a_reload_that_trusts_a_banned_address_lifts_its_ban(server: Server) -> None:
    """The operator banned their own network by mistake (or brute force from it was banned):
    trusting it and SIGHUP is the way back in."""
    lab = server.lab
    guardian = server.start()
    done = guardian_cli(lab, guardian, "ban", CLIENT, "--for", "10m")
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: CLIENT in banned(lab), STATE_WAIT)
    assert not ssh_ok(lab, "client")
    reload(guardian, config_text(trusted=(TRUSTED_NET, f"{CLIENT}/32")), "reloaded")
    assert wait_for(lambda: CLIENT not in banned(lab), STATE_WAIT), guardian.log_text()[-2000:]
    assert counter(guardian, "bans_lifted", 1) == 1
    assert ssh_ok(lab, "client"), "the now trusted client could not log in without a knock"


# -- brute force -----------------------------------------------------------------------------------


def test_failed_logins_from_a_live_session_source_or_a_trusted_network_ban_neither(
    server: Server,
) -> None:
    lab = server.lab
    guardian = server.start()
    echo = server.session()
    wait_in_session(guardian)
    for _ in range(MAXRETRY + 2):
        wrong_password(lab, "client")  # the operator mistyping in a second terminal
        wrong_password(lab, "client2")  # a trusted network
    # The control: an attacker who knows the knock (it reaches sshd) is banned at maxretry.
    done = knock(lab, "attacker", SERVER, OPEN)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: granted(lab, ATTACKER), GRANT_WAIT)
    for _ in range(MAXRETRY):
        wrong_password(lab, "attacker")
    assert wait_for(lambda: ATTACKER in banned(lab), STATE_WAIT), snapshot(guardian)["counters"]
    counter(guardian, "failures_in_session", 2 * (MAXRETRY + 2))
    have = snapshot(guardian)["counters"]
    print(
        f"\nfailures_in_session {have['failures_in_session']}, failures_trusted "
        f"{have['failures_trusted']}, failures_counted {have['failures_counted']}"
    )
    # Each attempt is reported by the journal and by btmp: two reports.
    assert have["failures_in_session"] == 2 * (MAXRETRY + 2), have
    assert have["failures_trusted"] >= 2 * (MAXRETRY + 2), have  # other labs' lines may add
    assert CLIENT not in banned(lab) and CLIENT2 not in banned(lab), banned(lab)
    assert not [b for b in banned(lab) if b.startswith("198.51.100.") and b != ATTACKER]
    echo.assert_alive("after the failed logins")
    assert ssh_ok(lab, "client2")


# -- guardian check over a real ssh session --------------------------------------------------------


def test_guardian_check_run_over_ssh_warns_before_a_config_that_locks_the_operator_out(
    server: Server,
) -> None:
    lab = server.lab
    server.start()
    server.session()
    risky = lab.workdir / "risky.toml"  # no door: once this session ends, no way back in
    risky.write_text(config_text(doors=False))
    safe = lab.workdir / "safe.toml"
    safe.write_text(config_text(doors=False, trusted=(TRUSTED_NET, f"{CLIENT}/32")))
    out = {}
    for path in (risky, safe):
        command = [sys.executable, "-m", "guardian", "check", "-c", str(path)]
        argv = ssh_argv(server.sshd, SERVER, command, ("-o", "ConnectTimeout=3"))
        done = lab.run("client", argv, timeout=60)
        assert done.returncode == 0, done.stderr  # warnings, not errors
        out[path.name] = done.stdout + done.stderr
    warning = f"your address {CLIENT} is not in guard.trusted and there is no [[door]]"
    assert warning in out["risky.toml"], out["risky.toml"]
    assert f"your address {CLIENT}" not in out["safe.toml"], out["safe.toml"]
