# Reading nftables state fast, on a NETLINK_NETFILTER socket parsed with struct: the elements of
# big hash sets (one NFT_MSG_GETSETELEM dump), the names of a table's sets and whether a table
# exists. libnftables fills its whole cache, every element of every set included, before most
# listings (`list tables`, `list table -t`, `list chain`: ~0.4 s each with 100k bans); these
# requests cost what the kernel needs to answer them.
#
# Why the elements: The daemon adopts every ban in the kernel at start-up, and with 100k bans
# `nft -j list set` costs ~0.6 s in libnftables' formatting and ~0.1 s more in json.loads, while
# the kernel's own dump of a hash set takes ~0.15 s and parsing it here ~0.1 s (measured on
# nftables 1.0.6, kernel 6.18; see tests/test_nft_bans_lab.py). Only hash sets (no intervals) are
# read this way: interval sets come as start/end pairs that libnftables reassembles, and the
# kernel's dump of those is quadratic anyway (100k interval elements: 0.65 s in the kernel alone),
# which is why the bans that matter in number live in hash sets (see nft_rules.py).
#
# Message layout (linux/netfilter/nf_tables.h, linux/netlink.h): a request is nlmsghdr + nfgenmsg
# + attributes TABLE and SET; the kernel answers with NEWSETELEM messages whose ELEMENTS attribute
# nests one LIST_ELEM per element: KEY { DATA_VALUE bytes }, TIMEOUT and EXPIRATION (u64 ms, big
# endian), FLAGS (u32) and USERDATA (TLVs of one type byte and one length byte; type 0, the
# comment, is a NUL-terminated string). An element without TIMEOUT is permanent; one with TIMEOUT
# but no EXPIRATION has just expired and is skipped.
from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections.abc import Callable

NETLINK_NETFILTER = 12
NFPROTO_INET = 1
_SUBSYS = 10 << 8  # NFNL_SUBSYS_NFTABLES, the high byte of the message type
_MSG_GETTABLE, _MSG_GETSET, _MSG_GETSETELEM = _SUBSYS | 1, _SUBSYS | 10, _SUBSYS | 13
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x4, 0x300, 0x10
_TABLE_NAME = 1  # NFTA_TABLE_NAME
_SET_TABLE, _SET_NAME = 1, 2  # NFTA_SET_TABLE, NFTA_SET_NAME
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_ATTR_TYPE = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_LIST_TABLE, _LIST_SET, _LIST_ELEMENTS = 1, 2, 3
_ELEM_KEY, _ELEM_FLAGS, _ELEM_TIMEOUT, _ELEM_EXPIRATION, _ELEM_USERDATA = 1, 3, 4, 5, 6
_UDATA_COMMENT = 0  # NFTNL_UDATA_SET_ELEM_COMMENT
_INTERVAL_END = 0x1
_RECV_SIZE = 1 << 20  # one datagram of a dump is at most a few pages; never truncated at 1 MiB
_DUMP_TRIES = 3  # a dump the kernel marks interrupted (the set changed meanwhile) is retried

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # nlattr: len, type
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

# (key as a big-endian integer, milliseconds left or None for a permanent element, the comment
# or None)
Element = tuple[int, int | None, str | None]

# The usual element of a timed set, as kernels 5.x-6.x send it: LIST_ELEM { KEY { DATA_VALUE
# (4 or 16 bytes) }, TIMEOUT u64, EXPIRATION u64 }, then at most USERDATA (a ban's comment).
# Matched by its attribute headers, then read with one unpack; anything else takes the general
# walk. (~3x faster for 100k elements.)
_TIMEOUT_HEADER = _ATTR.pack(12, _ELEM_TIMEOUT)
_EXPIRATION_HEADER = _ATTR.pack(12, _ELEM_EXPIRATION)
_FAST = {
    # LIST_ELEM's type + KEY header + DATA_VALUE header -> (struct of the values, length without
    # USERDATA)
    struct.pack("=H", 1) + _ATTR.pack(12, _ELEM_KEY) + _ATTR.pack(8, 1): (
        struct.Struct(">12xI4xQ4xQ"),
        40,
    ),
    struct.pack("=H", 1) + _ATTR.pack(24, _ELEM_KEY) + _ATTR.pack(20, 1): (
        struct.Struct(">12xQQ4xQ4xQ"),
        52,
    ),
}
_U16 = struct.Struct("=H")
_UNSEEN = "\0unseen"  # a memo miss (no comment read from the kernel contains a NUL)


