# The state store: what must survive a restart besides the kernel's own bans — each source's
# offence history (so the next ban after a restart is longer), the watchers' positions (btmp and
# auth.log offsets and inodes, the journal cursor), so a restart neither re-reads nor skips lines,
# and the SPA replay digests (so a packet accepted before a restart is refused after it). One
# sqlite file (stdlib sqlite3) under /var/lib/guardian.
#
# Durability: WAL journal, synchronous=FULL. A commit returns only once its WAL frames are on
# disk, so a crash of the daemon (kill -9) or of the machine (power loss) after a commit loses
# nothing committed, and a crash in the middle of a write leaves the previous state (sqlite's
# atomic commit). NORMAL would skip that fsync and survive only process crashes; the writes here
# are few (a ban, a batch of positions at most every second or so), so FULL costs little.
#
# The store must never stop the daemon (nor lock the admin out): a file that is not a database, or
# fails sqlite's quick_check, is renamed aside (`state.db.corrupt-<epoch>`, with its -wal/-shm)
# with an error in the log and a fresh store is started; write errors are logged, counted and
# dropped; a store that cannot be opened at all runs in memory (nothing persists, all else works).
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from guardian.actions import Action, RecordOffence, RecordSpaReplay
from guardian.addresses import IPNetwork
from guardian.config import DEFAULT_STATE_PATH
from guardian.events import OffenceRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 2000  # another process holding the write lock (a second daemon by mistake)
WAL_CHECKPOINT_PAGES = 128  # pages in the WAL (of 4 KiB) that trigger a checkpoint
WAL_LIMIT_BYTES = 1 << 20  # what a checkpoint leaves of the WAL file
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS offences ("
    "network TEXT PRIMARY KEY, offences INTEGER NOT NULL, last_ban_wall REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS positions (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Added after version 1 shipped; CREATE IF NOT EXISTS upgrades older files in place.
    "CREATE TABLE IF NOT EXISTS spa_replays (digest BLOB PRIMARY KEY, expires_wall REAL NOT NULL)",
)
MEMORY = ":memory:"


