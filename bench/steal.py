# The hypervisor's share of this virtual machine's CPUs during a timed run: the "steal" column of
# /proc/stat (time a vCPU was ready to run but the host ran something else).
#
# Why: these benchmark machines are VMs whose wall-clock figures swing by tens of percent from
# one hour to the next. The load average does not show it (our own processes are all there is),
# steal does: with a busy neighbour, 9-22 % of the vCPUs' time was stolen (vmstat, session 8;
# 80 % in one sample of top), and a round timed then says more about the neighbour than about
# the parser. Benchmarks record
# it per round, next to the wall-clock time, so a reader can tell a slow parser from a slow host.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CpuTicks:
    """All CPUs' ticks since boot, from the first ("cpu ") line of /proc/stat."""

    total: int
    steal: int

    @classmethod
    def read(cls, stat: Path = Path("/proc/stat")) -> CpuTicks:
        fields = stat.read_text().split("\n", 1)[0].split()
        if fields[0] != "cpu" or len(fields) < 9:
            raise ValueError(f"{stat}: unexpected first line {' '.join(fields)!r}")
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
        ticks = [int(x) for x in fields[1:9]]
        return cls(total=sum(ticks), steal=ticks[7])


def stolen_share(before: CpuTicks, after: CpuTicks) -> float:
    """The share (0..1) of all CPU time between two readings that the host took."""
    total = after.total - before.total
    return (after.steal - before.steal) / total if total > 0 else 0.0
