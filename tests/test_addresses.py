# guardian.addresses: normalisation of v4-mapped addresses, and networks_from_ints, whose fast
# builder must give objects indistinguishable from ipaddress's constructors (it is checked at
# import; here against many random values, every prefix length, and with the check failing).
from __future__ import annotations

import ipaddress
import itertools
import random
import sys

import pytest

from guardian import addresses
from guardian.addresses import in_any, networks_from_ints, normalize, parse_address


def test_v4_mapped_addresses_are_their_v4_address() -> None:
    assert parse_address(" [::ffff:192.0.2.1] ") == ipaddress.IPv4Address("192.0.2.1")
    assert normalize(ipaddress.IPv6Address("2001:db8::1")) == ipaddress.IPv6Address("2001:db8::1")
    nets = (ipaddress.ip_network("192.0.2.0/24"),)
    assert in_any(parse_address("::ffff:192.0.2.9"), nets)
    assert not in_any(parse_address("2001:db8::1"), nets)


def test_the_fast_builder_is_in_use_on_debian_12s_python() -> None:
    if sys.version_info[:2] == (3, 11):
        assert addresses._FAST_NETWORKS
    assert addresses._fast_networks_agree() == addresses._FAST_NETWORKS


@pytest.mark.parametrize("version", [4, 6])
def test_networks_from_ints_equal_the_constructors(version: int) -> None:
    rng = random.Random(version)
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    for prefix in range(bits + 1):
        values = [rng.getrandbits(bits) for _ in range(20)] + [0, (1 << bits) - 1]
        got = networks_from_ints(version, prefix, values)
        want = [cls((v, prefix), strict=False) for v in values]
        assert got == want
        for g, w in zip(got, want, strict=True):
            assert addresses._same_network(g, w), (g, w)
            assert {g: 1}[w] == 1  # usable as the same dict key
            assert list(itertools.islice(g.hosts(), 3)) == list(itertools.islice(w.hosts(), 3))


def test_without_the_fast_builder_the_result_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [0xC0000201, 0x0A000001]
    fast = networks_from_ints(4, 32, values)
    monkeypatch.setattr(addresses, "_FAST_NETWORKS", False)
    assert networks_from_ints(4, 32, values) == fast
    # The import-time check fails when the private layout differs.
    monkeypatch.setattr(addresses, "_fast_network", lambda *_: [ipaddress.ip_network("0.0.0.0/0")])
    assert not addresses._fast_networks_agree()
