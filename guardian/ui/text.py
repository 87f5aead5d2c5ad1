# Plain-text and JSON views for `guardian grants`, `guardian sessions`, `guardian bans` and
# `guardian events`: aligned columns for people (no colour, no box drawing, safe to pipe), the
# snapshot's own JSON sections for scripts. Pure functions of a snapshot or an event.
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, tzinfo

from guardian.snapshot import EventInfo, StatusSnapshot
from guardian.ui.format import (
    ago,
    grant_sessions,
    port_label,
    span,
    state_label,
    until,
    user_label,
)

NOT_TRACKED = {
    "sessions": "sessions are not tracked by this guardian",
    "bans": "bans are not enabled in this guardian",
}


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = []
    for row in (headers, *rows):
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def grants_text(snapshot: StatusSnapshot) -> str:
    text = _everyone_text(snapshot)
    if not snapshot.grants:
        return text + "no grants\n"
    taken_at = snapshot.header.taken_at
    rows = [
        (
            g.source,
            g.door,
            state_label(g.state),
            grant_sessions(g),
            span(g.time_left),
            ago(taken_at, g.opened_at),
        )
        for g in snapshot.grants
    ]
    return text + columns(("SOURCE", "DOOR", "STATE", "SESSIONS", "TIME LEFT", "OPENED"), rows)


def _everyone_text(snapshot: StatusSnapshot) -> str:
    """An everyone door's open window, above the grants (nothing when none is open)."""
    e = snapshot.everyone
    if e is None:
        return ""
    return f"OPEN TO EVERYONE (door {e.door}): closes in {span(e.time_left)}, never extended\n"


def sessions_text(snapshot: StatusSnapshot) -> str:
    if snapshot.sessions is None:
        return NOT_TRACKED["sessions"] + "\n"
    if not snapshot.sessions:
        return "no sessions\n"
    taken_at = snapshot.header.taken_at
    rows = [
        (
            user_label(s),
            s.source,
            str(s.sport),
            port_label(s.dport),
            ago(taken_at, s.since),
            s.auth or ("yes" if s.authenticated else "no"),
            s.origin,
        )
        for s in snapshot.sessions
    ]
    return columns(("USER", "SOURCE", "SPORT", "DPORT", "SINCE", "AUTH", "SEEN BY"), rows)


def bans_text(snapshot: StatusSnapshot) -> str:
    if snapshot.bans is None:
        return NOT_TRACKED["bans"] + "\n"
    if not snapshot.bans:
        return "no bans\n"
    taken_at = snapshot.header.taken_at
    rows = [
        (
            b.source,
            until(taken_at, b.until),
            f"#{b.offence}",
            ago(taken_at, b.since),
            b.reason,
        )
        for b in snapshot.bans
    ]
    return columns(("SOURCE", "UNTIL", "OFFENCE", "BANNED", "REASON"), rows)


def section_json(snapshot: StatusSnapshot, section: str) -> str:
    """One section of the snapshot's wire form ("grants", "sessions", "bans"); null when the daemon
    does not track it."""
    return json.dumps(snapshot.to_json()[section], indent=2) + "\n"


def event_line(event: EventInfo, tz: tzinfo | None = None) -> str:
    """One event for `guardian events`: local time (or tz), kind, source, door, detail."""
    when = datetime.fromtimestamp(event.at, tz).astimezone(tz).isoformat(timespec="seconds")
    parts = [when, event.kind]
    if event.source:
        parts.append(event.source)
    if event.door:
        parts.append(f"door={event.door}")
    if event.detail:
        parts.append(f"({event.detail})")
    return " ".join(parts)
