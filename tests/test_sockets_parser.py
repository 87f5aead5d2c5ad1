# Tests of guardian/parsers/proc_net_tcp.py, without root: /proc/net/tcp and tcp6 text recorded in
# a lab namespace (a dual-stack listener on :22 whose IPv4 peer shows up v4-mapped in tcp6, an IPv6
# peer, a socket in CLOSE_WAIT, a v4-only listener on :2222) and generated tables decode to the
# right rows; only ESTABLISHED sockets of guarded local ports count; bad lines are counted, never
# raised; both byte orders.
from __future__ import annotations

import ipaddress
import random
import time

import pytest

from guardian.addresses import IPAddress
from guardian.parsers.proc_net_tcp import (
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    ByteOrder,
    SocketRow,
    encode_address,
    established_connections,
    parse_table,
)

ip = ipaddress.ip_address
CLIENT4, CLIENT6 = ip("192.0.2.2"), ip("2001:db8::2")
SERVER4, SERVER6 = ip("192.0.2.1"), ip("2001:db8::1")

# Recorded on a little-endian host (x86_64); the kernel's trailing padding blanks are left out.
TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:08AE 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 72835 \
2 000000000b9464c9 100 0 0 10 0
   1: 010200C0:08AE 020200C0:B50A 01 00000000:00000000 00:00000000 00000000     0        0 0 1 \
00000000dd096ba2 20 0 0 10 -1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue \
rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A \
00000000:00000003 00:00000000 00000000     0        0 72834 4 000000005ded20bb 100 0 0 10 0
   1: 0000000000000000FFFF0000010200C0:0016 0000000000000000FFFF0000020200C0:E106 01 \
00000000:00000000 00:00000000 00000000     0        0 0 1 000000002e687512 20 0 0 10 -1
   2: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:D93C 08 \
00000000:00000001 00:00000000 00000000     0        0 0 1 00000000bdfebf9b 20 4 0 10 -1
   3: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:D932 01 \
