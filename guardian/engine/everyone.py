# The everyone window: an open_to = "everyone" door opens the guarded ports to every source for
# the door's window, a HARD bound. The kernel holds it as timed elements (nft_rules.py: the
# `everyone` set), so it lapses by itself even if the daemon dies; this module is the engine's
# record of it, for status, the closing notice and adoption at start-up.
#
# Rules (decided for issue 9: "the door itself never stays open longer, whatever happens"):
#   closed  knock completes  -> open     OpenEveryone(window); Notice everyone_opened
#   open    knock completes  -> open     nothing but a notice: a re-knock never extends it
#   open    close sequence   -> closed   CloseEveryone; Notice everyone_closed
#   open    deadline         -> closed   CloseEveryone (the kernel has timed it out already; the
#                                        delete is idempotent); Notice everyone_closed
#   closed  adopt(left)      -> open     nothing: the kernel's remaining time is the deadline, so
#                                        a restart never extends it either
# Sessions are not this module's business: the gate passes established connections anyway, and
# no session keeps the window open. Bans still apply (their rules come first in the chain).
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from guardian.actions import Action, CloseEveryone, Notice, OpenEveryone
from guardian.addresses import IPAddress
from guardian.config import format_duration

REASON_EVERYONE_ENDED = "window ended"


@dataclass(frozen=True, slots=True)
class EveryoneView:
    """The open everyone window: which door opened it, when, until when (engine clock)."""

    door: str
    since: float
    until: float


class EveryoneWindow:
    """At most one open everyone window (the kernel set is one set for all such doors)."""

    def __init__(self, counters: Counter[str]) -> None:
        self._counters = counters
        self._open: EveryoneView | None = None

    def view(self) -> EveryoneView | None:
        return self._open

    def next_deadline(self) -> float | None:
        return None if self._open is None else self._open.until

    def open(self, door: str, window: float, now: float, source: IPAddress) -> list[Action]:
        if self._open is not None:
            self._counters["everyone_not_extended"] += 1
            left = format_duration(round(max(0.0, self._open.until - now)))
            detail = f"already open by {self._open.door}, {left} left: not extended"
            return [Notice("knock_completed", source, door, detail)]
        self._open = EveryoneView(door, now, now + window)
        self._counters["everyone_opened"] += 1
        detail = f"guarded ports open to EVERY source for {format_duration(window)}"
        return [
            OpenEveryone(door, window),
            Notice("knock_completed", source, door),
            Notice("everyone_opened", source, door, detail),
        ]

    def adopt(self, door: str, expires_in: float, now: float) -> list[Action]:
        """Start-up: the kernel still holds an everyone window with `expires_in` seconds left."""
        if self._open is not None or expires_in <= 0:
            return []
        self._open = EveryoneView(door, now, now + expires_in)
        self._counters["everyone_adopted"] += 1
        detail = f"found open in the kernel, {format_duration(round(expires_in))} left"
        return [Notice("everyone_opened", None, door, detail)]

    def close(self, reason: str, source: IPAddress | None = None) -> list[Action]:
        if self._open is None:
            return []
        door = self._open.door
        self._open = None
        self._counters["everyone_closed"] += 1
        return [CloseEveryone(door, reason), Notice("everyone_closed", source, door, reason)]

    def expire(self, now: float) -> list[Action]:
        if self._open is None or self._open.until > now:
            return []
        return self.close(REASON_EVERYONE_ENDED)
