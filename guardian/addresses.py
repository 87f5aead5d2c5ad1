# Address types shared by every layer, and the one place that normalises what the kernel and the
# logs hand us: an IPv4-mapped IPv6 address (::ffff:192.0.2.1) is the IPv4 address it carries, so a
# source has exactly one identity whichever path reported it.
from __future__ import annotations

import functools
import ipaddress
import itertools
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize(address: IPAddress) -> IPAddress:
    """Return the IPv4 address inside a v4-mapped IPv6 address, else the address itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress:
    """Parse and normalise an address; raises ValueError naming the text on failure."""
    return normalize(ipaddress.ip_address(text.strip().strip("[]")))


def in_any(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """True when the address lies in one of the networks (mixed families never match)."""
    return any(address.version == net.version and address in net for net in networks)


# ---- many networks from integers, fast -------------------------------------------------------
# Start-up lists up to 100k bans from the kernel as integers (nft_dump); ipaddress's network
# constructors cost ~1.5 µs each (argument parsing, checks, a new netmask object), a sixth of the
# whole adoption. _fast_network builds the same object from its parts (object.__new__ and the
# attributes __init__ would set). That leans on ipaddress's private layout, so the module checks
# at import that what it builds is indistinguishable from the constructor's result for a set of
# samples, and uses the constructor if not (another Python version may lay it out differently).


def networks_from_ints(version: int, prefix: int, values: list[int]) -> list[IPNetwork]:
    """ip_network((value, prefix), strict=False) for each value (host bits are cleared)."""
    build = _fast_network if _FAST_NETWORKS else _slow_network
    return build(version, prefix, values)


def _slow_network(version: int, prefix: int, values: list[int]) -> list[IPNetwork]:
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return [cls((value, prefix), strict=False) for value in values]


def _fast_network(version: int, prefix: int, values: list[int]) -> list[IPNetwork]:
    template = _slow_network(version, prefix, [0])[0]
    net_cls, addr_cls = type(template), type(template.network_address)
    netmask, mask = template.netmask, int(template.netmask)
    new, setattr_ = object.__new__, setattr
    host_route = prefix == template.max_prefixlen
    point_to_point = prefix == template.max_prefixlen - 1
    out: list[IPNetwork] = []
    for value in values:
        address = new(addr_cls)
        setattr_(address, "_ip", value & mask)
        if version == 6:
            setattr_(address, "_scope_id", None)
        net = new(net_cls)
        fields = net.__dict__
        fields["network_address"] = address
        fields["netmask"] = netmask
        fields["_prefixlen"] = prefix
        if host_route:  # what __init__ gives a /32 or /128: hosts() is the address itself
            fields["hosts"] = functools.partial(list, (address,))
        elif point_to_point:  # a /31 or /127 (RFC 3021): hosts() is both addresses
            fields["hosts"] = net.__iter__
        out.append(net)
    return out


def _same_network(a: IPNetwork, b: IPNetwork) -> bool:
    """Everything public (and the instance layout) of two networks agrees."""
    return (
        type(a) is type(b)
        and a == b
        and hash(a) == hash(b)
        and str(a) == str(b)
        and repr(a) == repr(b)
        and sorted(vars(a)) == sorted(vars(b))
        and type(a.network_address) is type(b.network_address)
        and a.network_address == b.network_address
        and hash(a.network_address) == hash(b.network_address)
        and str(a.network_address) == str(b.network_address)
        and a.netmask == b.netmask
        and a.hostmask == b.hostmask
        and a.broadcast_address == b.broadcast_address
        and a.num_addresses == b.num_addresses
        and a.with_prefixlen == b.with_prefixlen
        and a.prefixlen == b.prefixlen
        and a.is_private == b.is_private
        and list(itertools.islice(a.hosts(), 4)) == list(itertools.islice(b.hosts(), 4))
        and (a.network_address in a) == (b.network_address in b)
        and a.supernet() == b.supernet()
    )


def _fast_networks_agree() -> bool:
    samples = [0, 1, 0x7F000001, 0xC0A80001, 0xFFFFFFFF]
    samples6 = [0, 1, 0x20010DB8 << 96 | 0x1234, (1 << 128) - 1, 0xFFFF << 32 | 0xC0000201]
    try:
        for version, prefixes, values in (
            (4, (32, 31, 24, 8, 0), samples),
            (6, (128, 127, 64, 48, 0), samples6),
        ):
            for prefix in prefixes:
                fast = _fast_network(version, prefix, values)
                slow = _slow_network(version, prefix, values)
                if not all(_same_network(f, s) for f, s in zip(fast, slow, strict=True)):
                    return False
    except Exception:  # any surprise in the private layout: use the constructors
        return False
    return True


_FAST_NETWORKS = _fast_networks_agree()
