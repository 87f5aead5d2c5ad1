# The long fuzz run of issue 8 item 1: the same properties as tests/test_fuzz_*.py (every @given
# test there is a target), with far more inputs, in two engines one after the other:
#   hypothesis  each target re-run in rounds (a fresh random seed each round) until its share of
#               the time budget is spent; a failure is recorded (with Hypothesis' falsifying
#               example) and the target goes on with new rounds;
#   atheris     coverage-guided (libFuzzer) over guardian/'s instrumented code: one child process
#               per target, its input bytes fed to the target's Hypothesis strategy through
#               `test.hypothesis.fuzz_one_input`, so both engines check the same invariants. A
#               failing input is recorded (signature, message, the buffer to replay) and the run
#               goes on; libFuzzer's -timeout kills a child on an input slower than PER_INPUT_LIMIT.
# Known bugs (tests/test_fuzz_support.py KNOWN_BUGS, each pinned by an xfail test) are tolerated
# and counted per bug; anything else is a new crash. Results: bench/results/fuzz_long.json.
#
#   nice -n 10 .venv/bin/python bench/fuzz_long.py [--minutes 10] [--atheris-share 0.5]
#       [--only TARGET ...] [--json bench/results/fuzz_long.json]
# Replay an atheris finding: GUARDIAN_FUZZ_NO_DB=1 .venv/bin/python -c "import tests.MODULE as m;
#   m.FUNCTION.hypothesis.fuzz_one_input(bytes.fromhex('BUFFER'))"
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODULES = (
    "test_fuzz_packet", "test_fuzz_spa", "test_fuzz_sshd", "test_fuzz_journal", "test_fuzz_utmp",
    "test_fuzz_netlink", "test_fuzz_config", "test_fuzz_control",
)  # fmt: skip
PER_INPUT_LIMIT = 10  # seconds: libFuzzer's -timeout (a hang is a finding)
STATS_EVERY = 1.0  # seconds between the atheris child's stats writes (it never returns)

# The children and this process read these at import (tests/test_fuzz_support.py).
os.environ["GUARDIAN_FUZZ_NO_DB"] = "1"
sys.path.insert(0, str(REPO))


def targets(only: list[str]) -> list[tuple[str, str]]:
    """(module, function) of every @given test in the fuzz modules."""
    found = []
    for name in MODULES:
        module = importlib.import_module(f"tests.{name}")
        for attr in sorted(vars(module)):
            wanted = not only or any(o in f"{name}:{attr}" for o in only)
            if wanted and attr.startswith("test_") and hasattr(getattr(module, attr), "hypothesis"):
                found.append((name, attr))
    return found


def signature(exc: BaseException) -> str:
    """A crash's identity: exception type and the innermost guardian/ (or test) frame."""
    frames = [f for f in reversed(traceback.extract_tb(exc.__traceback__))]
    places = [f for f in frames if "/guardian/" in f.filename] or [
        f for f in frames if "/tests/" in f.filename
    ]
    where = f"{Path(places[0].filename).name}:{places[0].name}" if places else "?"
    return f"{type(exc).__name__} at {where}"


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


# ---- hypothesis --------------------------------------------------------------------------------
def run_hypothesis(target: tuple[str, str], seconds: float) -> dict[str, Any]:
    from tests import test_fuzz_support as support

    module = importlib.import_module(f"tests.{target[0]}")
    test = getattr(module, target[1])
    examples_before = sum(support.EXAMPLES.values())
    known_before = Counter(support.KNOWN_HITS)
    support.SLOWEST.clear()
    failures: dict[str, dict[str, Any]] = {}
    rounds = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        rounds += 1
        try:
            test()
        except Exception as exc:  # a falsified property: record it, go on with a new seed
            key = signature(exc)
            entry = failures.setdefault(key, {"signature": key, "count": 0})
            entry["count"] += 1
            entry.setdefault("message", first_line(exc))
            notes = getattr(exc, "__notes__", [])
            entry.setdefault("falsifying_example", "\n".join(notes)[:2000])
    known = Counter(support.KNOWN_HITS)
    known.subtract(known_before)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "rounds": rounds,
        "examples": sum(support.EXAMPLES.values()) - examples_before,
        "slowest_input_seconds": round(max(support.SLOWEST.values(), default=0.0), 4),
        "known_bug_hits": {k: v for k, v in known.items() if v},
        "new_failures": list(failures.values()),
    }


