# The command line: argparse in, one function per sub-command, exit codes out. It holds no policy:
# each command loads what it needs and hands over to the module that owns the work. Exit codes:
# 0 ok, 1 a failure at run time, 2 a usage or configuration error.
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence

from guardian import __version__
from guardian.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_STATE_PATH,
    Config,
    KnockStep,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load(path: str) -> Config | None:
    """Load a config or print the loader's `file:line: key: reason` and return None."""
    from guardian.configfile import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from guardian.control import ControlSocketError
    from guardian.daemon import Daemon, DaemonOptions, configure_logging
    from guardian.effectors.nft import NftError
    from guardian.watchers import WatcherError

    config = _load(args.config)  # validated before anything touches the firewall
    if config is None:
        return EXIT_USAGE
    configure_logging(args.verbose, journal=not args.no_journal_log)
    options = DaemonOptions(
        control_socket=None if args.socket == "none" else args.socket,
        read_group=args.read_group,
        use_conntrack=not args.no_conntrack,
        use_journal=not args.no_journal,
        state_path=args.state,
        metrics_path=args.metrics_file,
        btmp_path=args.btmp,
        authlog_path=args.auth_log,
    )
    try:
        return Daemon(config, options=options).run()
    except ControlSocketError as exc:
        print(f"guardian: control socket: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except NftError as exc:
        print(f"guardian: nftables: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except WatcherError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_check(args: argparse.Namespace) -> int:
    from guardian.checks import config_warnings, lockout_warnings
    from guardian.configfile import render_config

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    sys.stdout.write(render_config(config))
    warnings = config_warnings(config) + lockout_warnings(config, os.environ.get("SSH_CLIENT"))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.path}: ok ({len(warnings)} warning(s))", file=sys.stderr)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from guardian.configfile import ConfigError
    from guardian.fwknop_import import import_fwknop
    from guardian.knockd_import import import_knockd

    try:
        with open(args.file, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        print(f"guardian: {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    try:
        convert = import_fwknop if args.kind == "fwknop" else import_knockd
        result = convert(text, args.file)
    except ConfigError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(result.toml)
    for note in result.notes:
        print(f"not carried over: {note}", file=sys.stderr)
    return EXIT_OK


def _parse_sequence(text: str) -> tuple[KnockStep, ...]:
    steps = []
    for word in text.replace(" ", "").split(","):
        port, _, proto = word.partition("/")
        proto = proto or "tcp"
        if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("tcp", "udp"):
            raise ValueError(f"bad knock {word!r}: write PORT or PORT/tcp or PORT/udp")
        steps.append(KnockStep(int(port), "udp" if proto == "udp" else "tcp"))
    return tuple(steps)


def cmd_knock(args: argparse.Namespace) -> int:
    from guardian.knock_client import KnockError, send_sequence

    if args.spa:
        return _spa_knock(args)
    if args.sequence:
        try:
            steps = _parse_sequence(args.sequence)
        except ValueError as exc:
            print(f"guardian: --sequence: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        config = _load(args.config)
        if config is None:
            return EXIT_USAGE
        doors = [d for d in config.doors if args.door in (None, d.name)]
        if not doors:
            print(f"guardian: no door named {args.door!r} in {config.path}", file=sys.stderr)
            return EXIT_USAGE
        door = doors[0]
        steps = door.close if args.close else door.sequence
        if not steps:
            print(f"guardian: door {door.name!r} has no close sequence", file=sys.stderr)
            return EXIT_USAGE
    family = socket.AF_INET if args.ipv4 else socket.AF_INET6 if args.ipv6 else 0
    try:
        address = send_sequence(args.host, steps, delay=args.delay / 1000.0, family=family)
    except (OSError, KnockError) as exc:
        print(f"guardian: knock {args.host}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"knocked {address}: {' '.join(map(str, steps))}")
    return EXIT_OK


def _spa_knock(args: argparse.Namespace) -> int:
    """guardian knock --spa HOST: one SPA packet with a stanza's keys (the client's config)."""
    from guardian.engine.spa import spa_key
    from guardian.spa_client import ANY_SOURCE, KnockError, SpaRequest, parse_access, send_spa

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    stanzas = [s for s in config.spa.stanzas if args.stanza in (None, s.name)]
    if not stanzas:
        where = f"named {args.stanza!r} " if args.stanza else ""
        print(f"guardian: no [[spa.stanza]] {where}in {config.path}", file=sys.stderr)
        return EXIT_USAGE
    stanza = stanzas[0]
    try:
        access = parse_access(args.access or [f"{p}/{n}" for p, n in stanza.open_ports[:1]])
    except ValueError as exc:
        print(f"guardian: --access: {exc}", file=sys.stderr)
        return EXIT_USAGE
    request = SpaRequest(
        access=access,
        allow_ip=args.allow or ANY_SOURCE,
        username=args.user or "",
        client_timeout=args.timeout,
    )
    family = socket.AF_INET if args.ipv4 else socket.AF_INET6 if args.ipv6 else 0
    port = args.spa_port or config.spa.port
    try:
        address = send_spa(args.host, spa_key(stanza), request, port=port, family=family)
    except (OSError, KnockError) as exc:
        print(f"guardian: knock --spa {args.host}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    wanted = ",".join(f"{p}/{n}" for p, n in access)
    print(f"sent SPA to {address} udp/{port}: stanza {stanza.name}, {wanted}")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a key pair the way `fwknop --key-gen` does; with --out, write two 0600 files."""
    from guardian.spa_packet import generate_keys, render_keygen

    key, hmac_key = generate_keys(args.hmac)
    if not args.out:
        sys.stdout.write(render_keygen(key, hmac_key))
        return EXIT_OK
    paths = (f"{args.out}.key", f"{args.out}.hmac")
    try:
        for path, value in zip(paths, (key, hmac_key), strict=True):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(value + "\n")
    except OSError as exc:
        print(f"guardian: keygen: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"wrote {paths[0]} and {paths[1]} (mode 0600). The same stanza on both sides:")
    print("[[spa.stanza]]")
    print(f"name = {json.dumps(os.path.basename(args.out))}")
    print(f"key_base64_file = {json.dumps(os.path.abspath(paths[0]))}")
    print(f"hmac_key_base64_file = {json.dumps(os.path.abspath(paths[1]))}")
    print(f"hmac = {json.dumps(args.hmac)}")
    print('open_ports = ["tcp/22"]')
    return EXIT_OK


def cmd_flush(args: argparse.Namespace) -> int:
    from guardian.effectors.nft import NftEffector, NftError

    try:
        NftEffector().remove_table()
    except NftError as exc:
        print(f"guardian: nftables: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print("removed table inet guardian (if it was there)")
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from guardian.install import install

    try:
        report = install(Path(args.prefix), args.guardian_bin)
    except OSError as exc:
        print(f"guardian: install: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for path in report.written:
        print(f"installed {path}")
    for path in report.kept:
        print(f"kept {path} (already there)")
    print("next steps:")
    for step in report.next_steps:
        print(f"  {step}")
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    from pathlib import Path

    from guardian.effectors.nft import NftEffector, NftError
    from guardian.install import CONFIG_DEST, uninstall

    def remove_table() -> None:
        nft = NftEffector()
        try:
            nft.remove_table()
        finally:
            nft.close()

    try:
        removed = uninstall(Path(args.prefix), None if args.keep_table else remove_table)
    except (OSError, NftError) as exc:
        print(f"guardian: uninstall: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for path in removed:
        print(f"removed {path}")
    if not args.keep_table:
        print("removed table inet guardian (if it was there)")
    config = Path(args.prefix) / CONFIG_DEST
    if config.exists():
        print(f"kept {config} (edited; remove it by hand if you want)")
    print(
        "then: systemctl daemon-reload (stop the service first: systemctl disable --now guardian)"
    )
    return EXIT_OK


def cmd_ban(args: argparse.Namespace) -> int:
    from guardian.control_client import ControlClientError, request

    command: dict[str, object] = {"cmd": "unban" if args.unban else "ban", "source": args.address}
    if not args.unban and args.duration:
        command["duration"] = args.duration
    try:
        reply = request(args.socket, command)
    except ControlClientError as exc:
        print(f"guardian: {command['cmd']} {args.address}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.unban:
        lifted = reply.get("unbanned") or []
        print(
            f"unban {args.address}: "
            + (f"lifted {', '.join(lifted)}" if lifted else "was not banned")
        )
    else:
        banned = ", ".join(reply.get("banned") or [])
        timeout = reply.get("timeout")
        until = "permanently" if timeout is None else f"for {timeout:g}s"
        print(f"ban {args.address}: banned {banned} {until}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from guardian.config import Config, parse_duration
    from guardian.replay import replay_file, replay_journal

    config = Config()
    if args.config is not None:
        loaded = _load(args.config)
        if loaded is None:
            return EXIT_USAGE
        config = loaded
    mode = args.mode or config.ban.mode
    if args.jobs < 0:
        print("guardian: replay: --jobs must be 0 (every CPU) or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.journal:
            since = time.time() - parse_duration(args.since)
            report = replay_journal(config, since, mode)
        else:
            report = replay_file(Path(args.file), config, mode, jobs=args.jobs)
    except (OSError, ValueError) as exc:
        print(f"guardian: replay: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    unit = "records" if report.kind == "btmp" else "lines"
    print(f"{report.kind}: {report.units} {unit}, {report.failures} failure(s) "
          f"from {len(report.sources)} source(s)")  # fmt: skip
    for rule, count in report.by_rule.most_common():
        print(f"  {count:>9}  {rule}")
    if report.skipped_no_address:
        print(f"  {report.skipped_no_address:>9}  skipped: host name instead of an address")
    print(f"would ban {len(report.bans)} time(s), {len(set(report.banned_networks()))} source(s)")
    for at, ban in report.bans[: args.show]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        print(f"  {stamp}  {ban.network}  offence {ban.offence}  {ban.timeout:g}s")
    if len(report.bans) > args.show:
        print(f"  ... {len(report.bans) - args.show} more (--show N, or --json)")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from guardian.lab.demo import run_demo

    return run_demo(fast=args.fast)


def build_parser() -> argparse.ArgumentParser:
    from guardian.ui.commands import add_status_commands

    parser = argparse.ArgumentParser(
        prog="guardian", description="A session-aware guardian for sshd."
    )
    parser.add_argument("--version", action="version", version=f"ssh-guardian {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH, help="config file (TOML)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    with_config(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument(
        "--socket", default=DEFAULT_CONTROL_SOCKET, help="control socket path, or 'none'"
    )
    p.add_argument("--read-group", help="group whose members may read status (read-only)")
    p.add_argument(
        "--no-conntrack", action="store_true", help="don't use conntrack events (socket table only)"
    )
    p.add_argument(
        "--no-journal", action="store_true", help="don't read sshd's lines from the journal"
    )
    p.add_argument("--no-journal-log", action="store_true", help="log plain lines on stderr only")
    p.add_argument("--state", default=DEFAULT_STATE_PATH, help="state store (sqlite) path")
    p.add_argument(
        "--metrics-file", help="write Prometheus metrics here (node_exporter textfile collector)"
    )
    p.add_argument("--btmp", default="/var/log/btmp", help="btmp file to follow")
    p.add_argument("--auth-log", default="/var/log/auth.log", help="auth.log file to follow")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config and print the effective one")
    with_config(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("import", help="convert another tool's config to guardian TOML")
    p.add_argument("kind", choices=["knockd", "fwknop"])
    p.add_argument("file")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("knock", help="send a door's knock sequence (or one SPA packet) to a host")
    with_config(p)
    p.add_argument("host")
    p.add_argument("--spa", action="store_true", help="send one SPA packet (fwknop-compatible)")
    p.add_argument("--stanza", help="with --spa: the [[spa.stanza]] whose keys to use")
    p.add_argument(
        "--access", action="append", help="with --spa: e.g. tcp/22 (repeatable; default: tcp/22)"
    )
    p.add_argument("--allow", help="with --spa: the address to open for (default: the source)")
    p.add_argument("--user", help="with --spa: the username in the packet (default: yours)")
    p.add_argument("--timeout", type=int, help="with --spa: ask for this many seconds (type 3)")
    p.add_argument("--spa-port", type=int, help="with --spa: UDP port (default: [spa] port)")
    p.add_argument("--door", help="door name (default: the first door)")
    p.add_argument("--close", action="store_true", help="send the door's close sequence")
    p.add_argument("--sequence", help="knocks to send instead of a door's, e.g. 7000,8000/udp,9000")
    p.add_argument("--delay", type=float, default=0.0, help="milliseconds between knocks")
    family = p.add_mutually_exclusive_group()
    family.add_argument("-4", dest="ipv4", action="store_true", help="IPv4 only")
    family.add_argument("-6", dest="ipv6", action="store_true", help="IPv6 only")
    p.set_defaults(func=cmd_knock)

    p = sub.add_parser("keygen", help="print an SPA key pair, as `fwknop --key-gen` does")
    p.add_argument("--hmac", default="sha256", help="HMAC digest the key is for (default sha256)")
    p.add_argument("--out", help="write PREFIX.key and PREFIX.hmac (0600) instead of printing")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("flush", help="remove the guardian's nftables table")
    p.set_defaults(func=cmd_flush)

    p = sub.add_parser("install", help="put the systemd units, a config skeleton, the state dir")
    p.add_argument("--prefix", default="/", help="root to install under (default /)")
    p.add_argument("--guardian-bin", help="command for ExecStart (default: this guardian)")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("uninstall", help="remove what install put in place, and the table")
    p.add_argument("--prefix", default="/", help="root to uninstall from (default /)")
    p.add_argument("--keep-table", action="store_true", help="leave table inet guardian alone")
    p.set_defaults(func=cmd_uninstall)

    add_status_commands(sub)

    for name, unban in (("ban", False), ("unban", True)):
        p = sub.add_parser(name, help=f"{name} an address or network now (through the daemon)")
        p.add_argument("address")
        if not unban:
            p.add_argument("--for", dest="duration", help="how long, e.g. 1h (default: escalated)")
        p.add_argument("-s", "--socket", default=DEFAULT_CONTROL_SOCKET)
        p.set_defaults(func=cmd_ban, unban=unban)

    p = sub.add_parser("replay", help="what the ban rules would do with a log (offline)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="an auth.log or a btmp file")
    source.add_argument("--journal", action="store_true", help="sshd's lines in the journal")
    p.add_argument("--since", default="1d", help="with --journal: how far back (default 1d)")
    p.add_argument("--mode", choices=["normal", "aggressive"])
    p.add_argument("-c", "--config", default=None, help="config whose [ban] rules to apply")
    p.add_argument("--json", action="store_true")
    p.add_argument("--show", type=int, default=20, help="bans to list")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        help="processes parsing a large auth.log (default: one per CPU; same result either way)",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="run the narrated lab demo (root; network namespaces)")
    p.add_argument("--fast", action="store_true", help="skip the pauses between steps")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
