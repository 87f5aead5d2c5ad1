# A bench-only wrapper that runs `python -m guardian ...` with allocation tracing, for finding
# where a long run's memory goes (the soak's `--trace DIR`). Never used by the product or CI.
#
# Each SIGUSR2 writes, into $GUARDIAN_TRACE_DIR, snapshot-<n>.pickle (tracemalloc: every live
# Python allocation with its traceback) and native-<n>.json (glibc's mallinfo2: the bytes the C
# heap has handed out, which also counts what libsystemd, libnftables and sqlite allocate and
# tracemalloc cannot see; and the process's smaps_rollup). Comparing two of them says whether
# growth is in Python objects or in native code, and where (bench/trace_compare.py).
#
# GUARDIAN_TRACE_MODE=light (soak.py --trace-light) runs without tracemalloc, whose own bookkeeping
# grows the C heap by megabytes and hides what an untraced daemon does. Each dump then holds, in
# native-<n>.json: live objects counted by type (gc.get_objects), the largest containers with
# what holds them, and CPython's small-object allocator statistics (sys._debugmallocstats: arenas
# in use and the bytes in their blocks, which tell live objects from a fragmented arena).
#
# The daemon's own signal handling is unaffected: it handles TERM/INT/HUP through its wake-up fd
# and ignores other signal numbers there.
from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import time
import tracemalloc
import types
from pathlib import Path
from types import FrameType

FRAMES = 12


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _native() -> dict[str, object]:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    rollup: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            rollup[key] = int(parts[0])
    return {
        "malloc_in_use": info.uordblks + info.hblkhd,
        "malloc_arena": info.arena,
        "malloc_free": info.fordblks,
        "smaps_kib": rollup,
        "tracemalloc_traced": tracemalloc.get_traced_memory()[0],
    }


def _obmalloc(out: Path) -> dict[str, int]:
    """sys._debugmallocstats() (written to the C stderr), its summary lines parsed."""
    scratch = out / "obmalloc.txt"
    saved = os.dup(2)
    try:
        with scratch.open("w") as sink:
            sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    stats: dict[str, int] = {}
    for line in scratch.read_text().splitlines():
        key, sep, value = line.rpartition("=")
        digits = value.strip().replace(",", "")
        if sep and key.strip().startswith(("#", "bytes in")) and digits.isdigit():
            stats[key.strip()] = int(digits)
    return stats


def _holder(container: object) -> str:
    """What refers to a container: an attribute of an object, or a module global."""
    for referrer in gc.get_referrers(container):
        if isinstance(referrer, dict):
            keys = [name for name, value in referrer.items() if value is container]
            if not keys:
                continue
            for owner in gc.get_referrers(referrer):
                if getattr(owner, "__dict__", None) is referrer:
                    if isinstance(owner, types.ModuleType):
                        return f"{owner.__name__}.{keys[0]}"
                    return f"{type(owner).__module__}.{type(owner).__qualname__}.{keys[0]}"
            return f"[{keys[0]!r}] of a dict"
        elif hasattr(type(referrer), "__slots__"):
            for name in getattr(type(referrer), "__slots__", ()):
                if getattr(referrer, name, None) is container:
                    return f"{type(referrer).__module__}.{type(referrer).__qualname__}.{name}"
    return "?"


def _objects() -> dict[str, object]:
    """Live objects by type, and the 25 largest containers with their holders."""
    gc.collect()
    objects = gc.get_objects()
    by_type = collections.Counter(type(o).__qualname__ for o in objects)
    sized = []
    for o in objects:
        if isinstance(o, dict | list | set | collections.deque | collections.OrderedDict):
            sized.append((len(o), id(o), o))
    sized.sort(key=lambda item: item[0], reverse=True)
    largest = [
        {"type": type(o).__qualname__, "len": n, "holder": _holder(o)} for n, _, o in sized[:25]
    ]
    del objects, sized
    return {"objects": len(gc.get_objects()), "by_type": dict(by_type.most_common(60)),
            "largest": largest}  # fmt: skip


def main() -> None:
    out = Path(os.environ["GUARDIAN_TRACE_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    light = os.environ.get("GUARDIAN_TRACE_MODE") == "light"
    if not light:
        tracemalloc.start(FRAMES)
    taken = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        taken += 1
        started = time.monotonic()
        if not light:
            tracemalloc.take_snapshot().dump(str(out / f"snapshot-{taken}.pickle"))
        native = _native()
        if light:
            native["obmalloc"] = _obmalloc(out)
            native |= _objects()
        native["wall"] = time.time()
        native["dump_seconds"] = round(time.monotonic() - started, 3)
        (out / f"native-{taken}.json").write_text(json.dumps(native, indent=1))

    signal.signal(signal.SIGUSR2, dump)
    sys.argv = ["guardian", *sys.argv[1:]]
    runpy.run_module("guardian", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
