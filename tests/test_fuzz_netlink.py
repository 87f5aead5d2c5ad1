# Fuzz: what the kernel hands the session watchers, taken as hostile anyway — conntrack netlink
# datagrams (guardian/parsers/conntrack.py iter_messages / decode_message, LiveConnections) and
# /proc/net/tcp text (guardian/parsers/proc_net_tcp.py parse_table / established_connections).
# A spoofer shapes the tuples conntrack reports; a kernel bug or a future format shapes the rest.
#
# Invariants: a datagram decodes to records/controls/None, or MalformedMessage at the first broken
# frame, never another exception; LiveConnections only holds guarded TCP connections reported
# ESTABLISHED and emits Opened/Closed alternately per connection; a socket table of any text
# parses with bad lines counted, never raised. The conntrack strategy builds real framing (nlmsghdr,
# nfgenmsg, nested attributes) around random content so the decoder's deep paths are reached, not
# only its first length check (tests/test_conntrack_parser.py covers random and mutated bytes).
from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from guardian.events import ConnectionClosed, ConnectionOpened
from guardian.parsers import conntrack as ct
from guardian.parsers.conntrack import (
    ConntrackRecord,
    Control,
    LiveConnections,
    MalformedMessage,
    iter_messages,
    listed_connections,
)
from guardian.parsers.proc_net_tcp import (
    Listing,
    SocketTable,
    encode_address,
    established_connections,
    parse_table,
)
from tests.test_fuzz_support import assert_fast, counted, fuzz_settings, outcome

GUARDED = frozenset({22, 2222})


# ---- conntrack datagrams -------------------------------------------------------------------------
def _nla(nla_type: int, payload: bytes, length: int | None = None) -> bytes:
    size = 4 + len(payload) if length is None else length
    return struct.pack("=HH", size & 0xFFFF, nla_type) + payload + bytes(-len(payload) % 4)


_LEAF_PAYLOADS = st.one_of(
    st.sampled_from([b"\x06", b"\x11", b"\x00\x16", b"\x08\xae", b"\x03", b"\x00\x00\x00\x04"]),
    st.ip_addresses(v=4).map(lambda a: a.packed),
    st.ip_addresses(v=6).map(lambda a: a.packed),
    st.binary(max_size=20),
)
_TYPES = st.one_of(st.integers(0, 6), st.integers(0, 0xFFFF))


