# Knock matching: which source has walked how far along which sequence, and what ends an attempt.
#
# Every door contributes one matcher for its open sequence and, when configured, one for its
# close sequence. Progress is kept per (source, matcher). For a knock (a port/protocol "step")
# from a source:
#
#   * decoy step  -> every attempt of that source is reset (a port scan hits decoys around the
#                    sequence ports, whatever its order: knock#71). A TCP decoy counts when it looks
#                    like a scan probe (SYN set, ACK clear) or would be a valid knock for its door.
#   * knock step  -> for each matcher whose door accepts the packet (TCP flags; UDP has none):
#       - the matcher's next step       advances it (the last step completes the sequence);
#       - the step just taken           is a retransmission: tolerated, nothing changes (knock#72);
#       - any other knock step          resets the attempt; if it is the matcher's first step
#                                       it starts a fresh attempt at step 1 (knockd:
#                                       8000,7000,8000,9000 opens).
#     A TCP knock whose flags a door does not accept is invisible to that door's matchers.
#   * anything else -> ignored (counted).
#
# Attempts expire by time: first knock + door timeout, through the deadline queue, so a stale
# attempt never lingers waiting for the next packet. Completing the last step at the deadline or
# later fails.
#
# Memory is bounded: at most `max_attempts` sources hold attempts. They are kept in two LRU
# segments, sources whose best attempt is still at step 1 ("fresh") and sources further along
# ("advanced"). Eviction takes the least recently touched fresh source first, so a flood of
# single spoofed knocks cannot push out a real client who is half-way through a sequence.
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from guardian.addresses import IPAddress
from guardian.config import Door, KnockStep, TcpFlags
from guardian.engine.deadlines import DeadlineQueue
from guardian.events import ACK, SYN, KnockSeen

MatcherKind: TypeAlias = Literal["open", "close"]
# A matcher's identity across reconfiguration: door name, which door of that name (names should be
# unique, but identity must not break if they are not), open or close.
MatcherKey: TypeAlias = tuple[str, int, MatcherKind]
AttemptKey: TypeAlias = tuple[IPAddress, MatcherKey]

REASON_WRONG_PORT = "wrong knock port"
REASON_TIMEOUT = "timeout"
REASON_DECOY = "decoy port hit"
REASON_EVICTED = "evicted: too many attempts in progress"


@dataclass(frozen=True, slots=True)
class Matcher:
    """One sequence to match: a door's open sequence or its close sequence."""

    key: MatcherKey
    door: Door
    kind: MatcherKind
    steps: tuple[KnockStep, ...]

    def accepts(self, knock: KnockSeen) -> bool:
        """Whether this door sees the packet at all (TCP flags; UDP carries none)."""
        return knock.proto != "tcp" or self.door.tcp_flags.matches(knock.tcp_flags)


@dataclass(slots=True)
class Attempt:
    """Progress of one source along one matcher: `stage` steps taken (1 .. len(steps) - 1)."""

    matcher: Matcher
    stage: int
    started_at: float
    deadline: float


@dataclass(frozen=True, slots=True)
class KnockCompleted:
    source: IPAddress
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class KnockFailed:
    """An attempt ended unfinished; `stage` is how far it had come (worth telling if > 1)."""

    source: IPAddress
    matcher: Matcher
    stage: int
    reason: str


KnockOutcome: TypeAlias = KnockCompleted | KnockFailed

# A source's attempts, by matcher.
Progress: TypeAlias = dict[MatcherKey, Attempt]


def build_matchers(doors: Iterable[Door]) -> tuple[Matcher, ...]:
    matchers: list[Matcher] = []
    seen_names: Counter[str] = Counter()
    for door in doors:
        ordinal = seen_names[door.name]
        seen_names[door.name] += 1
        if door.sequence:
            matchers.append(Matcher((door.name, ordinal, "open"), door, "open", door.sequence))
        if door.close:
            matchers.append(Matcher((door.name, ordinal, "close"), door, "close", door.close))
    return tuple(matchers)


def _is_scan_probe(flags: int) -> bool:
    return bool(flags & SYN) and not flags & ACK


