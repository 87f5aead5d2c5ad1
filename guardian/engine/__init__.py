# The pure, sans-IO policy core of ssh-guardian (DESIGN.md principle 1): events in, actions out,
# time passed in as `now`. Nothing under guardian/engine/ performs I/O or reads a clock;
# tests/test_import_direction.py enforces that its modules import no I/O library.
from guardian.engine.bans import BanView
from guardian.engine.core import COUNTER_NAMES, Engine, EngineSnapshot
from guardian.engine.grants import GrantState, GrantView
from guardian.engine.sessions import AuthState, SessionView

__all__ = [
    "COUNTER_NAMES",
    "AuthState",
    "BanView",
    "Engine",
    "EngineSnapshot",
    "GrantState",
    "GrantView",
    "SessionView",
]