def _attributes(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A list of attributes; each one's length field is usually right, sometimes anything."""
    one = st.tuples(_TYPES, children, st.one_of(st.none(), st.none(), st.integers(0, 80))).map(
        lambda t: _nla(t[0] | (0x8000 if t[1][:2] and t[1][:1] != b"\x00" else 0), t[1], t[2])
    )
    return st.lists(one, max_size=5).map(b"".join)


ATTRIBUTE_TREES = st.recursive(_LEAF_PAYLOADS, _attributes, max_leaves=12)


@st.composite
def _maybe(draw: st.DrawFn, real: bytes) -> bytes:
    """Mostly the real attribute; one time in 20 each dropped, doubled, or a random tree."""
    fate = draw(st.sampled_from(["real"] * 17 + ["drop", "double", "random"]))
    if fate == "drop":
        return b""
    if fate == "double":
        return real + real
    if fate == "random":
        return draw(_attributes(ATTRIBUTE_TREES))
    return real


@st.composite
def _conntrack_attributes(draw: st.DrawFn) -> bytes:
    """A conntrack entry as the kernel builds it (orig tuple, status, TCP state), each part
    drawn, and each attribute at risk of being dropped, doubled or replaced."""
    v6 = draw(st.booleans())
    src, dst = draw(st.ip_addresses(v=6 if v6 else 4)), draw(st.ip_addresses(v=6 if v6 else 4))
    first = ct.CTA_IP_V6_SRC if v6 else ct.CTA_IP_V4_SRC
    ip = draw(_maybe(_nla(first, src.packed))) + draw(_maybe(_nla(first + 1, dst.packed)))
    proto = draw(st.sampled_from([6, 6, 17, 1]))
    dport = draw(st.one_of(st.sampled_from(sorted(GUARDED)), st.integers(0, 65535)))
    ports = draw(_maybe(_nla(ct.CTA_PROTO_NUM, bytes([proto]))))
    ports += draw(
        _maybe(_nla(ct.CTA_PROTO_SRC_PORT, struct.pack("!H", draw(st.integers(0, 65535)))))
    )
    ports += draw(_maybe(_nla(ct.CTA_PROTO_DST_PORT, struct.pack("!H", dport))))
    tuple_ = draw(_maybe(_nla(ct.CTA_TUPLE_IP | 0x8000, ip)))
    tuple_ += draw(_maybe(_nla(ct.CTA_TUPLE_PROTO | 0x8000, ports)))
    state = draw(st.one_of(st.sampled_from(range(1, 10)), st.integers(0, 255)))
    info = _nla(
        ct.CTA_PROTOINFO_TCP | 0x8000,
        draw(_maybe(_nla(ct.CTA_PROTOINFO_TCP_STATE, bytes([state])))),
    )
    return (
        draw(_maybe(_nla(ct.CTA_TUPLE_ORIG | 0x8000, tuple_)))
        + draw(_maybe(_nla(ct.CTA_STATUS, struct.pack("!I", draw(st.integers(0, 2**32 - 1))))))
        + draw(_maybe(_nla(ct.CTA_PROTOINFO | 0x8000, draw(_maybe(info)))))
    )


@st.composite
def _message(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["ct"] * 6 + ["error", "done", "noop", "other"]))
    if kind == "error":
        msg_type, body = ct.NLMSG_ERROR, draw(st.binary(max_size=20))
    elif kind == "done":
        msg_type, body = ct.NLMSG_DONE, draw(st.binary(max_size=4))
    elif kind == "noop":
        msg_type, body = ct.NLMSG_NOOP, b""
    elif kind == "other":
        msg_type, body = draw(st.integers(0, 0xFFFF)), draw(st.binary(max_size=40))
    else:
        msg_type = ct.NFNL_SUBSYS_CTNETLINK << 8 | draw(st.sampled_from([0, 1, 2, 3]))
        family = draw(st.sampled_from([2, 10, 0]))
        real = draw(st.sampled_from([True] * 4 + [False]))
        attributes = draw(_conntrack_attributes() if real else _attributes(ATTRIBUTE_TREES))
        body = struct.pack("=BBH", family, 0, 0) + attributes
    flags = draw(st.sampled_from([0, ct.NLM_F_MULTI, ct.NLM_F_CREATE | ct.NLM_F_EXCL, 0x400]))
    length = 16 + len(body)
    if draw(st.sampled_from([False] * 7 + [True])):  # a broken frame now and then; most are sound
        length = draw(st.integers(0, 200))
    return struct.pack("=IHHII", length, msg_type, flags, 1, 0) + body + bytes(-len(body) % 4)


DATAGRAMS = st.one_of(
    st.lists(_message(), min_size=1, max_size=4).map(b"".join),
    st.binary(max_size=200),
)


def _decode_all(data: bytes, tcp_ports: frozenset[int] | None) -> list[object]:
    out: list[object] = []
    try:
        for message in iter_messages(data, tcp_ports):
            out.append(message)
    except MalformedMessage:
        out.append(MalformedMessage)
    return out


