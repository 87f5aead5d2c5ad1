# The lab itself is tested before anything is tested in it: it builds and always disappears again
# (namespaces, processes, work dir; on close, on SIGTERM, after a crash via cleanup_stale), and
# without any firewall the real tools see what they should: ssh key login over v4 and v6, nmap
# open/closed, knock packets arriving. The pure helpers (nmap XML, nft JSON, argv) are tested
# without root.
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from guardian.lab import (
    Lab,
    SshdHandle,
    cleanup_stale,
    knock,
    knock_argv,
    nft_json,
    nmap_port_state,
    ssh_argv,
    start_sshd,
    tcp_connect_result,
    try_ssh,
)
from guardian.lab.netns import STATE_DIR, list_namespaces, namespace_pids
from guardian.lab.nft import allow_elements, flush_ruleset, parse_set_elements, table_exists
from guardian.lab.probes import parse_nmap_states

# -- pure helpers (no root) ----------------------------------------------------------------------

NMAP_XML = """<?xml version="1.0"?>
<nmaprun><host><status state="up"/><ports>
<port protocol="tcp" portid="22"><state state="filtered" reason="no-response"/></port>
<port protocol="tcp" portid="23"><state state="closed" reason="reset"/></port>
</ports></host></nmaprun>"""


def test_parse_nmap_states_reads_each_port() -> None:
    assert parse_nmap_states(NMAP_XML) == {22: "filtered", 23: "closed"}


def test_parse_set_elements_timed_permanent_prefix_and_empty() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {
                "set": {
                    "name": "allow4",
                    "elem": [
                        {"elem": {"val": "192.0.2.2", "timeout": 30, "expires": 29}},
                        "192.0.2.3",
                        {"elem": {"val": {"prefix": {"addr": "2001:db8::", "len": 64}}}},
                    ],
                }
            },
        ]
    }
    assert parse_set_elements(listing) == {
        "192.0.2.2": 29.0,
        "192.0.2.3": None,
        "2001:db8::/64": None,
    }
    assert parse_set_elements({"nftables": [{"set": {"name": "allow4"}}]}) == {}


def test_knock_argv_normalises_steps_and_family() -> None:
    assert knock_argv("192.0.2.1", ["7000/tcp", "8000", "9000:udp", (7001, "UDP")], 50) == [
        "knock",
        "-d",
        "50",
        "192.0.2.1",
        "7000:tcp",
        "8000:tcp",
        "9000:udp",
        "7001:udp",
    ]
    assert knock_argv("2001:db8::1", ["7000/tcp"])[:2] == ["knock", "-6"]
    with pytest.raises(ValueError):
        knock_argv("192.0.2.1", ["70000/tcp"])
    with pytest.raises(ValueError):
        knock_argv("192.0.2.1", ["7000/icmp"])


def test_ssh_argv_keeps_user_config_out_and_command_last(tmp_path: Path) -> None:
    handle = SshdHandle(
        lab=Lab(),
        host="server",
        port=22,
        proc=None,  # type: ignore[arg-type]  # argv building never touches the process
        directory=tmp_path,
        config_path=tmp_path / "sshd_config",
        client_key=tmp_path / "client_ed25519",
        log_path=tmp_path / "sshd.log",
    )
    argv = ssh_argv(handle, "2001:db8::1", ["echo", "hi"], ["-o", "ConnectTimeout=1"])
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert argv.index("ConnectTimeout=1") < argv.index("ConnectTimeout=3")
    assert argv[-4:] == ["--", "2001:db8::1", "echo", "hi"]
    assert "BatchMode=yes" in argv and str(tmp_path / "client_ed25519") in argv


def test_lab_rejects_bad_names_and_maps_addresses() -> None:
    with pytest.raises(ValueError):
        Lab(prefix="Bad-Prefix")
    with pytest.raises(ValueError):
        Lab(hosts=("server", "sw"))
    with pytest.raises(ValueError):
        Lab(hosts=("server", "server"))
    lab = Lab()
    assert [lab.addr(h) for h in lab.hosts] == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    assert lab.addr("attacker", 6) == "2001:db8::4"
    with pytest.raises(TypeError):
        lab.exec_argv("server", "echo hi")


# -- the lab for real (root) ---------------------------------------------------------------------


def _gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return all(_gone(pid) for pid in pids)


@pytest.mark.usefixtures("root")
def test_lab_builds_and_leaves_nothing_behind() -> None:
    with Lab() as lab:
        namespaces = lab.namespaces
        assert set(namespaces) <= set(list_namespaces())
        assert all(len(ns) <= 15 for ns in namespaces)
        handle = start_sshd(lab)
        # A process the lab did not start itself is found through `ip netns pids` and killed too.
        stray = subprocess.Popen(lab.exec_argv("client", ["sleep", "300"]))
        pids = [handle.pid, stray.pid, *namespace_pids(lab.ns("server"))]
        workdir = lab.workdir
        assert workdir.is_dir()
    assert lab.closed
    assert not set(namespaces) & set(list_namespaces())
    assert stray.wait(timeout=5) != 0
    assert handle.proc.returncode is not None
    assert _wait_gone(pids)
    assert not workdir.exists()


