# The btmp watcher: sshd's failed-login records from /var/log/btmp as AuthFailed events, for one
# event loop (fileno / read_events). It follows the file by name with inotify (guardian.watchers.
# tail: rotation, copytruncate, resume) and parses with the pure guardian.parsers.utmp; it decides
# nothing about bans.
#
# Why these rules (spec/sshd-events.md §1, §5):
# - Whole 384-byte records only; a record being written stays in the file until it is complete.
# - sshd writes one LOGIN_PROCESS record with line "ssh:notty" per failed password /
#   keyboard-interactive attempt and per invalid-user lookup; anything else in the file (login(1)
#   on a tty, lastb tools, holes left by a crash) is counted and ignored.
# - The source is the record's address (ut_addr_v6, else ut_host as text); a record without one
#   (UseDNS yes wrote a host name) is counted and skipped: names are never resolved or banned.
# - wall_time is tv_sec (btmp has 1-second resolution); pid is the sshd monitor PID, the same as in
#   the journal and auth.log, so the engine can join the same attempt from several sources.
from __future__ import annotations

import os

from guardian.events import AuthFailed
from guardian.parsers.utmp import LOGIN_PROCESS, RECORD_SIZE, parse_utmp
from guardian.watchers.tail import MAX_BYTES, ROTATE_GRACE, FileFollower

BTMP = "/var/log/btmp"
SSH_LINE = "ssh:notty"
ORIGIN = "btmp"
RULE = "btmp"

STAT_KEYS = (
    "records",  # whole records read
    "events",  # AuthFailed events produced
    "ignored",  # records of another type or line (not sshd's failed logins)
    "no_address",  # sshd records without an address (a host name under UseDNS yes)
    "malformed",  # records no real writer makes (unknown type, negative time, all zero)
)


class BtmpWatcher:
    """Failed logins from btmp. `start`: a position() saved earlier, or None to start at the
    end of the file (or at 0 of a file created later). WatcherError when the directory cannot
    be watched or the file cannot be read."""

    def __init__(
        self,
        path: str | os.PathLike[str] = BTMP,
        start: str | None = None,
        *,
        max_bytes: int = MAX_BYTES,
        rotate_grace: float = ROTATE_GRACE,
    ) -> None:
        self._follower = FileFollower(
            path,
            record_size=RECORD_SIZE,
            start=start,
            max_bytes=max_bytes - max_bytes % RECORD_SIZE,
            rotate_grace=rotate_grace,
        )
        self.path = self._follower.path
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    def fileno(self) -> int:
        """Wait for this fd to be readable, then call read_events()."""
        return self._follower.fileno()

    @property
    def more_pending(self) -> bool:
        """The last read stopped at max_bytes: call read_events() again soon."""
        return self._follower.more_pending

    def read_events(self) -> list[AuthFailed]:
        """The failed logins appended since the last call, oldest first."""
        records, _ = parse_utmp(self._follower.read())
        counts = self._counts
        counts["records"] += len(records)
        events: list[AuthFailed] = []
        append = events.append
        for record in records:
            if record.malformed:
                counts["malformed"] += 1
            elif record.type != LOGIN_PROCESS or record.line != SSH_LINE:
                counts["ignored"] += 1
            elif record.address is None:
                counts["no_address"] += 1
            else:
                append(
                    AuthFailed(
                        source=record.address,
                        origin=ORIGIN,
                        rule=RULE,
                        user=record.user,
                        pid=record.pid,
                        wall_time=float(record.tv_sec),
                    )
                )
        counts["events"] += len(events)
        return events

    def position(self) -> str:
        """Save this after handling read_events()'s result; pass it as `start` after a restart."""
        return self._follower.position()

    def stats(self) -> dict[str, int]:
        """This watcher's counters plus the follower's (rotations, truncations, ...)."""
        return {**self._follower.stats(), **self._counts}

    def close(self) -> None:
        self._follower.close()

    def __enter__(self) -> BtmpWatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


__all__ = ["BTMP", "BtmpWatcher"]
