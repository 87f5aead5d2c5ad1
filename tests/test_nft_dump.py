# The raw set-element parser of guardian/effectors/nft_dump.py, on bytes a kernel sent (6.18,
# nftables 1.0.6: elements added with and without comments, then dumped), and on broken ones.
# The lab test tests/test_nft_bans_lab.py compares whole listings with `nft -j list set`.
from __future__ import annotations

import ipaddress

import pytest

from guardian.effectors.nft_dump import Element, _parse_elements

# The ELEMENTS attribute's payload of a ban4 dump: 1.2.3.5 (timeout 60 s, "offence 12"),
# 1.2.3.6 (timeout, no comment), 1.2.3.4 ("offence 3"), 1.2.3.7 (permanent, comment "x").
V4 = bytes.fromhex(
    "3c000100 0c000100 08000100 01020305 0c000400 00000000 0000ea60 0c000500 00000000 0000ea60"
    " 11000600 000b6f66 66656e63 65203132 00000000"
    " 28000100 0c000100 08000100 01020306 0c000400 00000000 0000ea60 0c000500 00000000 0000ea60"
    " 38000100 0c000100 08000100 01020304 0c000400 00000000 0000ea60 0c000500 00000000 0000ea60"
    " 10000600 000a6f66 66656e63 65203300"
    " 18000100 0c000100 08000100 01020307 08000600 00027800".replace(" ", "")
)
# A ban6 element: 2001:db8::1 (timeout 60 s, "offence 123456").
V6 = bytes.fromhex(
    "4c000100 18000100 14000100 20010db8 00000000 00000000 00000001 0c000400 00000000 0000ea60"
    " 0c000500 00000000 0000ea60 15000600 000f6f66 66656e63 65203132 33343536 00000000".replace(
        " ", ""
    )
)


def parse(data: bytes) -> list[Element]:
    out: list[Element] = []
    _parse_elements(data, 0, len(data), out, {})
    return out


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_elements_with_and_without_comments() -> None:
    assert parse(V4) == [
        (v4("1.2.3.5"), 60_000, "offence 12"),
        (v4("1.2.3.6"), 60_000, None),
        (v4("1.2.3.4"), 60_000, "offence 3"),
        (v4("1.2.3.7"), None, "x"),
    ]
    assert parse(V6) == [(int(ipaddress.IPv6Address("2001:db8::1")), 60_000, "offence 123456")]


def test_a_comment_seen_before_is_read_from_the_memo() -> None:
    out: list[Element] = []
    comments: dict[bytes, str | None] = {}
    _parse_elements(V4 + V4, 0, 2 * len(V4), out, comments)
    assert out == parse(V4) * 2
    assert sorted(c for c in comments.values() if c) == ["offence 12", "offence 3"]


def test_an_element_followed_by_another_attribute_takes_the_general_walk() -> None:
    # 1.2.3.4 with its USERDATA, then an unknown attribute (type 9): not the fast layout.
    element = bytes.fromhex(
        "3c000100 0c000100 08000100 01020304 0c000400 00000000 0000ea60 0c000500 00000000"
        " 0000ea60 10000600 000a6f66 66656e63 65203300 04000900".replace(" ", "")
    )
    assert parse(element) == [(v4("1.2.3.4"), 60_000, "offence 3")]


@pytest.mark.parametrize("cut", range(1, 60))
def test_a_truncated_dump_never_raises(cut: int) -> None:
    parse(V4[:cut])  # whatever it finds, it does not raise


def test_a_userdata_tlv_longer_than_its_attribute_is_cut_at_the_attribute() -> None:
    # The comment TLV claims 200 bytes; the attribute holds 11.
    broken = bytearray(V4[:60])
    broken[45] = 200  # the comment TLV's length byte
    assert parse(bytes(broken)) == [(v4("1.2.3.5"), 60_000, "offence 12")]
