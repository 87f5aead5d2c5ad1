# bench/steal.py: the hypervisor's share of CPU time, read from /proc/stat's first line (the
# benchmarks record it per round to tell a slow parser from a busy host).
from __future__ import annotations

from pathlib import Path

import pytest

from bench.steal import CpuTicks, stolen_share


def test_steal_is_the_eighth_field_and_guest_time_is_not_counted_twice(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 800 10 1 4 60 7 0\ncpu0 50 2 10 400 5 0 2 30 3 0\n")
    ticks = CpuTicks.read(stat)
    assert ticks == CpuTicks(total=1000, steal=60)
    later = CpuTicks(total=ticks.total + 200, steal=ticks.steal + 50)
    assert stolen_share(ticks, later) == 0.25
    assert stolen_share(ticks, ticks) == 0.0


def test_an_unexpected_first_line_is_an_error_naming_the_file(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match="stat: unexpected first line 'intr 1 2 3'"):
        CpuTicks.read(stat)


def test_this_machine_has_the_field() -> None:
    ticks = CpuTicks.read()
    assert 0 <= ticks.steal <= ticks.total
