# replay's btmp reader (guardian.replay.btmp_records): one buffer used again and again, a partial
# record carried to its front. Whatever the buffer's size against the 384-byte records, the
# records are the file's, in order, each once; a partial record at the end is left out.
from __future__ import annotations

from pathlib import Path

import pytest

from guardian import replay
from guardian.parsers.utmp import RECORD_SIZE, parse_utmp

BTMP = Path(__file__).resolve().parent / "data" / "sshd" / "debian12-btmp.bin"


@pytest.mark.parametrize("chunk", [RECORD_SIZE, RECORD_SIZE + 1, 1000, 4096, 10_000, 1 << 22])
def test_every_record_once_in_order_whatever_the_buffer(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = BTMP.read_bytes() * 7
    assert len(whole) > 10_000 and len(whole) % RECORD_SIZE == 0
    path = tmp_path / "btmp"
    path.write_bytes(whole + whole[:100])  # and a partial record being written
    monkeypatch.setattr(replay, "CHUNK", chunk)
    with path.open("rb", buffering=0) as handle:
        reads = list(replay.btmp_records(handle))
    expected, _ = parse_utmp(whole)
    assert [record for records in reads for record in records] == expected
    assert len(reads) >= len(whole) // chunk