class DumpError(OSError):
    """The kernel refused the dump (other than "no such set"), or answered nonsense."""


class SetDumper:
    """A NETLINK_NETFILTER socket, opened in the network namespace current at construction."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def elements(self, table: str, set_name: str, family: int = NFPROTO_INET) -> list[Element]:
        """Every live element of a hash set; [] when the set (or the table) does not exist."""
        attrs = _attr(_LIST_TABLE, _name(table)) + _attr(_LIST_SET, _name(set_name))
        for _ in range(_DUMP_TRIES):
            out: list[Element] = []
            comments: dict[bytes, str | None] = {}  # raw USERDATA -> comment: bans share a few
            parse = functools.partial(_parse_message, out, comments)
            done = self._request(_MSG_GETSETELEM, _NLM_F_DUMP, family, attrs, parse)
            if done is None:
                continue  # interrupted: the set changed during the dump
            return out if done else []
        raise DumpError(errno.EINTR, f"the dump of set {set_name} kept being interrupted")

    def set_names(self, table: str, family: int = NFPROTO_INET) -> set[str]:
        """The names of the table's sets (empty when the table does not exist)."""
        for _ in range(_DUMP_TRIES):
            names: set[str] = set()
            collect = functools.partial(_collect_set_name, table, names)
            attrs = _attr(_SET_TABLE, _name(table))
            done = self._request(_MSG_GETSET, _NLM_F_DUMP, family, attrs, collect)
            if done is not None:
                return names if done else set()
        raise DumpError(errno.EINTR, f"the listing of table {table}'s sets kept being interrupted")

    def table_exists(self, table: str, family: int = NFPROTO_INET) -> bool:
        attrs = _attr(_TABLE_NAME, _name(table))
        return bool(self._request(_MSG_GETTABLE, _NLM_F_ACK, family, attrs, lambda *_: None))

    def _request(
        self,
        kind: int,
        flags: int,
        family: int,
        attrs: bytes,
        on_message: Callable[[bytes, int, int], None],
    ) -> bool | None:
        """Send one request, pass every answer's attributes (data, start, end) to on_message.

        True when it completed, False when the kernel said ENOENT, None when the kernel marked
        a dump interrupted; other errors raise DumpError."""
        self._seq += 1
        seq = self._seq
        payload = struct.pack("=BBH", family, 0, 0) + attrs
        header = _HEADER.pack(_HEADER.size + len(payload), kind, _NLM_F_REQUEST | flags, seq, 0)
        self._sock.send(header + payload)  # one datagram: header and payload together
        interrupted = False
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, got, got_flags, got_seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise DumpError(errno.EPROTO, "malformed netlink message")
                if got_seq == seq:
                    if got == _NLMSG_DONE:
                        return None if interrupted else True
                    if got == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                        if code == errno.ENOENT:
                            return False
                        if code:
                            raise DumpError(code, f"nftables request refused: {os.strerror(code)}")
                        return None if interrupted else True  # the ACK of a plain request
                    interrupted |= bool(got_flags & _NLM_F_DUMP_INTR)
                    on_message(data, offset + _HEADER.size + 4, offset + length)
                offset += (length + 3) & ~3

    def __enter__(self) -> SetDumper:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _strings(data: bytes, offset: int, end: int, wanted: tuple[int, ...]) -> dict[int, str]:
    """The NUL-terminated string attributes of these types at the top level of a message."""
    found: dict[int, str] = {}
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4:
            break
        if kind & _ATTR_TYPE in wanted:
            raw = data[offset + 4 : offset + length]
            found[kind & _ATTR_TYPE] = raw.split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return found


def _attr(kind: int, data: bytes) -> bytes:
    length = _ATTR.size + len(data)
    return _ATTR.pack(length, kind) + data + b"\0" * (-length % 4)


def _collect_set_name(table: str, names: set[str], data: bytes, offset: int, end: int) -> None:
    found = _strings(data, offset, end, (_SET_TABLE, _SET_NAME))
    if found.get(_SET_TABLE) == table and _SET_NAME in found:
        names.add(found[_SET_NAME])


