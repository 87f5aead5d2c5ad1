# Cross-check against the field's reference samples: fail2ban's annotated sshd logs
# (../shared/corpus/fail2ban-sshd/{sshd,sshd-journal}, format in its README). Every expectation
# is run through parse_syslog_line (or the journal's identifier/PID/MESSAGE split) and the
# SshdDetector, in our two modes:
#   * normal     <- blocks whose `# filterOptions:` list `{}`;
#   * aggressive <- blocks listing "aggressive", "ddos" or "extra": fail2ban's ddos and extra modes
#     are subsets of its aggressive mode (every such block in the corpus lists aggressive too), so
#     their lines are fed, in file order, to our one aggressive detector.
# A `match: true` line must yield exactly one failure from the expected host (and the expected
# user / attempts / time where given); a `match: false` line must yield none. A failure whose
# host sshd logged as a name (or as non-canonical text like "192.030.0.6") is counted as
# skipped: we never resolve names, so no address can be checked — the line must still be
# recognised as a failure from exactly that host text.
# Constraints ("opts.get('mode') != 'aggressive'", "name == 'sshd'") are evaluated by a tiny
# whitelisting AST walker, never by eval().
from __future__ import annotations

import ast
import ipaddress
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from guardian.addresses import parse_address
from guardian.parsers.sshd import Detection, Mode, SshdDetector
from guardian.parsers.syslog_line import parse_syslog_line

REPO = Path(__file__).resolve().parents[1]
CORPUS_ENV = "GUARDIAN_FAIL2BAN_CORPUS"
# The README's clock: local time in CET/CEST, "now" = 2005-08-14 10:00 UTC.
ZONE = ZoneInfo("Europe/Berlin")
NOW = datetime(2005, 8, 14, 12, 0, tzinfo=ZONE)
FILES = ("sshd", "sshd-journal")
MODES: tuple[Mode, ...] = ("normal", "aggressive")
_OUR_MODE = {None: "normal", "normal": "normal", "aggressive": "aggressive", "ddos": "aggressive",
             "extra": "aggressive"}  # fmt: skip
_JOURNAL_LINE = re.compile(
    r"(?P<host>\S+) (?P<ident>sshd(?:-session)?)\[(?P<pid>\d+)\]: (?P<msg>.*)"
)


def corpus_dir() -> Path:
    """The corpus beside the clone (../shared), or $GUARDIAN_FAIL2BAN_CORPUS."""
    override = os.environ.get(CORPUS_ENV)
    directory = Path(override) if override else REPO.parent / "shared" / "corpus" / "fail2ban-sshd"
    if not all((directory / name).is_file() for name in FILES):
        pytest.fail(
            f"fail2ban corpus not found in {directory} (expected files {', '.join(FILES)}); CI "
            f"keeps ../shared beside the clone, or point ${CORPUS_ENV} at it",
            pytrace=False,
        )
    return directory


# ---- the constraint language: names, opts.get('k'), ==, !=, and, or, not, constants ----------


def _evaluate(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BoolOp):
        values = [_evaluate(v, env) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _evaluate(node.operand, env)
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        left, right = _evaluate(node.left, env), _evaluate(node.comparators[0], env)
        if isinstance(node.ops[0], ast.Eq):
            return left == right
        if isinstance(node.ops[0], ast.NotEq):
            return left != right
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "opts"
        and not node.keywords
        and 1 <= len(node.args) <= 2
    ):
        args = [_evaluate(a, env) for a in node.args]
        return env["opts"].get(*args)
    raise ValueError(f"constraint outside the supported language: {ast.dump(node)}")


def constraint_holds(expression: str, opts: dict[str, Any]) -> bool:
    return bool(_evaluate(ast.parse(expression, mode="eval"), {"name": "sshd", "opts": opts}))


# ---- reading the sample file -------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    lineno: int
    line: str
    expect: dict[str, Any]
    modes: frozenset[str]  # our modes this line is checked (and fed) in


def _modes_of(options: Any) -> frozenset[str]:
    entries = options if isinstance(options, list) else [options]
    modes = set()
    for entry in entries:
        condition = entry.get("test.condition")
        if condition is not None and not constraint_holds(condition, entry):
            continue
        modes.add(_OUR_MODE[entry.get("mode")])
    return frozenset(modes)


def read_samples(path: Path) -> list[Sample]:
    samples: list[Sample] = []
    modes = frozenset({"normal"})
    expect: dict[str, Any] | None = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.startswith("# filterOptions:"):
            modes = _modes_of(json.loads(raw.split(":", 1)[1]))
        elif raw.startswith("# fileOptions:"):
            options = json.loads(raw.split(":", 1)[1])
            condition = options.get("test.condition")
            if condition is not None and not constraint_holds(condition, options):
                return []
        elif raw.startswith("# failJSON:"):
            expect = json.loads(raw.split(":", 1)[1])
        elif raw.startswith("#") or not raw.strip():
            continue
        else:
            if expect is None:
                raise AssertionError(f"{path.name}:{lineno}: data line without # failJSON")
            samples.append(Sample(lineno, raw, expect, modes))
            expect = None
    return samples


