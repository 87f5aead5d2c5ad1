# The demo command's scenario, run as a test: it builds its own lab, checks every claim it narrates
# (scan closed, knock, a session holding the grant past its window and closing it, scan opens
# nothing, close sequence, SPA and its replay refused, a brute force banned with its grant closed
# and its knocks ignored, the ban outliving the daemon) and returns 0 only when all of them held.
from __future__ import annotations

from guardian.lab.demo import run_demo


def test_demo_runs_and_every_claim_holds(root: None) -> None:
    assert run_demo(fast=True) == 0
