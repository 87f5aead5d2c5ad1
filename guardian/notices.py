# Turning the engine's Notice actions into operator-facing log lines, with a rate limit so a flood
# (thousands of failed knocks a second) cannot drown the log or the disk. Pure: time is passed in.
from __future__ import annotations

from dataclasses import dataclass, field

from guardian.actions import Notice


def format_notice(notice: Notice) -> str:
    """One line, `kind source door detail`, stable enough for grep and humans alike."""
    parts = [notice.kind]
    if notice.source is not None:
        parts.append(f"source={notice.source}")
    if notice.door:
        parts.append(f"door={notice.door}")
    if notice.detail:
        parts.append(f"({notice.detail})")
    return " ".join(parts)


@dataclass
class RateLimiter:
    """A token bucket per notice kind: `burst` lines at once, then `rate` lines per second.

    Suppressed lines are counted and reported in the next line that gets through, so the log says
    how much it left out instead of silently losing it."""

    rate: float = 5.0
    burst: float = 20.0
    _tokens: dict[str, float] = field(default_factory=dict)
    _stamp: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def admit(self, kind: str, now: float) -> tuple[bool, int]:
        """(may this line be written, how many of this kind were suppressed before it)."""
        tokens = self._tokens.get(kind, self.burst)
        last = self._stamp.get(kind, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        self._stamp[kind] = now
        if tokens < 1.0:
            self._tokens[kind] = tokens
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False, 0
        self._tokens[kind] = tokens - 1.0
        return True, self._suppressed.pop(kind, 0)
