# The `guardian status` dashboard as one rich renderable, built from a StatusSnapshot and nothing
# else (pure: it never reads a clock, a socket or the terminal; the width is an argument). Sections:
# the header (daemon, table, watchers, on-demand sshd, SPA), grants, sessions, bans, recent events,
# counters. Sections the daemon does not track (None in the snapshot) are left out.
#
# Below WIDE columns, secondary columns are dropped rather than squeezed, so every row still fits
# on one line at 80 columns (an IPv6 source alone can be 39 characters).
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, JustifyMethod, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from guardian.snapshot import (
    BanInfo,
    EventInfo,
    SessionInfo,
    StatusSnapshot,
    WatcherStatus,
)
from guardian.ui.format import (
    ago,
    endpoint,
    grant_sessions,
    kind_label,
    port_label,
    span,
    state_label,
    until,
    user_label,
    words,
)

WIDE = 100  # from this width on, every column is shown
RECENT_EVENTS_SHOWN = 10

STATE_STYLES = {"window": "yellow", "in_session": "green", "linger": "cyan"}
# Event kinds by how good the news is; unknown kinds stay plain.
GOOD_WORDS = ("completed", "opened", "accepted", "adopted")
BAD_WORDS = ("failed", "refused", "ban", "denied")
# The counter lines: a label, then each counter present, in this order, as "label value".
COUNTER_LINES: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "knock packets: ",
        {
            "knocks_seen": "seen",
            "knocks_completed": "completed",
            "knocks_ignored": "ignored",
            "knocks_duplicate": "duplicate",
        },
    ),
    (
        "grants: ",
        {
            "grants_opened": "opened",
            "grants_refreshed": "refreshed",
            "grants_closed": "closed",
            "grants_adopted": "adopted",
        },
    ),
    (
        "sessions: ",
        {
            "sessions_opened": "opened",
            "sessions_closed": "closed",
            "connections_opened": "connections",
            "unauthenticated_expired": "never authenticated",
        },
    ),
    (
        "failed logins: ",  # sshd's (engine/bans.py): what a home server's owner watches
        {
            "failures_seen": "reported",  # by every origin: one attempt in journal and btmp twice
            "failures_counted": "attempts",  # distinct attempts that count towards a ban
            "failures_while_banned": "while banned",
        },
    ),
    (
        "bans: ",
        {
            "bans": "for failures",
            "bans_operator": "by operator",
            "bans_adopted": "adopted",
            "bans_expired": "expired",
            "unbans": "lifted",
            "knocks_banned": "knocks ignored",
        },
    ),
)


def render_status(
    snapshot: StatusSnapshot, width: int, *, max_rows: int | None = None
) -> RenderableType:
    """The whole dashboard. max_rows caps each table (the live view passes what fits the screen);
    None shows every row."""
    sections: list[RenderableType] = [render_header(snapshot, width)]
    if snapshot.everyone is not None:
        sections.append(render_everyone(snapshot))
    sections.append(render_grants(snapshot, width, max_rows=max_rows))
    if snapshot.sessions is not None:
        sections.append(render_sessions(snapshot, snapshot.sessions, width, max_rows=max_rows))
    if snapshot.bans is not None:
        sections.append(render_bans(snapshot, snapshot.bans, width, max_rows=max_rows))
    sections.append(render_events(snapshot, width, max_rows=max_rows))
    sections.append(render_counters(snapshot, width))
    spaced: list[RenderableType] = []
    for i, section in enumerate(sections):
        if i > 1:
            spaced.append(Text(""))  # a blank line between sections (the panel needs none)
        spaced.append(section)
    return Group(*spaced)


# ---- header -------------------------------------------------------------------------------------


def render_header(snapshot: StatusSnapshot, width: int) -> RenderableType:
    h = snapshot.header
    lines = Text()
    lines.append(f"up {span(h.uptime)}", style="bold")
    lines.append(f" · pid {h.pid} · config {h.config_path or '-'}\n")
    lines.append("table inet guardian ")
    if h.table_installed:
        lines.append("installed", style="green")
    else:
        lines.append("NOT INSTALLED", style="bold red")
    if h.sshd is not None:
        lines.append(" · on-demand sshd ")
        lines.append(h.sshd.state, style="green" if h.sshd.state == "running" else "yellow")
        if h.sshd.detail:
            lines.append(f" ({h.sshd.detail})")
    lines.append("\n")
    lines.append_text(_watchers_line(h.watchers))
    if snapshot.spa is not None:
        stanzas = ", ".join(snapshot.spa.stanzas) or "none"
        lines.append(f"\nSPA on {snapshot.spa.listen}, stanzas: {stanzas}")
        accepted = snapshot.counters.get("spa_accepted", 0)
        refused = sorted(snapshot.spa.refusals.items(), key=lambda item: (-item[1], item[0]))
        summary = ", ".join(f"{reason} {count}" for reason, count in refused[:4]) or "none"
        lines.append(f"; accepted {accepted}, refused: {summary}")
    return Panel(
        lines,
        title=Text(f"ssh-guardian {h.version}"),
        title_align="left",
        box=box.ROUNDED,
        width=width,
        padding=(0, 1),
    )