00000000:00000000 00:00000000 00000000     0        0 0 1 00000000514e7929 20 0 0 10 -1
"""


def test_recorded_tcp6_rows_decode() -> None:
    table = parse_table(TCP6, byteorder="little")
    assert table.malformed == 0
    assert table.rows == (
        SocketRow(ip("::"), 22, ip("::"), 0, TCP_LISTEN),
        SocketRow(SERVER4, 22, CLIENT4, 0xE106, TCP_ESTABLISHED),  # v4-mapped → IPv4
        SocketRow(SERVER6, 22, CLIENT6, 0xD93C, TCP_CLOSE_WAIT),
        SocketRow(SERVER6, 22, CLIENT6, 0xD932, TCP_ESTABLISHED),
    )


def test_recorded_tcp_rows_decode() -> None:
    table = parse_table(TCP4, byteorder="little")
    assert table.malformed == 0
    assert table.rows == (
        SocketRow(ip("0.0.0.0"), 2222, ip("0.0.0.0"), 0, TCP_LISTEN),
        SocketRow(SERVER4, 2222, CLIENT4, 0xB50A, TCP_ESTABLISHED),
    )


def test_only_established_sockets_of_guarded_ports_are_connections() -> None:
    six = established_connections(TCP6, (22,), byteorder="little")
    assert six.connections == {(CLIENT4, 0xE106, 22), (CLIENT6, 0xD932, 22)}
    assert six.malformed == 0
    assert established_connections(TCP4, (22,), byteorder="little").connections == frozenset()
    assert established_connections(TCP4, (2222,), byteorder="little").connections == {
        (CLIENT4, 0xB50A, 2222)
    }
    assert established_connections(TCP6, (2222,), byteorder="little").connections == frozenset()


def test_filters_apply_before_decoding() -> None:
    assert [r.local_port for r in parse_table(TCP6, local_ports=(2222,)).rows] == []
    established = parse_table(TCP6, established_only=True, byteorder="little").rows
    assert {r.state for r in established} == {TCP_ESTABLISHED}
    assert len(established) == 2


BAD_LINES = [
    "garbage",
    "   9: 0100007F:0016",  # too few fields
    "   9: 0100007G:0016 0100007F:D000 01 0",  # not hex
    "   9: 0100007F:016 0100007F:D000 01 0",  # short port
    "   9: 0100007F:0016 0100007F:D000 1 0",  # short state
    "   9: 0100007F:0016 0100007F:D000 ZZ 0",  # state not hex
    "   9: 0100007F00:0016 0100007F00:D000 01 0",  # 5-byte address
    "   9: 0100007F:0016 00000000000000000000000000000001:D000 01 0",  # mixed lengths
    "   9: 0100007F0016 0100007F:D000 01 0",  # no colon
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_lines_are_counted_and_skipped(line: str) -> None:
    text = TCP4 + line + "\n"
    for kwargs in ({}, {"local_ports": (22,)}):
        table = parse_table(text, byteorder="little", **kwargs)  # type: ignore[arg-type]
        assert table.malformed == 1, kwargs
    assert len(parse_table(text, byteorder="little").rows) == 2
    listing = established_connections(TCP6 + line + "\n", (22,), byteorder="little")
    assert listing.malformed == 1
    assert len(listing.connections) == 2


def test_blank_lines_and_empty_text() -> None:
    assert parse_table("").rows == ()
    assert parse_table("\n\n").malformed == 0
    assert parse_table("\n".join(TCP4.splitlines()[:1])).rows == ()


def row_line(
    slot: int,
    local: IPAddress,
    lport: int,
    remote: IPAddress,
    rport: int,
    state: int,
    order: ByteOrder,
) -> str:
    return (
        f"{slot:4d}: {encode_address(local, order)}:{lport:04X} "
        f"{encode_address(remote, order)}:{rport:04X} {state:02X} 00000000:00000000 00:00000000 "
        "00000000     0        0 0 1 0000000000000000 20 0 0 10 -1"
    )


@pytest.mark.parametrize("order", ["little", "big"])
def test_generated_tables_round_trip_in_both_byte_orders(order: ByteOrder) -> None:
    rng = random.Random(6)
    expected = set()
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"]
    for slot in range(1000):
        six = rng.random() < 0.5
        if six:
            peer: IPAddress = ipaddress.IPv6Address(rng.getrandbits(128))
            local: IPAddress = SERVER6
        else:
            peer, local = ipaddress.IPv4Address(rng.getrandbits(32)), SERVER4
        lport = rng.choice((22, 22, 80, 443, 2222))
        state = rng.choice((TCP_ESTABLISHED, TCP_ESTABLISHED, TCP_CLOSE_WAIT, 0x06))
        rport = rng.randrange(1, 65536)
        lines.append(row_line(slot, local, lport, peer, rport, state, order))
        if lport in (22, 2222) and state == TCP_ESTABLISHED:
            expected.add((peer, rport, lport))
    text = "\n".join(lines) + "\n"
    started = time.perf_counter()
    listing = established_connections(text, (22, 2222), byteorder=order)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"parsed 1000 rows ({len(expected)} kept) in {elapsed_ms:.2f} ms")
    assert listing.connections == expected
    assert listing.malformed == 0
    assert len(parse_table(text, byteorder=order).rows) == 1000


def test_v4_mapped_encoding_normalises() -> None:
    mapped = ipaddress.IPv6Address("::ffff:192.0.2.9")
    line = row_line(0, mapped, 22, mapped, 5000, TCP_ESTABLISHED, "little")
    assert "0000000000000000FFFF0000" in line  # the kernel's spelling, checked against TCP6 above
    listing = established_connections(line, (22,), byteorder="little")
    assert listing.connections == {(ip("192.0.2.9"), 5000, 22)}
