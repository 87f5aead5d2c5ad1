# btmp/utmp records, pure: bytes -> UtmpRecords, for as many whole 384-byte records as the bytes
# hold; the caller keeps the partial tail (a record being written) for its next read. No I/O.
#
# The layout is glibc's struct utmp on x86_64 (spec/sshd-events.md §5), little-endian:
# type, pid, line[32], id[4], user[32], host[256], exit (2 shorts), session, tv_sec, tv_usec,
# addr_v6[4 x int32], 20 reserved bytes. sshd fills user with the attempted name — attacker-chosen
# bytes, not even NUL-terminated at 32 — so strings are cut at the first NUL and decoded with
# errors="replace": nothing in a record can make this raise.
#
# The address comes from ut_addr_v6 (IPv4 in the first 4 bytes and the rest zero, else all 16
# bytes of IPv6; a v4-mapped one becomes IPv4), falling back to the host text when the binary
# field is empty. A record is `malformed` when no real writer makes it (unknown type, negative
# time, or all zero, e.g. a hole left by a crash): it is still returned, so a caller can count it.
#
# Speed: a 600 MB btmp is 1.6 million records. struct.iter_unpack walks them in C, and the slow
# conversions (address objects, decoding) are memoised per distinct value: brute force repeats
# the same few sources, names and lines. A memo lives as long as its owner wants: by default one
# call; a caller reading a whole file in chunks (replay) passes a UtmpMemo that spans them. The
# daemon's watcher keeps none between its reads. Kept across them, a memo held every
# attacker-chosen user name until it was emptied at its cap: the soak saw the daemon's live
# objects grow for hours, one decoded name per invalid user (brute force rarely repeats a random
# name).
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from guardian.addresses import IPAddress, normalize, parse_address
from guardian.gc_pause import collector_paused

RECORD = struct.Struct("<hxxi32s4s32s256shhiii16s20x")
RECORD_SIZE = RECORD.size  # 384
assert RECORD_SIZE == 384

# ut_type values (utmp.h)
EMPTY, RUN_LVL, BOOT_TIME, NEW_TIME, OLD_TIME = 0, 1, 2, 3, 4
INIT_PROCESS, LOGIN_PROCESS, USER_PROCESS, DEAD_PROCESS, ACCOUNTING = 5, 6, 7, 8, 9

_ZERO12 = bytes(12)
_ZERO16 = bytes(16)
# A UtmpMemo is emptied when it holds more than this many entries (a big brute force's sources
# and names fit; a key is at most 64 bytes).
MEMO_LIMIT = 8192


class UtmpRecord(NamedTuple):
    """One utmp/btmp record. `address` is None when neither ut_addr_v6 nor ut_host holds one
    (a local tty, or a host name under UseDNS yes: never resolved)."""

    type: int
    pid: int
    line: str
    user: str
    host: str
    tv_sec: int
    address: IPAddress | None
    malformed: bool = False


# Only the fields we use are unpacked (id, exit, session and tv_usec are skipped as padding), and
# of the 256-byte host only its first HOST_HEAD bytes. Its text ends at the first NUL, so when one
# is among them (every address as text, v4 or v6, and any shorter host name) the rest of the
# field cannot change it; a longer host is read whole from its record (_long_host). Why: the
# memo's key is hashed and compared per record, and with the whole field in it that cost ~740 of
# ~8,300 instructions per record (callgrind; BENCHMARKS.md "btmp parse").
HOST_HEAD = 48
_HOST_AT = 76  # the host field's offset in a record
_HOST_SIZE = 256
_FIELDS = struct.Struct(f"<h2xi32s4x32s{HOST_HEAD}s{_HOST_SIZE - HOST_HEAD}x8xi4x16s20x")
assert _FIELDS.size == RECORD_SIZE

_new_record = tuple.__new__  # what NamedTuple._make uses: skips the generated __new__ frame


class UtmpMemo:
    """Field conversions remembered across the parse_utmp calls of one bulk read (a whole file
    read in chunks: its sources and names repeat from chunk to chunk). Bounded: each table is
    emptied when it holds more than MEMO_LIMIT entries. Drop it with the read."""

    __slots__ = ("hosts", "texts")

    def __init__(self) -> None:
        self.texts: dict[bytes, str] = {}  # raw field -> text
        # (ut_addr_v6, the host's head) -> (host text, address)
        self.hosts: dict[tuple[bytes, bytes], tuple[str, IPAddress | None]] = {}


