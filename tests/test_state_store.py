# The state store (guardian/effectors/state.py): offence histories and watcher positions in sqlite,
# surviving a restart, a kill -9 in the middle of writes, and a damaged file (moved aside, never a
# crash). Files live under pytest's tmp_path; nothing here needs root.
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardian.actions import Ban, Notice, RecordOffence, RecordSpaReplay
from guardian.effectors.state import StateStore
from guardian.events import OffenceRecord

net = ipaddress.ip_network
REPO = Path(__file__).resolve().parents[1]


def test_offences_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    assert store.load_offences() == ()
    store.apply(
        [
            Ban(net("192.0.2.1/32"), 600.0, "x", 1),  # not the store's business
            RecordOffence(net("192.0.2.1/32"), 1, 1000.5),
            Notice("ban", None),
            RecordOffence(net("2001:db8::/64"), 3, 2000.0),
        ]
    )
    store.apply([RecordOffence(net("192.0.2.1/32"), 2, 1500.25)])  # an update
    store.close()
    again = StateStore(path)
    assert sorted(again.load_offences(), key=str) == sorted(
        [
            OffenceRecord(net("192.0.2.1/32"), 2, 1500.25),
            OffenceRecord(net("2001:db8::/64"), 3, 2000.0),
        ],
        key=str,
    )
    again.close()


