# How lab hosts look at each other from the outside: a real nmap SYN scan of one port (what an
# attacker sees), a plain TCP connect (what a client gets: connected, refused, or silence), and the
# argv of the real `knock` client from Debian's knockd package.
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from guardian.lab.netns import Lab, LabError

# Round trips inside the lab take microseconds: a short RTT bound keeps "filtered" probes fast
# without changing what nmap concludes.
_NMAP_TIMING = (
    "--max-retries",
    "1",
    "--initial-rtt-timeout",
    "250ms",
    "--max-rtt-timeout",
    "500ms",
)

# Runs inside the namespace with the same interpreter, stdlib only (-I -S: fast, no site).
_CONNECT_SCRIPT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    socket.create_connection((host, port), timeout=timeout).close()
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print("error:" + (exc.strerror or type(exc).__name__))
else:
    print("connected")
"""


def nmap_argv(
    target: str, port: int, *, ipv6: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """nmap SYN scan of one port, XML on stdout, bounded by a host timeout."""
    return [
        "nmap",
        "-Pn",
        "-n",
        "-sS",
        "-p",
        str(port),
        *_NMAP_TIMING,
        "--host-timeout",
        "20s",
        "-oX",
        "-",
        *(["-6"] if ipv6 else []),
        *extra,
        target,
    ]


def parse_nmap_states(xml_text: str) -> dict[int, str]:
    """Port → state ("open", "closed", "filtered", ...) from nmap's XML output."""
    # nmap's own output, produced a moment ago in the lab: not untrusted XML.
    root = ET.fromstring(xml_text)  # noqa: S314
    states: dict[int, str] = {}
    for port in root.iter("port"):
        state = port.find("state")
        if state is not None:
            states[int(port.get("portid", "0"))] = state.get("state", "unknown")
    return states


def nmap_port_state(
    lab: Lab,
    host: str,
    target: str,
    port: int,
    ipv6: bool = False,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
) -> str:
    """The state real nmap reports for target:port, scanned from `host`."""
    done = lab.run(host, nmap_argv(target, port, ipv6=ipv6, extra=extra), timeout=timeout)
    if done.returncode != 0:
        raise LabError(f"nmap failed ({done.returncode}): {done.stderr.strip()}")
    states = parse_nmap_states(done.stdout)
    if port not in states:
        raise LabError(f"nmap reported no state for port {port}: {done.stdout[-2000:]}")
    return states[port]


def tcp_connect_result(lab: Lab, host: str, target: str, port: int, timeout: float = 3.0) -> str:
    """Connect from `host` to target:port: "connected", "refused", "timeout" or "error:<why>"."""
    argv = [sys.executable, "-I", "-S", "-c", _CONNECT_SCRIPT, target, str(port), str(timeout)]
    done = lab.run(host, argv, timeout=timeout + 10.0)
    result = done.stdout.strip()
    if done.returncode != 0 or not result:
        raise LabError(f"connect probe failed ({done.returncode}): {done.stderr.strip()}")
    return result


def tcp_connect(lab: Lab, host: str, target: str, port: int, timeout: float = 3.0) -> bool:
    """True when a TCP connection from `host` to target:port completes within timeout."""
    return tcp_connect_result(lab, host, target, port, timeout) == "connected"


def _knock_step(step: str | tuple[int, str]) -> str:
    if isinstance(step, tuple):
        port_text, proto = str(step[0]), step[1]
    else:
        port_text, _, proto = step.replace(":", "/").partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp") or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad knock step {step!r}: want PORT[/tcp|/udp]")
    return f"{int(port_text)}:{proto}"


def knock_argv(
    target: str,
    steps: Sequence[str | tuple[int, str]],
    delay_ms: int | None = None,
    *,
    verbose: bool = False,
) -> list[str]:
    """argv for knockd's `knock` client; steps like "7000/tcp", "9000:udp", (8000, "tcp").

    `-6` is added for IPv6 literals so knock resolves the target in that family.
    """
    argv = ["knock"]
    if verbose:
        argv.append("-v")
    if ":" in target:
        argv.append("-6")
    if delay_ms is not None:
        argv += ["-d", str(int(delay_ms))]
    return [*argv, target, *(_knock_step(s) for s in steps)]


def knock(
    lab: Lab,
    host: str,
    target: str,
    steps: Sequence[str | tuple[int, str]],
    delay_ms: int | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run the real `knock` client from `host` (check the returncode yourself)."""
    return lab.run(host, knock_argv(target, steps, delay_ms, verbose=True), timeout=timeout)
