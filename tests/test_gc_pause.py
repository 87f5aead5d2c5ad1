# guardian.gc_pause: the collector is off inside, and afterwards as it was before, also when the
# block raises (a caller that runs with it off must not find it switched on).
from __future__ import annotations

import gc

import pytest

from guardian.gc_pause import collector_paused


@pytest.mark.parametrize("enabled_before", [True, False])
def test_collector_off_inside_and_as_before_after(enabled_before: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled_before
        with pytest.raises(RuntimeError), collector_paused():
            raise RuntimeError("inside")
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()