class StateStore:
    """Offence histories and watcher positions in one sqlite file (see the header)."""

    def __init__(self, path: str = DEFAULT_STATE_PATH) -> None:
        self.path = path
        self.errors = 0  # writes that failed (logged, dropped)
        self.recovered_from: str | None = None  # where a corrupt file was moved, if one was
        self._db = self._open()

    # -- reading -------------------------------------------------------------------------------

    def load_offences(self) -> tuple[OffenceRecord, ...]:
        """Every offence history, for OffencesLoaded at start-up. Unreadable rows are skipped."""
        try:
            rows = self._db.execute(
                "SELECT network, offences, last_ban_wall FROM offences"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            self._failed("reading offences", exc)
            return ()
        records: list[OffenceRecord] = []
        skipped = 0
        for network, offences, last_ban_wall in rows:
            try:
                parsed: IPNetwork = ipaddress.ip_network(str(network))
                records.append(OffenceRecord(parsed, int(offences), float(last_ban_wall)))
            except (TypeError, ValueError):
                skipped += 1
        if skipped:
            log.warning("state store %s: %d unreadable offence row(s) skipped", self.path, skipped)
        return tuple(records)

    def load_spa_replays(self, wall: float | None = None) -> tuple[tuple[bytes, float], ...]:
        """The SPA replay digests still current at `wall` (default: now), for SpaReplaysLoaded;
        expired ones are deleted on the way."""
        wall = time.time() if wall is None else wall
        self._write("forgetting expired SPA replays", [_delete_expired_replays(wall)])
        try:
            rows = self._db.execute("SELECT digest, expires_wall FROM spa_replays").fetchall()
        except sqlite3.DatabaseError as exc:
            self._failed("reading SPA replays", exc)
            return ()
        return tuple(
            (bytes(digest), float(expires))
            for digest, expires in rows
            if isinstance(digest, bytes) and isinstance(expires, float | int)
        )

    def get_position(self, key: str) -> str | None:
        """A watcher's saved position (its own format: offset and inode, a cursor), or None."""
        try:
            row = self._db.execute("SELECT value FROM positions WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            self._failed(f"reading position {key!r}", exc)
            return None
        return None if row is None else str(row[0])

    # -- writing -------------------------------------------------------------------------------

    def apply(self, actions: Sequence[Action]) -> None:
        """Persist the RecordOffence and RecordSpaReplay actions of one engine step in one
        transaction (offences 0 forgets the network); every other action is ignored."""
        records = [a for a in actions if isinstance(a, RecordOffence)]
        replays = [a for a in actions if isinstance(a, RecordSpaReplay)]
        if not records and not replays:
            return
        # In order: one step may record a network and then forget it (or the reverse).
        statements: list[tuple[str, tuple[object, ...]]] = []
        for record in records:
            if record.offences > 0:
                statements.append(
                    (
                        "INSERT INTO offences (network, offences, last_ban_wall) VALUES (?, ?, ?)"
                        " ON CONFLICT(network) DO UPDATE SET offences = excluded.offences,"
                        " last_ban_wall = excluded.last_ban_wall",
                        (str(record.network), record.offences, record.last_ban_wall),
                    )
                )
            else:
                statements.append(
                    ("DELETE FROM offences WHERE network = ?", (str(record.network),))
                )
        if replays:
            statements.append(_delete_expired_replays(time.time()))
        for replay in replays:
            statements.append(
                (
                    "INSERT INTO spa_replays (digest, expires_wall) VALUES (?, ?)"
                    " ON CONFLICT(digest) DO UPDATE SET"
                    " expires_wall = max(expires_wall, excluded.expires_wall)",
                    (replay.digest, replay.expires_wall),
                )
            )
        self._write("recording offences and SPA replays", statements)

    def set_positions(self, positions: Mapping[str, str | None]) -> None:
        """Save several watchers' positions in one transaction; None deletes a key."""
        if not positions:
            return
        statements: list[tuple[str, tuple[object, ...]]] = []
        for key, value in positions.items():
            if value is None:
                statements.append(("DELETE FROM positions WHERE key = ?", (key,)))
            else:
                statements.append(
                    (
                        "INSERT INTO positions (key, value) VALUES (?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
                )
        self._write("saving positions", statements)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _write(self, what: str, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        for attempt in (1, 2):
            try:
                with self._db:  # one transaction: committed whole, or rolled back whole
                    for sql, parameters in statements:
                        self._db.execute(sql, parameters)
                return
            except sqlite3.DatabaseError as exc:
                if attempt == 1 and _is_corruption(exc) and self.path != MEMORY:
                    log.error("state store %s: %s while %s", self.path, exc, what)
                    self._db.close()
                    self._db = self._recover(exc)
                    continue
                self._failed(what, exc)
                return

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if self.errors <= 10 or self.errors % 1000 == 0:
            log.error(
                "state store %s: %s failed: %s (error #%d)", self.path, what, exc, self.errors
            )

    def _open(self) -> sqlite3.Connection:
        if self.path == MEMORY:
            return _connect(MEMORY)
        try:
            _prepare(self.path)
            return _connect(self.path)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                return self._in_memory(exc)
            return self._recover(exc)
        except OSError as exc:
            return self._in_memory(exc)

    def _recover(self, exc: Exception) -> sqlite3.Connection:
        """Move the damaged file aside and start afresh."""
        aside = f"{self.path}.corrupt-{int(time.time())}"
        log.error(
            "state store %s is damaged (%s): moved aside to %s, starting a fresh one "
            "(offence histories and watcher positions are lost; bans in the kernel stay)",
            self.path,
            exc,
            aside,
        )
        try:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            self.recovered_from = aside
            _prepare(self.path)
            return _connect(self.path)
        except (OSError, sqlite3.Error) as again:
            return self._in_memory(again)

    def _in_memory(self, exc: Exception) -> sqlite3.Connection:
        log.error(
            "state store %s cannot be used (%s): keeping state in memory only, nothing will "
            "persist across a restart",
            self.path,
            exc,
        )
        self.errors += 1
        return _connect(MEMORY)


def _delete_expired_replays(wall: float) -> tuple[str, tuple[object, ...]]:
    return ("DELETE FROM spa_replays WHERE expires_wall <= ?", (wall,))


def _prepare(path: str) -> None:
    """Create the directory (0700) and the file (0600; sqlite gives -wal/-shm the same mode)."""
    directory = Path(path).parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _connect(path: str) -> sqlite3.Connection:
    """Open, check and set up a database; raises sqlite3.DatabaseError if it is damaged."""
    db = sqlite3.connect(path)  # Python's implicit BEGIN before writes; `with db:` commits
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if path != MEMORY:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                log.warning("state store %s: WAL unavailable (journal_mode %s)", path, mode)
            db.execute("PRAGMA synchronous = FULL")
            # The WAL is checkpointed every WAL_CHECKPOINT_PAGES and cut back to WAL_LIMIT_BYTES
            # after each: sqlite's defaults (1,000 pages, no limit) left a 4 MB file beside a
            # store of a few KB for good (the soak's positions, written every second or so).
            db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
        with db:
            for statement in _SCHEMA:
                db.execute(statement)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error:
        db.close()
        raise
    return db


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Damage (not a database, malformed, quick_check failed), as opposed to locks or a full
    disk, which a later write may well get past."""
    if isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return any(
        word in text for word in ("not a database", "malformed", "quick_check", "corrupt")
    ) or getattr(exc, "sqlite_errorcode", None) in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
