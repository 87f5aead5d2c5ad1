# The status sub-commands of the command line: `guardian status [--once|--json]`, `guardian grants`,
# `guardian sessions`, `guardian bans`, `guardian events`. Each fetches from the control socket and
# hands over to a pure view; none holds policy. add_status_commands() adds them to guardian/cli.py's
# sub-parsers. Exit codes as cli.py: 0 ok, 1 the daemon could not be asked or refused.
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from guardian.config import DEFAULT_CONTROL_SOCKET
from guardian.control_client import ConnectionLost, ControlClientError, request, stream
from guardian.snapshot import EventInfo, SnapshotError, StatusSnapshot, from_json

EXIT_OK, EXIT_FAIL = 0, 1


def _fail(exc: Exception) -> int:
    message = str(exc)
    print(message if message.startswith("guardian") else f"guardian: {message}", file=sys.stderr)
    return EXIT_FAIL


def _fetch(args: argparse.Namespace) -> tuple[StatusSnapshot, dict[str, Any]]:
    """The snapshot, validated, and the document as the daemon sent it (for --json)."""
    reply = request(args.socket, {"cmd": "snapshot"}, timeout=args.timeout)
    doc = reply.get("snapshot")
    return from_json(doc), doc if isinstance(doc, dict) else {}


def cmd_status(args: argparse.Namespace) -> int:
    if not args.once and not args.json:
        from guardian.ui.live import run_live

        return run_live(args.socket, interval=args.interval, timeout=args.timeout)
    try:
        snapshot, doc = _fetch(args)
    except (ControlClientError, SnapshotError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    from rich.console import Console

    from guardian.ui.status import render_status

    console = Console()
    console.print(render_status(snapshot, console.width))
    return EXIT_OK


def _section(args: argparse.Namespace, section: str) -> int:
    from guardian.ui import text

    try:
        snapshot, _doc = _fetch(args)
    except (ControlClientError, SnapshotError) as exc:
        return _fail(exc)
    if args.json:
        sys.stdout.write(text.section_json(snapshot, section))
    elif section == "grants":
        sys.stdout.write(text.grants_text(snapshot))
    elif section == "sessions":
        sys.stdout.write(text.sessions_text(snapshot))
    else:
        sys.stdout.write(text.bans_text(snapshot))
    return EXIT_OK


def cmd_grants(args: argparse.Namespace) -> int:
    return _section(args, "grants")


def cmd_sessions(args: argparse.Namespace) -> int:
    return _section(args, "sessions")


def cmd_bans(args: argparse.Namespace) -> int:
    return _section(args, "bans")


def cmd_events(args: argparse.Namespace) -> int:
    """Follow the daemon's event stream until Ctrl-C (exit 0) or the daemon goes away (exit 1)."""
    from guardian.ui.text import event_line

    try:
        for doc in stream(args.socket, {"cmd": "events"}, timeout=args.timeout):
            if args.json:
                print(json.dumps(doc), flush=True)
            else:
                print(event_line(EventInfo.from_json(doc)), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    except ConnectionLost as exc:
        return _fail(exc)
    except (ControlClientError, SnapshotError) as exc:
        return _fail(exc)
    return EXIT_OK


def add_status_commands(subparsers: Any) -> None:
    """Add status, grants, sessions, bans and events to cli.py's `add_subparsers()` object."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-s",
            "--socket",
            default=DEFAULT_CONTROL_SOCKET,
            help=f"the daemon's control socket (default {DEFAULT_CONTROL_SOCKET})",
        )
        p.add_argument(
            "--timeout", type=float, default=5.0, help="seconds to wait for the daemon (default 5)"
        )

    p = subparsers.add_parser("status", help="live dashboard of grants, sessions, bans, events")
    common(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="print one frame and exit")
    mode.add_argument("--json", action="store_true", help="print the snapshot as JSON and exit")
    p.add_argument(
        "--interval", type=float, default=0.25, help="seconds between refreshes (default 0.25)"
    )
    p.set_defaults(func=cmd_status)

    for name, func, what in (
        ("grants", cmd_grants, "sources allowed through the gate"),
        ("sessions", cmd_sessions, "connections and logins on the guarded ports"),
        ("bans", cmd_bans, "banned sources"),
    ):
        p = subparsers.add_parser(name, help=f"list {what}")
        common(p)
        p.add_argument("--json", action="store_true", help="print JSON instead of columns")
        p.set_defaults(func=func)

    p = subparsers.add_parser("events", help="follow the daemon's events as they happen")
    common(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)
