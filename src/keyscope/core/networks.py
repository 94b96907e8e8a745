"""IP addresses and CIDR ranges, parsed one way wherever keyscope reads them: a key's allowedIPs, the
`--trusted-proxies` setting, the management API's validation and the peers the gateway sees.

An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 address it is, so a range written
in IPv4 matches it; a zone (`fe80::1%eth0`) names an interface, not an address, and is refused."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> IPNetwork:
    """An address or a CIDR range as the network it names (`10.0.0.7/8` is `10.0.0.0/8`); ValueError if neither."""
    if "%" in text:
        raise ValueError(f"{text!r} carries an IPv6 zone")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR range") from None


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(parse_network(text) for text in texts)


def parse_address(text: str) -> IPAddress | None:
    """One address, IPv4-mapped IPv6 unwrapped; None when the text is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks)
