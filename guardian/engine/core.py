# The Engine facade: the one object the daemon talks to. Events in, actions out, time as an argument
# (sans-IO, like h11 and aioquic). It ties the knock tracker (knock.py) to the grant table
# (grants.py), decides what is worth telling the operator, and merges both deadline queues into the
# single timer the event loop waits on. It never performs I/O and never reads a clock.
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from guardian.actions import Action, Notice
from guardian.addresses import in_any, normalize
from guardian.config import MAX_ATTEMPTS, Config
from guardian.engine.grants import GrantTable, GrantView
from guardian.engine.knock import KnockCompleted, KnockFailed, KnockOutcome, KnockTracker
from guardian.events import Event, GrantFound, GrantRequested, KnockSeen, RevokeRequested

OPERATOR_DOOR = "operator"
REASON_CLOSE_SEQUENCE = "close sequence"

# Every counter the engine keeps; all start at 0 so a snapshot always carries the same keys.
COUNTER_NAMES: tuple[str, ...] = (
    "knocks_seen",  # every KnockSeen event
    "knocks_ignored",  # matched no door (unknown port, or TCP flags no door accepts)
    "knocks_duplicate",  # a retransmission of the step just taken (tolerated)
    "decoy_hits",  # scan probes on decoy ports (each resets the source's attempts)
    "attempts_started",  # first steps taken
    "attempts_evicted",  # sources dropped to keep attempts under the cap (LRU)
    "attempts_diverged",  # attempts left because the same knock advanced another sequence
    "attempts_dropped",  # attempts of doors that changed at a reconfigure
    "knocks_completed",  # sequences completed (open and close)
    "knocks_failed",  # attempts ended by a wrong port, a decoy or their timeout
    "grants_opened",
    "grants_refreshed",
    "grants_closed",
    "grants_adopted",
    "unexpected_events",  # events that made no sense in the current state (counted, not raised)
)


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """The engine's state at one instant, for `guardian status` and the control socket."""

    now: float
    grants: tuple[GrantView, ...]
    attempts: int  # sources with a knock attempt in progress (never above the cap)
    attempt_records: int  # (source, sequence) progress records behind those attempts
    timer_entries: int  # entries in the internal deadline heaps (bounded; a memory gauge)
    next_deadline: float | None
    counters: Mapping[str, int]  # a copy; COUNTER_NAMES are always present