def _parse_message(
    out: list[Element], comments: dict[bytes, str | None], data: bytes, offset: int, end: int
) -> None:
    """The attributes of one NEWSETELEM message (after nfgenmsg): collect its elements."""
    unpack = _ATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            return
        if kind & _ATTR_TYPE == _LIST_ELEMENTS:
            _parse_elements(data, offset + 4, offset + length, out, comments)
        offset += (length + 3) & ~3


def _parse_elements(
    data: bytes, offset: int, end: int, out: list[Element], comments: dict[bytes, str | None]
) -> None:
    unpack = _ATTR.unpack_from
    u64 = _U64.unpack_from
    fast = _FAST
    append = out.append
    while offset + 4 <= end:
        layout = fast.get(data[offset + 2 : offset + 12])
        if layout is not None:
            values, size = layout
            elem_length = _U16.unpack_from(data, offset)[0]
            extra = elem_length - size  # 0, or one USERDATA attribute (checked below)
            comment = None
            if offset + elem_length > end:
                extra = -1  # overruns its message: the general walk stops there
            elif extra > 0:
                # The memo holds only attributes found to be one USERDATA: a hit needs no check.
                raw = data[offset + size : offset + elem_length]
                comment = comments.get(raw, _UNSEEN)
                if comment is _UNSEEN:
                    if _is_userdata(raw, 0, extra):
                        comment = comments[raw] = _userdata_comment(raw, 4, _U16.unpack(raw[:2])[0])
                    else:
                        extra = -1  # something else: the general walk below
            if (
                extra >= 0
                and data[offset + size - 24 : offset + size - 20] == _TIMEOUT_HEADER
                and data[offset + size - 12 : offset + size - 8] == _EXPIRATION_HEADER
            ):
                fields = values.unpack_from(data, offset)
                if size == 40:
                    append((fields[0], fields[2], comment))
                else:
                    append(((fields[0] << 64) | fields[1], fields[3], comment))
                offset += (elem_length + 3) & ~3
                continue
        elem_length, _ = unpack(data, offset)
        if elem_length < 4:
            return
        inner, elem_end = offset + 4, min(offset + elem_length, end)
        key: int | None = None
        timeout = expires = None
        flags = 0
        comment = None
        while inner + 4 <= elem_end:
            length, kind = unpack(data, inner)
            if length < 4 or inner + length > elem_end:
                break  # broken or cut: what was read so far stands
            kind &= _ATTR_TYPE
            if kind == _ELEM_KEY:
                value_length, _ = unpack(data, inner + 4)  # the nested DATA_VALUE
                key = int.from_bytes(data[inner + 8 : inner + 4 + value_length], "big")
            elif kind == _ELEM_EXPIRATION:
                expires = u64(data, inner + 4)[0]
            elif kind == _ELEM_TIMEOUT:
                timeout = u64(data, inner + 4)[0]
            elif kind == _ELEM_FLAGS:
                flags = _U32.unpack_from(data, inner + 4)[0]
            elif kind == _ELEM_USERDATA:
                comment = _userdata_comment(data, inner + 4, inner + length)
            inner += (length + 3) & ~3
        offset += (elem_length + 3) & ~3
        if key is None or flags & _INTERVAL_END:
            continue
        if timeout is not None and expires is None:
            continue  # expired, not yet collected by the kernel
        append((key, expires, comment))


def _is_userdata(data: bytes, offset: int, room: int) -> bool:
    """Whether the `room` bytes at offset are exactly one USERDATA attribute (padded)."""
    if room < 4:
        return False
    length, kind = _ATTR.unpack_from(data, offset)
    return bool(kind & _ATTR_TYPE == _ELEM_USERDATA and length >= 4 and (length + 3) & ~3 == room)


def _userdata_comment(data: bytes, offset: int, end: int) -> str | None:
    """The comment among an element's USERDATA TLVs (data[offset:end]), None without one."""
    end = min(end, len(data))
    while offset + 2 <= end:
        kind, length = data[offset], data[offset + 1]
        value = data[offset + 2 : min(offset + 2 + length, end)]
        if kind == _UDATA_COMMENT:
            return value.split(b"\0", 1)[0].decode("utf-8", "replace")
        offset += 2 + length
    return None