# ---- atheris (one child per target) ------------------------------------------------------------
def atheris_child(target: str, seconds: int, stats_path: str) -> None:
    import atheris

    module_name, function = target.split(":")
    with atheris.instrument_imports(include=["guardian"]):
        import guardian  # noqa: F401 -- the package; its modules load below, instrumented

        module = importlib.import_module(f"tests.{module_name}")
    from tests import test_fuzz_support as support

    one = getattr(module, function).hypothesis.fuzz_one_input
    stats: dict[str, Any] = {"runs": 0, "failures": {}, "slowest": 0.0, "slowest_input": ""}
    last_write = [0.0]

    def write() -> None:
        stats["examples"] = sum(support.EXAMPLES.values())
        stats["known_bug_hits"] = dict(support.KNOWN_HITS)
        Path(stats_path).write_text(json.dumps(stats))
        last_write[0] = time.monotonic()

    def test_one_input(data: bytes) -> None:
        stats["runs"] += 1
        started = time.perf_counter()
        try:
            one(data)
        except Exception as exc:
            key = signature(exc)
            entry = stats["failures"].setdefault(key, {"signature": key, "count": 0})
            entry["count"] += 1
            entry.setdefault("message", first_line(exc))
            entry.setdefault("buffer_hex", data[:4096].hex())
        elapsed = time.perf_counter() - started
        if elapsed > stats["slowest"]:
            stats["slowest"], stats["slowest_input"] = elapsed, data[:4096].hex()
        if time.monotonic() - last_write[0] > STATS_EVERY:
            write()

    write()
    # A seed corpus of long random buffers: libFuzzer grows inputs from nothing a few bytes at a
    # time, and a buffer too short for the strategy's choices is no example at all.
    corpus = Path(stats_path).with_suffix(".corpus")
    corpus.mkdir(exist_ok=True)
    for index in range(16):
        (corpus / f"seed{index}").write_bytes(os.urandom(4096))
    atheris.Setup(
        [
            sys.argv[0],
            str(corpus),
            f"-max_total_time={seconds}",
            f"-timeout={PER_INPUT_LIMIT}",
            "-max_len=4096",
            "-len_control=0",  # long inputs from the start: a short one starves Hypothesis
            "-rss_limit_mb=2048",
            f"-artifact_prefix={Path(stats_path).parent}/",
            "-print_final_stats=1",
        ],
        test_one_input,
    )
    atheris.Fuzz()


def run_atheris(target: tuple[str, str], seconds: int, workdir: Path) -> dict[str, Any]:
    stats_path = workdir / f"{target[0]}.{target[1]}.json"
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, __file__, "--atheris-child", f"{target[0]}:{target[1]}",
         "--seconds", str(seconds), "--stats", str(stats_path)],
        capture_output=True, text=True, cwd=REPO, timeout=seconds + PER_INPUT_LIMIT + 60,
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    log = child.stderr
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", log)
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    result: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "runs": int(done.group(1)) if done else stats.get("runs", 0),
        "examples": stats.get("examples", 0),
        "exit_code": child.returncode,
        "coverage_edges": int(coverage[-1][0]) if coverage else None,
        "coverage_features": int(coverage[-1][1]) if coverage else None,
        "slowest_input_seconds": round(stats.get("slowest", 0.0), 4),
        "known_bug_hits": stats.get("known_bug_hits", {}),
        "new_failures": list(stats.get("failures", {}).values()),
    }
    if child.returncode != 0:  # libFuzzer stopped early: a timeout, a leak, an OOM, a crash in C
        result["abnormal_end"] = log[-3000:]
    return result


# ---- the run ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--atheris-share", type=float, default=0.5)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "fuzz_long.json"))
    parser.add_argument("--atheris-child")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--stats")
    args = parser.parse_args()
    if args.atheris_child:
        atheris_child(args.atheris_child, args.seconds, args.stats)
        return 0

    chosen = targets(args.only)
    try:
        atheris_version: str | None = metadata.version("atheris")
    except metadata.PackageNotFoundError:
        atheris_version = None
    share = args.atheris_share if atheris_version else 0.0
    budget = args.minutes * 60
    per_hypothesis = budget * (1 - share) / len(chosen)
    per_atheris = max(1, int(budget * share / len(chosen)))
    report: dict[str, Any] = {
        "run": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "minutes_budget": args.minutes,
            "python": platform.python_version(),
            "hypothesis": metadata.version("hypothesis"),
            "atheris": atheris_version or "not installed: Hypothesis only",
            "cpus": os.cpu_count(),
            "niceness": os.nice(0),
            "targets": len(chosen),
            "seconds_per_target": {"hypothesis": round(per_hypothesis, 1), "atheris": per_atheris},
        },
        "hypothesis": {},
        "atheris": {},
    }
    started = time.monotonic()
    for target in chosen:
        name = f"{target[0]}:{target[1]}"
        report["hypothesis"][name] = result = run_hypothesis(target, per_hypothesis)
        print(f"hypothesis {name}: {result['examples']} examples, "
              f"{len(result['new_failures'])} new failures", flush=True)  # fmt: skip
    if share:
        with tempfile.TemporaryDirectory(prefix="gs-fuzz-long-") as workdir:
            for target in chosen:
                name = f"{target[0]}:{target[1]}"
                report["atheris"][name] = result = run_atheris(target, per_atheris, Path(workdir))
                print(f"atheris {name}: {result['runs']} runs, cov {result['coverage_edges']}, "
                      f"{len(result['new_failures'])} new failures", flush=True)  # fmt: skip

    known: Counter[str] = Counter()
    new: list[dict[str, Any]] = []
    engines = ("hypothesis", "atheris")
    for engine in engines:
        for name, result in report[engine].items():
            known.update(result["known_bug_hits"])
            new += [{"engine": engine, "target": name, **f} for f in result["new_failures"]]
            if result.get("abnormal_end"):
                new.append({"engine": engine, "target": name, "signature": "libFuzzer stop",
                            "message": result["abnormal_end"][-500:]})  # fmt: skip
    report["totals"] = {
        "seconds": round(time.monotonic() - started, 1),
        "examples_hypothesis": sum(r["examples"] for r in report["hypothesis"].values()),
        "runs_atheris": sum(r["runs"] for r in report["atheris"].values()),
        "examples_atheris": sum(r["examples"] for r in report["atheris"].values()),
        "slowest_input_seconds": max(
            (r["slowest_input_seconds"] for e in engines for r in report[e].values()), default=0.0
        ),
        "known_bug_hits": dict(known),
        "new_crashes": len(new),
    }
    report["new_crashes"] = new
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["totals"], indent=2))
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