def check_datagram(data: bytes) -> None:
    for ports in (None, GUARDED):
        messages = outcome("conntrack", lambda ports=ports: _decode_all(data, ports))
        assert isinstance(messages, list)
        live = LiveConnections(GUARDED)
        records: list[ConntrackRecord] = []
        for message in messages:
            assert (
                message is None
                or message is MalformedMessage
                or isinstance(message, ConntrackRecord | Control)
            ), message
            if isinstance(message, ConntrackRecord):
                assert isinstance(message.source, ipaddress.IPv4Address | ipaddress.IPv6Address)
                assert 0 <= message.sport <= 0xFFFF and 0 <= message.dport <= 0xFFFF
                assert message.state is None or 0 <= message.state <= 255
                if ports is not None:
                    assert message.proto == 6 and message.dport in ports
                records.append(message)
                before = message.connection in live
                event = outcome("conntrack", lambda m=message, live=live: live.feed(m))
                if isinstance(event, ConnectionOpened):
                    assert not before and message.is_open and message.dport in GUARDED
                elif isinstance(event, ConnectionClosed):
                    assert before and message.is_closed
                else:
                    assert event is None
        listed = outcome("conntrack", lambda r=records: listed_connections(r, GUARDED))
        assert isinstance(listed, frozenset) and all(c[2] in GUARDED for c in listed)
    one = outcome("conntrack", lambda: ct.decode_message(data), (MalformedMessage,))
    assert one is None or isinstance(one, ConntrackRecord | Control | MalformedMessage)


@fuzz_settings(150)
@given(data=DATAGRAMS)
@counted("conntrack")
def test_conntrack_datagrams_decode_or_are_malformed(data: bytes) -> None:
    check_datagram(data)


# ---- /proc/net/tcp -------------------------------------------------------------------------------
_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
)


@st.composite
def _socket_line(draw: st.DrawFn) -> str:
    v6 = draw(st.booleans())
    local = draw(st.ip_addresses(v=6 if v6 else 4))
    remote = draw(st.ip_addresses(v=6 if v6 else 4))
    port = draw(st.one_of(st.sampled_from(sorted(GUARDED)), st.integers(0, 65535)))
    fields = [
        f"{draw(st.integers(0, 9999))}:",
        f"{encode_address(local)}:{port:04X}",
        f"{encode_address(remote)}:{draw(st.integers(0, 65535)):04X}",
        draw(st.sampled_from(["01", "0A", "08", "06", "1", "ZZ", "001"])),
        "00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30",
    ]
    for _ in range(draw(st.integers(0, 2))):  # damage: a field replaced or cut
        at = draw(st.integers(0, len(fields) - 1))
        fields[at] = draw(st.one_of(st.text(max_size=12), st.just(fields[at][:3])))
    return " ".join(fields)


TABLES = st.one_of(
    st.lists(st.one_of(_socket_line(), st.just(_HEADER), st.text(max_size=60)), max_size=12).map(
        "\n".join
    ),
    st.text(max_size=300),
)


def check_table(text: str) -> None:
    for order in ("little", "big"):
        table = outcome("proc_net_tcp", lambda order=order: parse_table(text, byteorder=order))
        assert isinstance(table, SocketTable) and table.malformed >= 0
        lines = [line for line in text.splitlines() if line.strip()]
        assert len(table.rows) + table.malformed <= len(lines)
        listing = outcome(
            "proc_net_tcp",
            lambda order=order: established_connections(text, GUARDED, byteorder=order),
        )
        assert isinstance(listing, Listing)
        for source, _sport, local_port in listing.connections:
            assert isinstance(source, ipaddress.IPv4Address | ipaddress.IPv6Address)
            assert local_port in GUARDED


@fuzz_settings(150)
@given(text=TABLES)
@counted("proc_net_tcp")
def test_socket_tables_parse_with_bad_lines_counted(text: str) -> None:
    check_table(text)


def test_a_big_socket_table_parses_fast() -> None:
    """16k sockets of a busy host, every one a session to a guarded port (the slow path)."""

    def lines() -> Iterator[str]:
        yield _HEADER
        for n in range(16384):
            yield (
                f"{n}: 0100007F:0016 {n:08X}:{n % 65536:04X} 01 00000000:00000000 00:00000000 "
                "00000000 0 0 1 1 0 20 4 30 10 -1"
            )

    text = "\n".join(lines())
    listing = assert_fast(lambda: established_connections(text, GUARDED), 1.0, "16k sockets")
    assert len(listing.connections) == 16384
