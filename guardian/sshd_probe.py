# Asking the local sshd about itself: `sshd -T` prints the effective configuration, from which the
# daemon takes LoginGraceTime (how long an unauthenticated connection may keep a grant). Failure
# is normal (no sshd installed, no host keys yet): the caller then uses sshd's default.
from __future__ import annotations

import subprocess

SSHD = "/usr/sbin/sshd"


def parse_login_grace_time(text: str) -> float | None:
    """From `sshd -T` output: 'logingracetime 120' -> 120.0; 0 (no limit) -> None."""
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key.lower() == "logingracetime" and value.strip().isdigit():
            seconds = float(value.strip())
            return seconds if seconds > 0 else None
    return None


def read_login_grace_time(config_path: str | None = None, timeout: float = 5.0) -> float | None:
    argv = [SSHD, "-T"] + (["-f", config_path] if config_path else [])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_login_grace_time(done.stdout)