class Engine:
    """Pure policy core. Call feed() for each event, handle_timer() when get_timer() has come."""

    def __init__(self, config: Config, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        self._config = config
        self._max_attempts = max_attempts
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))
        self._knocks = KnockTracker(config.doors, max_attempts, self._counters)
        self._grants = GrantTable(self._counters)
        self._last_now: float | None = None

    @property
    def config(self) -> Config:
        return self._config

    # -- the public API ------------------------------------------------------------------------

    def feed(self, event: Event, now: float) -> list[Action]:
        now = self._advance_clock(now)
        # Deadlines that have come are honoured before the event: expiry goes by time, whichever
        # of the timer and the packet the event loop happens to deliver first.
        actions = self._run_due(now)
        if isinstance(event, KnockSeen):
            actions += self._on_knock(event, now)
        elif isinstance(event, GrantFound):
            source = normalize(event.source)
            actions += self._grants.adopt(source, event.expires_in, self._config.access.window, now)
        elif isinstance(event, GrantRequested):
            actions += self._on_grant_requested(event, now)
        elif isinstance(event, RevokeRequested):
            actions += self._grants.revoke(normalize(event.source), event.reason)
        else:
            self._counters["unexpected_events"] += 1
        # A zero-length window or an adopted grant with no time left is due at once: settle it now,
        # so get_timer() never points before `now`.
        return actions + self._run_due(now)

    def handle_timer(self, now: float) -> list[Action]:
        return self._run_due(self._advance_clock(now))

    def get_timer(self) -> float | None:
        deadlines = [
            d for d in (self._knocks.next_deadline(), self._grants.next_deadline()) if d is not None
        ]
        return min(deadlines) if deadlines else None

    def reconfigure(self, config: Config, now: float) -> list[Action]:
        """SIGHUP: grants stay as they are; attempts of doors that changed are dropped."""
        now = self._advance_clock(now)
        actions = self._run_due(now)
        self._knocks.reconfigure(config.doors)
        self._config = config
        return actions

    def snapshot(self, now: float) -> EngineSnapshot:
        """A read-only view; it changes nothing, not even due deadlines."""
        return EngineSnapshot(
            now=now,
            grants=self._grants.views(now),
            attempts=self._knocks.sources_in_progress,
            attempt_records=self._knocks.attempt_records,
            timer_entries=self._knocks.timer_entries + self._grants.timer_entries,
            next_deadline=self.get_timer(),
            counters=dict(self._counters),
        )

    # -- events --------------------------------------------------------------------------------

    def _on_knock(self, event: KnockSeen, now: float) -> list[Action]:
        actions: list[Action] = []
        for outcome in self._knocks.feed(normalize(event.source), event, now):
            actions += self._on_knock_outcome(outcome, now)
        return actions

    def _on_knock_outcome(self, outcome: KnockOutcome, now: float) -> list[Action]:
        if isinstance(outcome, KnockFailed):
            return self._failure_notice(outcome)
        return self._on_completed(outcome, now)

    def _on_completed(self, done: KnockCompleted, now: float) -> list[Action]:
        self._counters["knocks_completed"] += 1
        source, door = done.source, done.matcher.door.name
        if done.matcher.kind == "close":
            if source not in self._grants:
                return [
                    Notice("knock_completed", source, door, "close sequence, no grant to close")
                ]
            effects = self._grants.revoke(source, REASON_CLOSE_SEQUENCE)
            return _cause_first(effects, Notice("knock_completed", source, door, "close sequence"))
        if in_any(source, self._config.guard.trusted):
            return [Notice("knock_completed", source, door, "trusted, no grant needed")]
        effects = self._grants.open(source, door, self._config.access.window, now)
        return _cause_first(effects, Notice("knock_completed", source, door))

    def _on_grant_requested(self, event: GrantRequested, now: float) -> list[Action]:
        if event.duration <= 0:
            self._counters["unexpected_events"] += 1
            return []
        source = normalize(event.source)
        return self._grants.open(source, OPERATOR_DOOR, event.duration, now, event.reason)

    def _failure_notice(self, failed: KnockFailed) -> list[Action]:
        # A single stray hit (stage 1) is counted, not told: a flood of them would drown the log.
        if failed.stage < 2:
            return []
        detail = failed.reason
        if failed.matcher.kind == "close":
            detail = f"close sequence: {detail}"
        return [Notice("knock_failed", failed.source, failed.matcher.door.name, detail)]

    # -- time ----------------------------------------------------------------------------------

    def _advance_clock(self, now: float) -> float:
        """The caller's monotonic clock never goes back; if it seems to, keep the latest time."""
        if self._last_now is not None and now < self._last_now:
            self._counters["unexpected_events"] += 1
            return self._last_now
        self._last_now = now
        return now

    def _run_due(self, now: float) -> list[Action]:
        """Settle every deadline <= now, earliest first, across attempts and grants."""
        actions: list[Action] = []
        while True:
            knock_at = self._knocks.next_deadline()
            grant_at = self._grants.next_deadline()
            if (
                knock_at is not None
                and knock_at <= now
                and (grant_at is None or knock_at <= grant_at)
            ):
                failed = self._knocks.expire_next(now)
                if failed is None:
                    raise AssertionError("a due attempt deadline did not expire")
                actions += self._failure_notice(failed)
            elif grant_at is not None and grant_at <= now:
                expired = self._grants.expire_next(now)
                if expired is None:
                    raise AssertionError("a due grant deadline did not expire")
                actions += expired
            else:
                return actions


def _cause_first(effects: list[Action], cause: Notice) -> list[Action]:
    """Order a step's actions: what to do to the world, then why (the cause), then the results."""
    return [
        *(a for a in effects if not isinstance(a, Notice)),
        cause,
        *(a for a in effects if isinstance(a, Notice)),
    ]
