# CPU placement for the latency benchmarks (knock_open.py, spa_open.py): the client probe on one
# CPU, the daemon under test on the other, as if they were two machines.
#
# Why: on a 2-core machine an unpinned probe and daemon share CPUs. The packet the probe sends
# wakes the daemon on the probe's own CPU (the scheduler's wake-affine choice), where it preempts
# the probe; the probe's next connect attempt then waits for the daemon's whole step, and the
# figure mixes the daemon's latency with the lab's scheduling. Every daemon in a run (ours and
# the peers) is placed the same way; `--no-pin` runs the old, shared layout for comparison.
from __future__ import annotations

import os
from pathlib import Path

CLIENT_CPU = 0
SERVER_CPU = 1


def can_pin() -> bool:
    return len(os.sched_getaffinity(0)) >= 2


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` (and so the children it forks later) onto one CPU."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})
