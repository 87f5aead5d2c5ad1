# Watchers: adapters from a file descriptor to typed events. Each decides nothing; it reads, parses
# with a pure function from guardian/parsers, and hands events on. Errors from the operating system
# cross this boundary only as WatcherError (or a subclass), with a message meant for the operator.
from __future__ import annotations


class WatcherError(Exception):
    """A watcher could not open or read its source; the message says what and why."""
