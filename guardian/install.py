# `guardian install` / `guardian uninstall`: put the systemd units, a commented config skeleton
# and the state directory in place under a prefix ("/" on a real machine, a temporary directory
# in tests), and take them away again. It never overwrites a config that exists (it may hold the
# operator's doors) and never enables or starts anything itself: it prints the next steps, so
# nothing locks the operator out before they have read their config.
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

UNITS_DIR = Path(__file__).resolve().parents[1] / "units"  # a checkout or an editable install
UNIT_NAMES = ("guardian.service", "guardian-sshd.socket", "guardian-sshd@.service")
UNIT_DEST = Path("etc/systemd/system")
CONFIG_DEST = Path("etc/guardian/guardian.toml")
STATE_DEST = Path("var/lib/guardian")
SHIPPED_BIN = "/usr/local/bin/guardian"  # what units/guardian.service's ExecStart names

CONFIG_SKELETON = """\
# ssh-guardian configuration. Every key is shown with its default, commented out.
# Check it with `guardian check -c /etc/guardian/guardian.toml` before starting the service.
#
# WARNING: once the service runs, port 22 is closed to everyone without a grant. Add a door
# below (or your address to `trusted`) and test the knock from a second terminal first.

[guard]
# ports = [22]             # TCP ports guarded
# trusted = []             # networks never gated, e.g. ["192.168.1.0/24"]
# interfaces = []          # empty: every interface
# answer = "reset"         # or "drop": what an unknown SYN gets

[access]
# window = "30s"           # a completed knock opens the port this long for a first connection
# linger = "10s"           # access outlives the last session this long
# lease = "1m"
# require_auth = true
# login_grace_time = "auto"

# [[door]]
# name = "main"
# sequence = ["7000", "8000/udp", "9000"]   # pick your own ports
# timeout = "25s"

[ban]
# enabled = true
# maxretry = 5
# findtime = "10m"
# bantime = "10m"

[sshd]
# on_demand = false        # true: sshd listens only while some grant is open
# start = ["systemctl", "start", "guardian-sshd.socket"]
# stop = ["systemctl", "stop", "guardian-sshd.socket"]
"""


@dataclass(frozen=True)
class InstallReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already there, left alone
    next_steps: list[str] = field(default_factory=list)


def guardian_command() -> str:
    """The absolute command that runs this guardian: the script beside this interpreter (a
    venv or /usr/local/bin), else the interpreter with `-m guardian`."""
    beside = Path(sys.executable).parent / "guardian"
    if beside.exists():
        return str(beside)
    found = shutil.which("guardian")
    if found is not None:
        return str(Path(found).resolve())
    return f"{sys.executable} -m guardian"


def render_unit(text: str, guardian_bin: str) -> str:
    """The shipped unit with ExecStart naming the guardian that is really installed."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith("ExecStart=" + SHIPPED_BIN + " "):
            line = "ExecStart=" + guardian_bin + line[len("ExecStart=" + SHIPPED_BIN) :]
        out.append(line)
    return "".join(out)


def install(
    prefix: Path, guardian_bin: str | None = None, units_dir: Path = UNITS_DIR
) -> InstallReport:
    """Write the units (replacing older copies), the config skeleton (only if there is no config)
    and the state directory (0700). Raises OSError on a failure to write."""
    command = guardian_bin or guardian_command()
    report = InstallReport()
    unit_dir = prefix / UNIT_DEST
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in UNIT_NAMES:
        source = units_dir / name
        target = unit_dir / name
        _write(target, render_unit(source.read_text(), command), 0o644)
        report.written.append(target)
    config = prefix / CONFIG_DEST
    config.parent.mkdir(parents=True, exist_ok=True)
    if config.exists():
        report.kept.append(config)
    else:
        _write(config, CONFIG_SKELETON, 0o640)
        report.written.append(config)
    state = prefix / STATE_DEST
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)  # offences and log positions: root's business only
    report.written.append(state)
    report.next_steps.extend(
        [
            f"edit {Path('/') / CONFIG_DEST} (add a door or trusted networks), then:",
            f"  {command} check -c {Path('/') / CONFIG_DEST}",
            "  systemctl daemon-reload",
            "  systemctl enable --now guardian.service",
            "for sshd on demand ([sshd] on_demand = true): systemctl disable --now ssh.service "
            "ssh.socket (guardian-sshd.socket takes port 22 when a grant opens)",
        ]
    )
    return report


def uninstall(prefix: Path, remove_table: Callable[[], None] | None = None) -> list[Path]:
    """Remove the units, the config if it is still the untouched skeleton, and the table (when
    remove_table is given). The state directory stays only if it holds something."""
    removed: list[Path] = []
    for name in UNIT_NAMES:
        target = prefix / UNIT_DEST / name
        if target.exists():
            target.unlink()
            removed.append(target)
    config = prefix / CONFIG_DEST
    if config.exists() and config.read_text() == CONFIG_SKELETON:
        config.unlink()
        removed.append(config)
        if not any(config.parent.iterdir()):
            config.parent.rmdir()
            removed.append(config.parent)
    state = prefix / STATE_DEST
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
        removed.append(state)
    if remove_table is not None:
        remove_table()
    return removed


def _write(path: Path, text: str, mode: int) -> None:
    # Write beside and rename: a unit or config is never seen half-written.
    temporary = path.with_name(path.name + ".guardian-new")
    temporary.write_text(text)
    os.chmod(temporary, mode)
    temporary.replace(path)
