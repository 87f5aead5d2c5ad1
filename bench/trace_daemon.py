# A bench-only wrapper that runs `python -m guardian ...` with allocation tracing, for finding
# where a long run's memory goes (the soak's `--trace DIR`). Never used by the product or CI.
#
# Each SIGUSR2 writes, into $GUARDIAN_TRACE_DIR, snapshot-<n>.pickle (tracemalloc: every live
# Python allocation with its traceback) and native-<n>.json (glibc's mallinfo2: the bytes the C
# heap has handed out, which also counts what libsystemd, libnftables and sqlite allocate and
# tracemalloc cannot see; and the process's smaps_rollup). Comparing two of them says whether
# growth is in Python objects or in native code, and where (bench/trace_compare.py).
#
# The daemon's own signal handling is unaffected: it handles TERM/INT/HUP through its wake-up fd
# and ignores other signal numbers there.
from __future__ import annotations

import ctypes
import json
import os
import runpy
import signal
import sys
import time
import tracemalloc
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


def main() -> None:
    out = Path(os.environ["GUARDIAN_TRACE_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    taken = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        taken += 1
        started = time.monotonic()
        tracemalloc.take_snapshot().dump(str(out / f"snapshot-{taken}.pickle"))
        native = _native()
        native["wall"] = time.time()
        native["dump_seconds"] = round(time.monotonic() - started, 3)
        (out / f"native-{taken}.json").write_text(json.dumps(native, indent=1))

    signal.signal(signal.SIGUSR2, dump)
    sys.argv = ["guardian", *sys.argv[1:]]
    runpy.run_module("guardian", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
