# Small pure formatters shared by every view: durations, ages, state and event labels. Times come
# from the snapshot (DESIGN.md principle 7): an age is `taken_at - instant`, never "now".
from __future__ import annotations

from guardian.snapshot import GrantInfo, SessionInfo

STATE_LABELS = {"window": "window", "in_session": "in session", "linger": "linger"}


def span(seconds: float) -> str:
    """A compact duration with at most two units: 7s, 4m05s, 2h03m, 3d04h."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def ago(taken_at: float, instant: float) -> str:
    return f"{span(taken_at - instant)} ago"


def until(taken_at: float, instant: float | None) -> str:
    """When a ban ends, relative to the snapshot: "in 9m58s", "permanent"."""
    if instant is None:
        return "permanent"
    return f"in {span(instant - taken_at)}"


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state.replace("_", " "))


def kind_label(kind: str) -> str:
    return kind.replace("_", " ")


def words(name: str) -> str:
    """A counter name as words: knocks_failed -> "knocks failed"."""
    return name.replace("_", " ")


def endpoint(session: SessionInfo) -> str:
    """source port N (an IPv6 address and a colon would read badly)."""
    return f"{session.source} port {session.sport}"


def user_label(session: SessionInfo) -> str:
    """The user once sshd named one; before that the authentication state, e.g. "(pending)"."""
    if session.user:
        return session.user
    return f"({session.auth})" if session.auth else "-"


def port_label(port: int) -> str:
    return str(port) if port else "?"  # 0: only the journal knows the connection so far


def grant_sessions(grant: GrantInfo, *, short: bool = False) -> str:
    """Sessions, and connections still logging in: "2", "1 (+1 logging in)" (short: "1 +1"),
    "-" for none at all."""
    if not grant.pending:
        return str(grant.sessions) if grant.sessions else "-"
    if short:
        return f"{grant.sessions} +{grant.pending}"
    return f"{grant.sessions} (+{grant.pending} logging in)"
