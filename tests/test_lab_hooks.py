# Acceptance tests of issue 9's event hooks in the network-namespace lab, against the real daemon:
# a hook receives the exact JSON for grant, revoke, ban and unban; a failing hook is logged once per
# failure; a hanging hook is killed at its timeout (the process is gone) and knocks still open
# promptly while hooks hang: knock->open measured with bench/probe_knock_open.py, with and without
# the hanging hook. Every wait is bounded.
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guardian.lab import GuardianHandle, Lab, knock, set_elements
from guardian.lab.guardian_proc import LabServer
from guardian.lab.nft import flush_ruleset

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "bench" / "probe_knock_open.py"
OPEN = ("7000/tcp", "8000/tcp", "9000/tcp")
CLOSE = ("9000/tcp", "8000/tcp", "7000/tcp")
WINDOW = 30.0
HANG_ARG = "1000.917"  # `sleep 1000.917`: a command line no other process on the host has
TRIALS = 25


def config_text(hooks: str = "") -> str:
    return f"""\
[guard]
ports = [22]

[access]
window = "{WINDOW:g}s"

[[door]]
name = "ssh"
sequence = {json.dumps(list(OPEN))}
close = {json.dumps(list(CLOSE))}
timeout = "5s"
{hooks}"""


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def cli(handle: GuardianHandle, *args: str) -> str:
    argv = [sys.executable, "-m", "guardian", *args, "-s", str(handle.socket_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def hanging_pids() -> list[int]:
    """Processes running `sleep HANG_ARG` (anywhere: namespaces share the pid space here)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        running = stat.rsplit(")", 1)[1].split()[0] != "Z"
        if argv[:2] == [b"sleep", HANG_ARG.encode()] and running:
            found.append(int(entry))
    return found


class Server(LabServer):
    def cleanup(self) -> None:
        super().cleanup()
        for pid in hanging_pids():  # only ever our own hook's children
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


@pytest.fixture
def server(lab_module: Lab) -> Iterator[Server]:
    with Server(lab_module) as helper:
        yield helper


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_hook_receives_exact_json_for_grant_revoke_ban_and_unban(server: Server) -> None:
    lab = server.lab
    out = lab.workdir / "hook-events.jsonl"
    out.unlink(missing_ok=True)
    script = lab.workdir / "record-hook.py"
    script.write_text(
        f"import sys\nwith open({str(out)!r}, 'ab') as f:\n    f.write(sys.stdin.buffer.read())\n"
    )
    hooks = f"""
[[hook]]
on = ["grant", "revoke", "ban", "unban"]
run = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]
timeout = "5s"

[[hook]]
on = ["revoke"]
run = ["/bin/false"]
timeout = "5s"
"""
    guardian = server.start(config_text(hooks))
    client, client2 = lab.addr("client"), lab.addr("client2")
    before = time.time()
    assert knock(lab, "client", lab.addr("server"), OPEN).returncode == 0
    assert wait_for(lambda: len(records(out)) == 1, 5.0)
    assert knock(lab, "client", lab.addr("server"), CLOSE).returncode == 0
    assert wait_for(lambda: len(records(out)) == 2, 5.0)
    cli(guardian, "ban", client2, "--for", "1m")
    assert wait_for(lambda: len(records(out)) == 3, 5.0)
    cli(guardian, "unban", client2)
    assert wait_for(lambda: len(records(out)) == 4, 5.0)
    after = time.time()
    grant, revoke, ban, unban = records(out)
    for doc in (grant, revoke, ban, unban):
        assert before <= doc["time"] <= after
    # The whole object, field by field: only the times are taken from it (checked above/below).
    assert grant == {
        "kind": "grant",
        "time": grant["time"],
        "source": client,
        "door": "ssh",
        "user": None,
        "reason": None,
        "until": grant["time"] + WINDOW,
    }
    assert revoke == {
        "kind": "revoke",
        "time": revoke["time"],
        "source": client,
        "door": "ssh",
        "user": None,
        "reason": "close sequence",
        "until": None,
    }
    assert ban == {
        "kind": "ban",
        "time": ban["time"],
        "source": client2,
        "door": None,
        "user": None,
        "reason": ban["reason"],
        "until": ban["time"] + 60.0,
    }
    assert ban["reason"].startswith(f"{client2}/32 for 1m, offence 1")
    assert unban == {
        "kind": "unban",
        "time": unban["time"],
        "source": client2,
        "door": None,
        "user": None,
        "reason": unban["reason"],
        "until": None,
    }
    # The failing hook (exit 1) ran once, on the one revoke, and was logged exactly once.
    assert guardian.wait_for_log("hook_failed /bin/false on revoke: exit status 1", 3.0)
    time.sleep(0.3)
    assert guardian.log_text().count("hook_failed") == 1


def knock_open_ms(lab: Lab) -> list[float]:
    argv = [sys.executable, str(PROBE), "--server", lab.addr("server"), "--trials", str(TRIALS)]
    done = lab.run("client", [*argv, "--pause", "0.1"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["failures"] == 0
    latencies: list[float] = result["latencies_ms"]
    assert len(latencies) == TRIALS
    return latencies


def test_hanging_hook_is_killed_at_its_timeout_and_knocks_still_open_promptly(
    server: Server,
) -> None:
    lab = server.lab
    # Without hooks: the reference figure.
    plain = server.start(config_text())
    baseline = knock_open_ms(lab)
    plain.kill()
    flush_ruleset(lab, "server")
    lab.run("server", ["conntrack", "-F"])
    hooks = f"""
[[hook]]
on = ["grant"]
run = ["sleep", "{HANG_ARG}"]
timeout = "1s"
"""
    guardian = server.start(config_text(hooks))
    with_hooks = knock_open_ms(lab)
    # Every grant started a hook that hangs: some are still running (the check can fail) ...
    assert hanging_pids(), "no hanging hook is running: the measurement proved nothing"

    # ... and each is killed at its timeout: 25 of them, 4 at a time, 1 s each: about 7 s.
    def timed_out() -> int:
        counters = json.loads(cli(guardian, "status", "--json"))["counters"]
        assert counters["hooks_started"] <= TRIALS
        return int(counters["hooks_timed_out"])

    assert wait_for(lambda: timed_out() == TRIALS, 15.0, interval=0.5), timed_out()
    assert wait_for(lambda: not hanging_pids(), 2.0), hanging_pids()
    # Logged per failure, through the rate limit (a burst of 10, then about one a second).
    logged = guardian.log_text().count("hook_failed sleep on grant: timed out after 1s: killed")
    assert 10 <= logged < TRIALS
    # knock->open with hooks hanging (and the cap saturated, events queued) against without.
    # What this must catch is a loop that waits for a hook: that costs the hook's timeout
    # (seconds) per knock. The issue's +10 % is read in the benchmark (BENCHMARKS.md), not here:
    # on a slow CI day the medians of these few-ms figures moved by 5 ms (2.5 -> 7.7 ms) from
    # the machine alone, which a +1 ms bound here turned into a failed run.
    base, hooked = statistics.median(baseline), statistics.median(with_hooks)
    allowed = max(base * 3.0, base + 10.0)
    assert hooked <= allowed, f"knock->open {hooked:.2f} ms with hanging hooks, {base:.2f} without"
    print(f"knock->open median: {base:.2f} ms without hooks, {hooked:.2f} ms with hanging hooks")
    assert set_elements(lab, "server", "allow4") == {}  # the probe closed every grant it made
