# A synthetic but realistic auth.log for the parse-throughput benchmark: Debian-style syslog lines
# (traditional timestamps, which every peer parses) from sshd, sshd-session, CRON, sudo,
# systemd-logind; about 30 % of the lines belong to brute-force attempts from thousands of
# sources (IPv4 and IPv6), with the usual message mix (invalid users, wrong passwords, PAM
# lines, pre-auth disconnects), and the rest is normal traffic and noise. Seeded: the same
# arguments always give the same file.
#
#   .venv/bin/python bench/gen_authlog.py OUT [--lines 1000000] [--seed 1]
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

MONTH = "Mar"
USERS = ["root", "admin", "test", "oracle", "ubuntu", "pi", "user", "git", "postgres", "guest"]
INVALID = ["admin1", "support", "ftpuser", "nagios", "deploy", "hadoop", "jenkins", "minecraft"]


def source(rng: random.Random, v6: bool) -> str:
    if v6:
        return f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"
    return f"{rng.choice([45, 61, 103, 141, 185, 193, 218])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"  # noqa: E501


def attack(rng: random.Random, src: str, pid: int) -> list[str]:
    """The lines one brute-force connection leaves, in sshd 9.2's words."""
    port = rng.randrange(1024, 65535)
    kind = rng.random()
    if kind < 0.45:
        user = rng.choice(INVALID)
        return [
            f"sshd[{pid}]: Invalid user {user} from {src} port {port}",
            f"sshd[{pid}]: pam_unix(sshd:auth): check pass; user unknown",
            f"sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
            f"tty=ssh ruser= rhost={src}",
            f"sshd[{pid}]: Failed password for invalid user {user} from {src} port {port} ssh2",
            f"sshd[{pid}]: Received disconnect from {src} port {port}:11: Bye Bye [preauth]",
            f"sshd[{pid}]: Disconnected from invalid user {user} {src} port {port} [preauth]",
        ]
    if kind < 0.85:
        user = rng.choice(USERS)
        return [
            f"sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
            f"tty=ssh ruser= rhost={src}  user={user}",
            f"sshd[{pid}]: Failed password for {user} from {src} port {port} ssh2",
            f"sshd[{pid}]: Connection closed by authenticating user {user} {src} port {port} "
            "[preauth]",
        ]
    return [
        f"sshd[{pid}]: Connection closed by {src} port {port} [preauth]",
        f"sshd[{pid}]: Unable to negotiate with {src} port {port}: no matching key exchange "
        "method found. Their offer: diffie-hellman-group1-sha1 [preauth]",
    ]


def normal(rng: random.Random, pid: int) -> list[str]:
    """Everyday lines: logins, cron, sudo, logind."""
    kind = rng.random()
    if kind < 0.25:
        port = rng.randrange(1024, 65535)
        src = f"192.0.2.{rng.randrange(2, 250)}"
        return [
            f"sshd[{pid}]: Accepted publickey for alice from {src} port {port} ssh2: ED25519 "
            "SHA256:Pq0xM6xCTEQqbh1vX3fR1w5V3m9fN6Qx5lC3cS7tE2c",
            f"sshd[{pid}]: pam_unix(sshd:session): session opened for user alice(uid=1000) by "
            "(uid=0)",
            f"systemd-logind[411]: New session {pid % 900} of user alice.",
            f"sshd[{pid}]: Received disconnect from {src} port {port}:11: disconnected by user",
            f"sshd[{pid}]: Disconnected from user alice {src} port {port}",
            f"sshd[{pid}]: pam_unix(sshd:session): session closed for user alice",
        ]
    if kind < 0.7:
        return [
            f"CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
            f"CRON[{pid}]: pam_unix(cron:session): session closed for user root",
        ]
    if kind < 0.9:
        return [
            f"sudo[{pid}]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
            "COMMAND=/usr/bin/apt update",
            f"sudo[{pid}]: pam_unix(sudo:session): session opened for user root(uid=0) by "
            "alice(uid=1000)",
            f"sudo[{pid}]: pam_unix(sudo:session): session closed for user root",
        ]
    return [f"systemd-logind[411]: Session {pid % 900} logged out. Waiting for processes to exit."]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sources", type=int, default=5000)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pool = [source(rng, v6=rng.random() < 0.1) for _ in range(args.sources)]
    written = attack_lines = 0
    pid = 10000
    second = 0
    with Path(args.out).open("w") as out:
        while written < args.lines:
            pid += rng.randrange(1, 7)
            second += rng.randrange(0, 2)
            stamp = f"{MONTH} {1 + second // 86400 % 28:2d} {second // 3600 % 24:02d}:"
            stamp += f"{second // 60 % 60:02d}:{second % 60:02d} host "
            is_attack = rng.random() < 0.27  # ~3.6 lines per attack, ~3.1 per normal event: ~30 %
            lines = attack(rng, rng.choice(pool), pid) if is_attack else normal(rng, pid)
            for line in lines[: args.lines - written]:
                out.write(stamp + line + "\n")
            written += min(len(lines), args.lines - written)
            if is_attack:
                attack_lines += len(lines)
    share = attack_lines / written
    print(f"{written} lines, {share:.0%} attack lines, {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