# ---- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    passed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)


def _split(line: str, journal: bool) -> tuple[str | None, int | None, str, float | None] | None:
    if journal:  # the journal hands us SYSLOG_IDENTIFIER, _PID and MESSAGE as fields
        m = _JOURNAL_LINE.fullmatch(line)
        if m is None:
            return None
        return m["host"], int(m["pid"]), m["msg"], None
    record = parse_syslog_line(line, reference=NOW)
    if record is None:
        return None
    return record.host, record.pid, record.message, record.wall_time


def _expected_host(expect: dict[str, Any]) -> str | None:
    for key in ("host", "ip4", "ip6"):
        if expect.get(key) is not None:
            return str(expect[key])
    return None


def _skip_reason(text: str) -> str:
    return "dns-name" if re.search(r"[A-Za-z]", text) else "non-canonical-address"


def _check(sample: Sample, failures: list[Detection], when: float | None, outcome: Outcome) -> None:
    where = f"line {sample.lineno}: {sample.line!r}"
    expect = sample.expect
    if not expect["match"]:
        if failures:
            outcome.failed.append(f"{where}: expected no failure, got {failures}")
        else:
            outcome.passed += 1
        return
    if len(failures) != 1:
        outcome.failed.append(f"{where}: expected one failure, got {failures}")
        return
    got = failures[0]
    problems = []
    host = _expected_host(expect)
    skip = None
    if host is not None:
        try:
            wanted = parse_address(host)
        except ValueError:
            wanted = None
        if wanted is not None and got.source != wanted:
            problems.append(f"source {got.source} != {wanted}")
        elif wanted is None:
            if got.source is not None or got.host_name != host:
                problems.append(f"host {got.source or got.host_name} != {host!r}")
            else:
                skip = _skip_reason(host)
    if "user" in expect and got.user != expect["user"]:
        problems.append(f"user {got.user!r} != {expect['user']!r}")
    if "attempts" in expect and got.attempts != expect["attempts"]:
        problems.append(f"attempts {got.attempts} != {expect['attempts']}")
    if "time" in expect:
        local = None if when is None else datetime.fromtimestamp(when, ZONE)
        if local is None or local.strftime("%Y-%m-%dT%H:%M:%S") != expect["time"]:
            problems.append(f"time {local} != {expect['time']}")
    if problems:
        outcome.failed.append(f"{where}: {'; '.join(problems)}")
    elif skip is not None:
        outcome.skipped[skip] += 1
    else:
        outcome.passed += 1


def run_file(path: Path, mode: Mode) -> Outcome:
    journal = path.name.endswith("journal")
    detector = SshdDetector(mode)
    opts = {} if mode == "normal" else {"mode": mode}
    keys: dict[tuple[str | None, int], int] = {}  # fail2ban keys a connection by "host sshd[PID]"
    outcome = Outcome()
    for sample in read_samples(path):
        if mode not in sample.modes:
            continue
        split = _split(sample.line, journal)
        if split is None:
            outcome.failed.append(
                f"line {sample.lineno}: not parsed as an sshd line: {sample.line!r}"
            )
            continue
        host, pid, message, when = split
        key = keys.setdefault((host, pid), len(keys)) if pid is not None else None
        detections = detector.feed(key, message, when)
        constraint = sample.expect.get("constraint")
        if constraint is not None and not constraint_holds(constraint, opts):
            outcome.skipped["constraint-not-for-this-mode"] += 1
            continue
        failures = [d for d in detections if d.kind == "failure"]
        _check(sample, failures, when, outcome)
    return outcome


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FILES)
def test_fail2ban_corpus(name: str, mode: Mode) -> None:
    outcome = run_file(corpus_dir() / name, mode)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(outcome.skipped.items())) or "none"
    print(
        f"\nfail2ban corpus {name} [{mode}]: {outcome.passed} passed, "
        f"{len(outcome.failed)} failed, skipped: {skipped}"
    )
    for problem in outcome.failed:
        print("  FAIL", problem)
    assert not outcome.failed, f"{len(outcome.failed)} expectations failed (see output)"
    assert outcome.passed > 20  # the files were really read


def test_constraints_are_evaluated_not_eval() -> None:
    assert constraint_holds("opts.get('mode') != 'aggressive'", {})
    assert not constraint_holds("opts.get('mode') == 'aggressive'", {})
    assert constraint_holds("name == 'sshd'", {})
    with pytest.raises(ValueError):
        constraint_holds("__import__('os').system('true')", {})


def test_expected_hosts_cover_v4_mapped() -> None:
    # The README promises ::ffff:1.2.3.4 is expected as 1.2.3.4: our normalisation agrees.
    assert parse_address("::ffff:1.2.3.4") == ipaddress.ip_address("1.2.3.4")