def _watchers_line(watchers: Sequence[WatcherStatus]) -> Text:
    line = Text("watchers ")
    if not watchers:
        line.append("none", style="yellow")
        return line
    for i, w in enumerate(watchers):
        if i:
            line.append(" · ")
        line.append(f"{w.name} ")
        if w.up:
            line.append("up", style="green")
        elif w.off:  # not asked for: no fault to shout about
            line.append("off", style="dim")
            if w.reason:
                line.append(f" ({w.reason})", style="dim")
        else:
            line.append("DOWN", style="bold red")
            if w.reason:
                line.append(f" ({w.reason})", style="red")
    return line


# ---- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    justify: JustifyMethod = "left"
    flexible: bool = False  # gives way (cut with "…") when the row does not fit the width
    max_width: int | None = None  # a flexible column's cap even when there is room


def _table(
    title: str,
    count: int,
    columns: Sequence[_Column],
    rows: Sequence[Sequence[Text]],
    width: int,
    hidden: int = 0,
) -> Table:
    """A table whose fixed columns (addresses, times, states) always keep their full width and
    whose flexible columns (names, reasons, details) share what is left of `width`.

    Every cell is a Text: strings from the snapshot are never parsed as rich markup or emoji
    codes (an IPv6 address like 2001:db8:1234:... contains ":1234:", an emoji code)."""
    natural = [
        max(len(c.header), max((r[i].cell_len for r in rows), default=0))
        for i, c in enumerate(columns)
    ]
    fixed = sum(w for w, c in zip(natural, columns, strict=True) if not c.flexible)
    flexible = [c for c in columns if c.flexible]
    # Three cells between two columns: padding, the divider, padding.
    room = width - fixed - 3 * (len(columns) - 1)
    share = max(4, room // len(flexible)) if flexible else 0
    table = Table(
        title=f"{title} ({count})",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        header_style="bold",
    )
    for c, natural_width in zip(columns, natural, strict=True):
        if c.flexible:
            cap = share if c.max_width is None else min(share, c.max_width)
            table.add_column(
                c.header, justify=c.justify, no_wrap=True, overflow="ellipsis", max_width=cap
            )
        else:
            table.add_column(c.header, justify=c.justify, no_wrap=True, min_width=natural_width)
    for row in rows:
        table.add_row(*row)
    if hidden > 0:
        table.caption = f"… and {hidden} more"
        table.caption_justify = "left"
        table.caption_style = "dim"
    return table


def _limit(rows: int, max_rows: int | None) -> int:
    """How many rows to draw so that, with an "and N more" line, the table stays in max_rows."""
    if max_rows is None or rows <= max_rows:
        return rows
    return max(1, max_rows - 1)


def _t(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True)


def render_everyone(snapshot: StatusSnapshot) -> RenderableType:
    """An everyone door's open window: a state of its own, loud, with its countdown."""
    e = snapshot.everyone
    if e is None:
        return Text("")
    return Text(
        f"OPEN TO EVERYONE (door {e.door}): closes in {span(e.time_left)}, never extended",
        style="bold red",
    )


def render_grants(
    snapshot: StatusSnapshot, width: int = WIDE, *, max_rows: int | None = None
) -> RenderableType:
    grants = snapshot.grants
    if not grants and snapshot.everyone is not None:
        return Text("No per-source grants.")
    if not grants:
        return Text("No grants: the guarded ports are closed to all but trusted sources.")
    wide = width >= WIDE
    shown = _limit(len(grants), max_rows)
    columns = [
        _Column("source"),
        _Column("door", flexible=True, max_width=16),
        _Column("state"),
        _Column("sessions", "right"),
        _Column("time left", "right"),
    ]
    if wide:
        columns.append(_Column("opened", "right"))
    rows = []
    for g in grants[:shown]:
        row = [
            _t(g.source),
            _t(g.door),
            _t(state_label(g.state), STATE_STYLES.get(g.state, "")),
            _t(grant_sessions(g, short=not wide)),
            _t(span(g.time_left)),
        ]
        if wide:
            row.append(_t(ago(snapshot.header.taken_at, g.opened_at)))
        rows.append(row)
    return _table("Grants", len(grants), columns, rows, width, len(grants) - shown)


def render_sessions(
    snapshot: StatusSnapshot,
    sessions: Sequence[SessionInfo],
    width: int = WIDE,
    *,
    max_rows: int | None = None,
) -> RenderableType:
    if not sessions:
        return Text("No sessions.")
    wide = width >= WIDE
    shown = _limit(len(sessions), max_rows)
    columns = [
        _Column("user", flexible=True, max_width=16),
        _Column("from"),
        _Column("since", "right"),
    ]
    if wide:
        columns += [_Column("to port", "right"), _Column("auth"), _Column("seen by")]
    rows = []
    for s in sessions[:shown]:
        row = [
            _t(user_label(s), "" if s.authenticated else "dim"),
            _t(endpoint(s)),
            _t(ago(snapshot.header.taken_at, s.since)),
        ]
        if wide:
            row += [_t(port_label(s.dport)), _t(s.auth or "-"), _t(s.origin)]
        rows.append(row)
    return _table("Sessions", len(sessions), columns, rows, width, len(sessions) - shown)


def render_bans(
    snapshot: StatusSnapshot,
    bans: Sequence[BanInfo],
    width: int = WIDE,
    *,
    max_rows: int | None = None,
) -> RenderableType:
    if not bans:
        return Text("No bans.")
    wide = width >= WIDE
    shown = _limit(len(bans), max_rows)
    columns = [
        _Column("source"),
        _Column("reason", flexible=True, max_width=40),
        _Column("until", "right"),
        _Column("offence", "right"),
    ]
    if wide:
        columns.append(_Column("banned", "right"))
    taken_at = snapshot.header.taken_at
    rows = []
    for b in bans[:shown]:
        row = [_t(b.source, "red"), _t(b.reason), _t(until(taken_at, b.until)), _t(f"#{b.offence}")]
        if wide:
            row.append(_t(ago(taken_at, b.since)))
        rows.append(row)
    return _table("Bans", len(bans), columns, rows, width, len(bans) - shown)


def render_events(
    snapshot: StatusSnapshot, width: int = WIDE, *, max_rows: int | None = None
) -> RenderableType:
    events = snapshot.events
    if not events:
        return Text("No events yet.")
    limit = RECENT_EVENTS_SHOWN if max_rows is None else min(RECENT_EVENTS_SHOWN, max_rows)
    recent = list(reversed(events[-limit:]))  # newest first
    columns = [
        _Column("when", "right"),
        _Column("event"),
        _Column("source"),
        _Column("detail", flexible=True),
    ]
    rows = [
        [
            _t(ago(snapshot.header.taken_at, e.at)),
            _t(kind_label(e.kind), _event_style(e)),
            _t(e.source or "-"),
            _t(_event_detail(e, width >= WIDE)),
        ]
        for e in recent
    ]
    return _table("Recent events", len(recent), columns, rows, width)


def _event_style(event: EventInfo) -> str:
    if any(w in event.kind for w in BAD_WORDS):
        return "red"
    if any(w in event.kind for w in GOOD_WORDS):
        return "green"
    return ""


def _event_detail(event: EventInfo, wide: bool) -> str:
    parts = [f"door {event.door}"] if event.door else []
    if event.detail:
        parts.append(event.detail)
    return ": ".join(parts) if wide else " ".join(parts)


# ---- counters -----------------------------------------------------------------------------------


def render_counters(snapshot: StatusSnapshot, width: int = WIDE) -> RenderableType:
    """Counter lines; items are packed whole, so "spa refused 3" never breaks across lines."""
    counters = snapshot.counters
    lines: list[tuple[str, list[str], str]] = []
    for label, names in COUNTER_LINES:
        items = [f"{word} {counters[name]}" for name, word in names.items() if name in counters]
        if items:
            lines.append((label, items, ""))
    failures = [f"{words(n)} {v}" for n, v in failure_counters(counters)]
    lines.append(("failures: ", failures or ["none"], "red" if failures else ""))
    text = Text("Counters", style="bold")
    for label, items, style in lines:
        text.append("\n" + label)
        text.append(_pack(items, width, len(label)), style=style)
    return text


def _pack(items: Sequence[str], width: int, indent: int) -> str:
    """Join items with " · ", breaking lines between items (continuations indented)."""
    out = ""
    column = indent
    for i, item in enumerate(items):
        sep = " · " if i else ""
        if i and column + len(sep) + len(item) > width:
            out += "\n" + " " * indent
            column = indent
            sep = ""
        out += sep + item
        column += len(sep) + len(item)
    return out


def failure_counters(counters: Mapping[str, int]) -> list[tuple[str, int]]:
    """Counters that count failures, by kind (knock, SPA, authentication, ...), in name order."""
    names = sorted(n for n in counters if _is_failure(n))
    return [(n, counters[n]) for n in names]


def _is_failure(name: str) -> bool:
    return name.endswith(("_failed", "_refused", "_failures", "_denied")) or name == "decoy_hits"
