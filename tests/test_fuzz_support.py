# Shared pieces of the fuzz tests (tests/test_fuzz_*.py, issue 8 item 1) and of their long run
# (bench/fuzz_long.py). The invariant for every untrusted-input surface: a result or the module's
# own typed error, never another exception, and bounded time per input.
#
# - fuzz_settings(n): the CI budget of one property (n examples, no per-example deadline: the
#   machine is shared, so time is asserted explicitly and generously by outcome(), and precisely
#   on the big adversarial inputs by assert_fast()).
# - outcome(surface, call, typed): runs one input, returns the result or the typed error, and turns
#   anything else into an AssertionError naming the surface — unless it is a KNOWN_BUGS entry (a
#   crash already reported to the lead and pinned by an xfail(strict=True) test), which is counted
#   in KNOWN_HITS and tolerated, so the fuzzers keep exploring past it. When the lead fixes one,
#   its xfail test XPASSes (strict: a failure) and the entry here goes with the xfail marker.
# - counted(target): under @given, counts the examples each property ran (EXAMPLES), for the
#   long run's report. The long run scales every property's max_examples with the environment
#   variable GUARDIAN_FUZZ_SCALE and turns the example database off with GUARDIAN_FUZZ_NO_DB=1.
from __future__ import annotations

import functools
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., None])

EXAMPLES: Counter[str] = Counter()
KNOWN_HITS: Counter[str] = Counter()
SLOWEST: dict[str, float] = {}
DEFAULT_LIMIT = 2.0  # seconds for one small generated input: only catastrophic slowness fails
SCALE = float(os.environ.get("GUARDIAN_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int) -> settings:
    """The CI budget of one property: max_examples (times GUARDIAN_FUZZ_SCALE), no deadline."""
    options: dict[str, Any] = {}
    if os.environ.get("GUARDIAN_FUZZ_NO_DB"):
        options["database"] = None
    return settings(
        max_examples=max(1, round(max_examples * SCALE)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
        **options,
    )


def counted(target: str) -> Callable[[F], F]:
    """Count the examples a property runs (put it under @given)."""

    def decorate(test: F) -> F:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            EXAMPLES[target] += 1
            test(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True, slots=True)
class KnownBug:
    """A crash found by these fuzzers, reported, and pinned by an xfail(strict=True) test."""

    name: str
    exception: type[BaseException]
    where: str  # the innermost guardian/ function on the traceback
    message: str  # a substring of str(exception)

    def matches(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, self.exception)
            and self.message in str(exc)
            and innermost_guardian_frame(exc) == self.where
        )


# Each entry is pinned by the xfail test named in its comment; remove both together. Empty now:
# the crashes these fuzzers found (deep TOML nesting, ports and PIDs of thousands of digits or of
# non-ASCII digits, unhashable hook events, a 400-digit control duration, a deeply nested control
# reply) were fixed in 6a0d512 and their reproducers are plain regression tests in
# test_fuzz_config.py, test_fuzz_control.py and test_fuzz_journal.py. An entry looks like:
#   "config": (KnownBug("config-deep-nesting", RecursionError, "parse_config", "recursion"),),
KNOWN_BUGS: dict[str, tuple[KnownBug, ...]] = {}


def innermost_guardian_frame(exc: BaseException) -> str:
    """The name of the innermost function in guardian/ that the exception passed through."""
    name = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/guardian/" in frame.filename:
            name = frame.name
    return name


def outcome(
    surface: str,
    call: Callable[[], T],
    typed: tuple[type[BaseException], ...] = (),
    *,
    limit: float = DEFAULT_LIMIT,
) -> T | BaseException:
    """Run one input: its result, or the typed error it raised. Any other exception fails the
    test (unless it is a known, pinned bug: counted and returned), and so does a run longer than
    `limit` seconds."""
    started = time.perf_counter()
    try:
        result: T | BaseException = call()
    except typed as exc:
        result = exc
    except Exception as exc:
        for bug in KNOWN_BUGS.get(surface, ()):
            if bug.matches(exc):
                KNOWN_HITS[bug.name] += 1
                return exc
        raise AssertionError(
            f"{surface}: {type(exc).__name__} escaped (expected a result or "
            f"{', '.join(t.__name__ for t in typed) or 'no exception'}): {exc}"
        ) from exc
    elapsed = time.perf_counter() - started
    SLOWEST[surface] = max(SLOWEST.get(surface, 0.0), elapsed)
    assert elapsed < limit, f"{surface}: one input took {elapsed:.3f} s (limit {limit} s)"
    return result


def assert_fast(call: Callable[[], Any], limit: float, what: str) -> Any:
    """Run call() once and assert it took less than `limit` seconds (best of three, so one
    scheduling hiccup on the shared machine is not a failure; a superlinear parser is slow
    both times)."""
    best = float("inf")
    result: Any = None
    for _ in range(3):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
        if best < limit:
            return result
    raise AssertionError(f"{what}: took {best:.3f} s, limit {limit} s")