class KnockTracker:
    """Per-source knock progress for a set of doors, bounded in memory, driven by explicit time."""

    def __init__(self, doors: Iterable[Door], max_attempts: int, counters: Counter[str]) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._max_attempts = max_attempts
        self._counters = counters
        self._fresh: OrderedDict[IPAddress, Progress] = OrderedDict()
        self._advanced: OrderedDict[IPAddress, Progress] = OrderedDict()
        self._deadlines: DeadlineQueue[AttemptKey] = DeadlineQueue()
        self._use(tuple(doors))

    # -- configuration -------------------------------------------------------------------------

    def _use(self, doors: tuple[Door, ...]) -> None:
        self._matchers = build_matchers(doors)
        self._knock_steps = frozenset(s for m in self._matchers for s in m.steps)
        # Which doors' flags a decoy step answers to (a door's own flags make any probe that could
        # walk that door also trip its decoys, e.g. FIN scans against a door with no flag filter).
        decoy_flags: dict[KnockStep, list[TcpFlags]] = {}
        for door in doors:
            for step in door.decoys:
                if step not in self._knock_steps:  # a knock step is never a decoy
                    decoy_flags.setdefault(step, []).append(door.tcp_flags)
        self._decoy_flags = {step: tuple(flags) for step, flags in decoy_flags.items()}

    def reconfigure(self, doors: Iterable[Door]) -> int:
        """Switch to new doors; attempts of doors that changed or vanished are dropped (counted)."""
        new_doors = tuple(doors)
        old = {m.key: m for m in self._matchers}
        self._use(new_doors)
        kept = {m.key: m for m in self._matchers if old.get(m.key) == m}
        dropped = 0
        for segment in (self._fresh, self._advanced):
            for source, progress in list(segment.items()):
                for key, attempt in list(progress.items()):
                    matcher = kept.get(key)
                    if matcher is None:
                        del progress[key]
                        self._deadlines.cancel((source, key))
                        dropped += 1
                    else:
                        attempt.matcher = matcher
                self._place(source, progress, touched=False)
        self._counters["attempts_dropped"] += dropped
        return dropped

    # -- observation ---------------------------------------------------------------------------

    @property
    def sources_in_progress(self) -> int:
        """Sources holding at least one attempt (bounded by max_attempts)."""
        return len(self._fresh) + len(self._advanced)

    @property
    def attempt_records(self) -> int:
        return len(self._deadlines)

    @property
    def timer_entries(self) -> int:
        return self._deadlines.entries

    def next_deadline(self) -> float | None:
        return self._deadlines.earliest()

    # -- input ---------------------------------------------------------------------------------

    def feed(self, source: IPAddress, knock: KnockSeen, now: float) -> list[KnockOutcome]:
        self._counters["knocks_seen"] += 1
        step = KnockStep(knock.port, knock.proto)
        decoy_flags = self._decoy_flags.get(step)
        if decoy_flags is not None:
            if (
                knock.proto != "tcp"
                or _is_scan_probe(knock.tcp_flags)
                or any(flags.matches(knock.tcp_flags) for flags in decoy_flags)
            ):
                self._counters["decoy_hits"] += 1
                return self._reset_all(source, REASON_DECOY)
            self._counters["knocks_ignored"] += 1
            return []
        matchers = (
            [m for m in self._matchers if m.accepts(knock)] if step in self._knock_steps else []
        )
        if not matchers:
            self._counters["knocks_ignored"] += 1
            return []
        return self._match(source, step, matchers, now)

    def _match(
        self, source: IPAddress, step: KnockStep, matchers: list[Matcher], now: float
    ) -> list[KnockOutcome]:
        progress = self._fresh.get(source) or self._advanced.get(source) or {}
        completed: list[KnockOutcome] = []
        broken: list[Attempt] = []
        starting: list[Matcher] = []
        went_on = False  # did this knock advance (or complete) some sequence?
        for matcher in matchers:
            attempt = progress.get(matcher.key)
            if attempt is not None:
                if step == matcher.steps[attempt.stage]:
                    attempt.stage += 1
                    went_on = True
                    if attempt.stage == len(matcher.steps):
                        self._forget(source, progress, matcher.key)
                        completed.append(KnockCompleted(source, matcher))
                    continue
                if step == matcher.steps[attempt.stage - 1]:
                    self._counters["knocks_duplicate"] += 1
                    continue
                self._forget(source, progress, matcher.key)
                broken.append(attempt)
            if step == matcher.steps[0]:
                if len(matcher.steps) == 1:
                    went_on = True  # a one-step sequence completes at once
                    completed.append(KnockCompleted(source, matcher))
                else:
                    starting.append(matcher)
        # The knock that completes a sequence starts nothing else: an open sequence ending on the
        # port its close sequence begins with would otherwise leave a close attempt behind that
        # times out as a "failed knock" after every successful one.
        if completed:
            self._counters["attempts_not_started"] += len(starting)
        else:
            for matcher in starting:
                self._start(source, progress, matcher, now)
        outcomes = self._failures(source, broken, went_on)
        outcomes.extend(completed)
        self._place(source, progress, touched=True)
        outcomes.extend(self._evict_beyond_cap(source))
        return outcomes

    def _failures(
        self, source: IPAddress, broken: list[Attempt], went_on: bool
    ) -> list[KnockOutcome]:
        """Broken attempts. When the same knock advanced another matcher, the source simply went on
        along a different sequence (doors sharing first ports): no failure to report, only count."""
        if went_on:
            self._counters["attempts_diverged"] += len(broken)
            return []
        self._counters["knocks_failed"] += len(broken)
        return [KnockFailed(source, a.matcher, a.stage, REASON_WRONG_PORT) for a in broken]

    def _start(self, source: IPAddress, progress: Progress, matcher: Matcher, now: float) -> None:
        """Take the first step of a matcher of two steps or more."""
        deadline = now + matcher.door.timeout
        progress[matcher.key] = Attempt(matcher, 1, now, deadline)
        self._deadlines.schedule((source, matcher.key), deadline)
        self._counters["attempts_started"] += 1

    def _reset_all(self, source: IPAddress, reason: str) -> list[KnockOutcome]:
        progress = self._fresh.pop(source, None) or self._advanced.pop(source, None) or {}
        for key in progress:
            self._deadlines.cancel((source, key))
        self._counters["knocks_failed"] += len(progress)
        return [KnockFailed(source, a.matcher, a.stage, reason) for a in progress.values()]

    # -- time ----------------------------------------------------------------------------------

    def expire_next(self, now: float) -> KnockFailed | None:
        """End the earliest attempt whose deadline has come (deadline <= now), if any."""
        key = self._deadlines.pop_due(now)
        if key is None:
            return None
        source, matcher_key = key
        progress = self._fresh.get(source) or self._advanced.get(source)
        if progress is None or matcher_key not in progress:
            raise AssertionError(f"deadline for an attempt that does not exist: {key!r}")
        attempt = progress.pop(matcher_key)
        self._place(source, progress, touched=False)
        self._counters["knocks_failed"] += 1
        return KnockFailed(source, attempt.matcher, attempt.stage, REASON_TIMEOUT)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _forget(self, source: IPAddress, progress: Progress, key: MatcherKey) -> None:
        del progress[key]
        self._deadlines.cancel((source, key))

    def _place(self, source: IPAddress, progress: Progress, *, touched: bool) -> None:
        """Keep the source in the LRU segment its progress calls for (or nowhere if it has none).

        touched: the source just sent a knock, so it becomes the most recently used one."""
        advanced = any(a.stage > 1 for a in progress.values())
        home, other = (self._advanced, self._fresh) if advanced else (self._fresh, self._advanced)
        if not progress:
            home.pop(source, None)
            other.pop(source, None)
        elif source in other:
            del other[source]
            home[source] = progress
        elif source in home:
            if touched:
                home.move_to_end(source)
        else:
            home[source] = progress

    def _evict_beyond_cap(self, keep: IPAddress) -> list[KnockOutcome]:
        """Drop least recently touched sources until the cap holds again; never `keep` (the source
        that just knocked). Evicted attempts are reported like failures (told only if advanced)."""
        evicted: list[KnockOutcome] = []
        while self.sources_in_progress > self._max_attempts:
            victim = next((s for s in self._fresh if s != keep), None)
            if victim is not None:
                progress = self._fresh.pop(victim)
            else:
                victim = next(s for s in self._advanced if s != keep)
                progress = self._advanced.pop(victim)
            for key, attempt in progress.items():
                self._deadlines.cancel((victim, key))
                evicted.append(KnockFailed(victim, attempt.matcher, attempt.stage, REASON_EVICTED))
            self._counters["attempts_evicted"] += 1
        return evicted