def test_zero_offences_forget_a_network(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.db"))
    store.apply([RecordOffence(net("192.0.2.1/32"), 2, 1.0)])
    store.apply(
        [RecordOffence(net("192.0.2.1/32"), 0, 0.0), RecordOffence(net("10.0.0.0/8"), 0, 0)]
    )
    assert store.load_offences() == ()
    # in one step, in order: forget then record again
    store.apply(
        [RecordOffence(net("192.0.2.9/32"), 0, 0.0), RecordOffence(net("192.0.2.9/32"), 1, 5.0)]
    )
    assert store.load_offences() == (OffenceRecord(net("192.0.2.9/32"), 1, 5.0),)
    store.close()


def test_positions_are_saved_in_one_batch_and_deleted_with_none(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with StateStore(path) as store:
        assert store.get_position("btmp") is None
        store.set_positions({"btmp": "inode=12 offset=384", "journal": "s=abc;i=1"})
        store.set_positions({"btmp": "inode=12 offset=768", "authlog": "inode=3 offset=10"})
        store.set_positions({"authlog": None})
    with StateStore(path) as store:
        assert store.get_position("btmp") == "inode=12 offset=768"
        assert store.get_position("journal") == "s=abc;i=1"
        assert store.get_position("authlog") is None


def test_spa_replay_digests_survive_reopening_until_they_expire(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    now = time.time()
    store.apply(
        [
            RecordSpaReplay(b"\x01" * 32, now + 100.0),
            RecordSpaReplay(b"\x02" * 32, now + 5.0),
            RecordSpaReplay(b"\x01" * 32, now + 50.0),  # a re-record never shortens it
        ]
    )
    store.close()
    store = StateStore(path)
    assert sorted(store.load_spa_replays(now)) == [
        (b"\x01" * 32, now + 100.0),
        (b"\x02" * 32, now + 5.0),
    ]
    # Past the second one's expiry only the first is loaded, and the expired row is deleted.
    assert store.load_spa_replays(now + 10.0) == ((b"\x01" * 32, now + 100.0),)
    count = sqlite3.connect(path).execute("SELECT COUNT(*) FROM spa_replays").fetchone()[0]
    assert count == 1
    store.close()


def test_the_file_uses_wal_and_full_sync(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with StateStore(path) as store:
        store.set_positions({"k": "v"})
        probe = sqlite3.connect(path)
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        probe.close()
        assert (tmp_path / "state.db-wal").exists()


def test_the_wal_file_stays_small_under_steady_writes(tmp_path: Path) -> None:
    """The daemon saves positions every second or so for as long as it runs: the WAL is
    checkpointed and cut back, not left at sqlite's default ~4 MB (or more)."""
    path = str(tmp_path / "state.db")
    wal = tmp_path / "state.db-wal"
    largest = 0
    with StateStore(path) as store:
        for i in range(3000):  # ~3 pages per commit: many checkpoints' worth
            store.set_positions({f"watcher-{k}": f"{i}:{'x' * 200}" for k in range(8)})
            largest = max(largest, wal.stat().st_size)
        assert store.get_position("watcher-3") == f"2999:{'x' * 200}"
    assert largest > 128 * 4096 // 2, "the writes must have filled the WAL a good way"
    assert largest <= (1 << 20) + 4 * 4096, largest


def test_directory_is_created_0700_and_the_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "guardian" / "state.db"
    with StateStore(str(path)) as store:
        store.apply([RecordOffence(net("192.0.2.1/32"), 1, 1.0)])
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_is_not_a_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite\n" * 500)
    with caplog.at_level(logging.ERROR, logger="guardian.effectors.state"):
        store = StateStore(str(path))
    assert store.recovered_from is not None
    assert Path(store.recovered_from).read_bytes().startswith(b"this is not sqlite")
    assert "moved aside" in caplog.text and store.recovered_from in caplog.text
    store.apply([RecordOffence(net("192.0.2.1/32"), 1, 1.0)])  # and it works
    assert store.load_offences() == (OffenceRecord(net("192.0.2.1/32"), 1, 1.0),)
    store.close()


def test_a_damaged_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(str(path)) as store:
        store.apply([RecordOffence(net(f"192.0.2.{n}/32"), 1, 1.0) for n in range(200)])
    data = bytearray(path.read_bytes())
    assert len(data) > 4096
    data[4096:8192] = b"\xff" * 4096  # trash the second page (a table's b-tree)
    path.write_bytes(bytes(data))
    store = StateStore(str(path))
    assert store.recovered_from is not None  # quick_check found it
    assert store.load_offences() == ()
    store.close()


def test_an_unusable_path_keeps_state_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = StateStore(str(blocker / "state.db"))  # its directory is a file
    assert store.errors == 1
    store.apply([RecordOffence(net("192.0.2.1/32"), 1, 1.0)])
    assert store.load_offences() == (OffenceRecord(net("192.0.2.1/32"), 1, 1.0),)
    store.close()


def test_records_with_unreadable_networks_are_skipped(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    StateStore(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO offences VALUES ('not-a-network', 1, 1.0)")
        db.execute("INSERT INTO offences VALUES ('192.0.2.0/24', 2, 3.0)")
    db.close()
    with StateStore(path) as store:
        assert store.load_offences() == (OffenceRecord(net("192.0.2.0/24"), 2, 3.0),)


# -- crash consistency ---------------------------------------------------------------------------

WRITER = """
import ipaddress, sys
from guardian.actions import RecordOffence
from guardian.effectors.state import StateStore
store = StateStore(sys.argv[1])
n = 0
while True:
    n += 1
    network = ipaddress.ip_network(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32")
    store.apply([RecordOffence(network, n, float(n))])
    store.set_positions({"btmp": f"offset={n * 384}", f"k{n % 7}": str(n)})
    print(n, flush=True)  # both transactions above are committed
"""


def test_kill_9_mid_writes_loses_nothing_committed(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, path],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    committed = 0
    started = time.monotonic()
    try:
        # Read acknowledgements for a while (bounded: 300 commits or 20 s), then kill -9 while it
        # is in the middle of further writes.
        while committed < 300 and time.monotonic() - started < 20:
            line = child.stdout.readline()
            if not line:
                break
            committed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    assert committed >= 50, "the writer made too little progress to test anything"
    with StateStore(path) as store:
        assert store.recovered_from is None
        records = {str(r.network): r for r in store.load_offences()}
        for n in range(1, committed + 1):
            key = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"
            assert key in records, f"committed offence #{n} is lost"
            assert records[key].offences == n
        position = store.get_position("btmp")
        assert position is not None
        assert int(position.removeprefix("offset=")) >= committed * 384