def test_client_logs_in_with_key_over_v4_and_v6(lab: Lab) -> None:
    server4, server6 = lab.addr("server", 4), lab.addr("server", 6)
    assert try_ssh(lab, "client", server4)
    assert try_ssh(lab, "client2", server6)
    assert lab.sshd is not None
    out = lab.run("client", ssh_argv(lab.sshd, server6, ["echo", "$SSH_CONNECTION"]), timeout=20)
    assert out.stdout.split()[:1] == [lab.addr("client", 6)]
    assert "Accepted publickey for root from 2001:db8::2" in lab.sshd.log_text()
    assert tcp_connect_result(lab, "attacker", server4, 23) == "refused"
    # No route out of the lab: nothing but the documentation networks is reachable.
    assert "default" not in lab.run("client", ["ip", "route"]).stdout
    assert "default" not in lab.run("client", ["ip", "-6", "route"]).stdout


def test_nmap_sees_ssh_open_and_unused_port_closed(lab: Lab) -> None:
    for v in (4, 6):
        target = lab.addr("server", v)
        assert nmap_port_state(lab, "attacker", target, 22, ipv6=v == 6) == "open"
        assert nmap_port_state(lab, "attacker", target, 23, ipv6=v == 6) == "closed"


def _counter_packets(ruleset: dict[str, Any], comment: str) -> int:
    for item in ruleset["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError(f"no counter rule {comment!r}")


def test_knock_client_packets_reach_the_server(lab: Lab) -> None:
    rules = textwrap.dedent(
        """
        table inet knockcount {
          chain input {
            type filter hook input priority 0; policy accept;
            tcp dport 7000 counter comment "t7000"
            tcp dport 8000 counter comment "t8000"
            udp dport 9000 counter comment "u9000"
            tcp dport 7001 counter comment "t7001"
          }
        }
        """
    )
    lab.run("server", ["nft", "-f", "-"], input=rules, check=True)
    for v in (4, 6):
        done = knock(lab, "client", lab.addr("server", v), ["7000/tcp", "8000/tcp", "9000/udp"], 5)
        assert done.returncode == 0, done.stderr
    ruleset = nft_json(lab, "server")
    for name in ("t7000", "t8000", "u9000"):
        assert _counter_packets(ruleset, name) >= 2  # one per family at least
    assert _counter_packets(ruleset, "t7001") == 0
    flush_ruleset(lab, "server")
    assert not table_exists(lab, "server", "knockcount")


def test_allow_elements_reads_the_kernel_sets(lab: Lab) -> None:
    assert allow_elements(lab, "server") == {}  # no table at all
    table = textwrap.dedent(
        """
        table inet guardian {
          set allow4 { type ipv4_addr; flags timeout; }
          set allow6 { type ipv6_addr; flags timeout; }
        }
        """
    )
    lab.run("server", ["nft", "-f", "-"], input=table, check=True)
    assert allow_elements(lab, "server") == {}  # empty sets
    add = [
        ["add", "element", "inet", "guardian", "allow4", "{ 192.0.2.2 timeout 60s, 192.0.2.3 }"],
        ["add", "element", "inet", "guardian", "allow6", "{ 2001:db8::2 timeout 1h }"],
    ]
    for argv in add:
        lab.run("server", ["nft", *argv], check=True)
    elements = allow_elements(lab, "server")
    assert set(elements) == {"192.0.2.2", "192.0.2.3", "2001:db8::2"}
    assert elements["192.0.2.3"] is None
    assert elements["192.0.2.2"] is not None and 55 <= elements["192.0.2.2"] <= 60
    assert elements["2001:db8::2"] is not None and 3590 <= elements["2001:db8::2"] <= 3600


CHILD = """
import os, signal, sys, time
from guardian.lab import Lab, start_sshd
lab = Lab()
lab.start()
start_sshd(lab)
print(lab.name, flush=True)
if sys.argv[1] == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""


def _start_child(mode: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    name = child.stdout.readline().strip()
    assert name, "child lab did not start"
    return child, name


def _lab_namespaces(name: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(name + "-")]


@pytest.mark.usefixtures("root")
def test_sigterm_removes_the_lab() -> None:
    child, name = _start_child("wait")
    try:
        assert len(_lab_namespaces(name)) == 5
        pids = namespace_pids(f"{name}-server")
        assert pids
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=15) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _lab_namespaces(name) == []
    assert _wait_gone(pids)
    assert not (STATE_DIR / name).exists()


def test_cleanup_stale_removes_a_crashed_lab_but_not_a_live_one(lab: Lab) -> None:
    child, name = _start_child("crash")
    assert child.wait(timeout=15) == -signal.SIGKILL
    left = _lab_namespaces(name)
    assert len(left) == 5  # SIGKILL left everything behind, as a crash would
    orphans = namespace_pids(f"{name}-server")
    assert orphans  # its sshd survived the crash
    removed = cleanup_stale()
    assert set(left) <= set(removed)
    assert _lab_namespaces(name) == []
    assert _wait_gone(orphans)
    assert not (STATE_DIR / name).exists()
    # The live lab (owned by this process) was left alone and still works.
    assert set(lab.namespaces) <= set(list_namespaces())
    assert not set(lab.namespaces) & set(removed)
    assert try_ssh(lab, "client", lab.addr("server"))
    assert os.getpid() == int((lab.workdir / "owner").read_text().split()[0])