def parse_utmp(
    data: bytes | bytearray | memoryview, memo: UtmpMemo | None = None
) -> tuple[list[UtmpRecord], int]:
    """Parse the whole records at the start of `data`.

    Returns (records, consumed): consumed = bytes used, a multiple of 384; data[consumed:] is a
    partial record to keep for the next read. `memo`: conversions shared with the caller's other
    calls (a bulk read); without one, nothing is kept after the call."""
    consumed = len(data) - len(data) % RECORD_SIZE
    if not consumed:
        return [], 0
    memo = memo if memo is not None else UtmpMemo()
    texts, hosts = memo.texts, memo.hosts
    if len(texts) > MEMO_LIMIT:
        texts.clear()
    if len(hosts) > MEMO_LIMIT:
        hosts.clear()
    new, cls = _new_record, UtmpRecord
    view = memoryview(data)[:consumed]
    records: list[UtmpRecord] = []
    append = records.append
    last_line, line_text = None, ""  # a btmp's lines are all "ssh:notty": one comparison each
    with collector_paused():  # the records cannot form cycles (gc_pause)
        for ut_type, pid, line, user, head, sec, addr in _FIELDS.iter_unpack(view):
            if line != last_line:
                found = texts.get(line)
                if found is None:
                    found = texts[line] = _text(line)
                last_line, line_text = line, found
            user_text = texts.get(user)
            if user_text is None:
                user_text = texts[user] = _text(user)
            host_key = (addr, head)
            host_entry = hosts.get(host_key)
            if host_entry is None:
                if b"\0" in head:
                    host_entry = hosts[host_key] = _host(addr, head)
                else:  # not memoised: the head does not determine the text
                    host_entry = _host(addr, _long_host(view, len(records)))
            host_text, address = host_entry
            malformed = (ut_type != LOGIN_PROCESS or sec < 0) and _malformed(ut_type, pid, sec)
            append(
                new(cls, (ut_type, pid, line_text, user_text, host_text, sec, address, malformed))
            )
    return records, consumed


def _text(raw: bytes) -> str:
    """A C string field: up to the first NUL, decoded."""
    return raw.partition(b"\0")[0].decode("utf-8", "replace")


def _long_host(view: memoryview, index: int) -> bytes:
    """The whole host field of record `index`: for a host with no NUL in its head (a DNS name of
    48 characters or more, which only UseDNS gives)."""
    at = index * RECORD_SIZE + _HOST_AT
    return bytes(view[at : at + _HOST_SIZE])


def _host(addr: bytes, raw_host: bytes) -> tuple[str, IPAddress | None]:
    host = _text(raw_host)
    return host, _address(addr, host)


def _malformed(ut_type: int, pid: int, sec: int) -> bool:
    """No real writer makes these: an unknown type, a negative time, an all-zero record."""
    return not (EMPTY <= ut_type <= ACCOUNTING) or sec < 0 or (ut_type == EMPTY and not pid)


def _address(addr: bytes, host: str) -> IPAddress | None:
    """ut_addr_v6 first; the host text when the binary field is empty."""
    if addr != _ZERO16:
        if addr[4:] == _ZERO12:
            return ipaddress.IPv4Address(addr[:4])
        return normalize(ipaddress.IPv6Address(addr))
    if host:
        try:
            return parse_address(host)
        except ValueError:
            return None  # a host name (UseDNS yes) or a tty's X display: not an address
    return None


def pack_utmp(record: UtmpRecord, *, tv_usec: int = 0, ut_id: bytes = b"") -> bytes:
    """The inverse, for tests and tools: one record as 384 bytes (strings truncated to their
    fields; the address written to ut_addr_v6)."""
    addr = _ZERO16
    if isinstance(record.address, ipaddress.IPv4Address):
        addr = record.address.packed + _ZERO12
    elif isinstance(record.address, ipaddress.IPv6Address):
        addr = record.address.packed
    return RECORD.pack(
        record.type,
        record.pid,
        record.line.encode()[:32],
        ut_id[:4],
        record.user.encode()[:32],
        record.host.encode()[:256],
        0,
        0,
        0,
        record.tv_sec,
        tv_usec,
        addr,
    )
