"""allowedIPs are read by `core.networks.parse_network`, the parser the gateway matches them with: what the
management API accepts is what the gateway can match, and an address is kept as the address it was written as."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyscope.documents.fields import ValidationError, normalise_ip
from keyscope.core.networks import parse_network


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("203.0.113.10", "203.0.113.10"),
        ("2001:DB8::1", "2001:db8::1"),
        ("198.51.100.77/24", "198.51.100.0/24"),
        ("10.0.0.1/255.0.0.0", "10.0.0.0/8"),
        ("10.0.0.1/0.255.255.255", "10.0.0.0/8"),
        ("::1/128", "::1/128"),
        ("::ffff:10.0.0.1", "::ffff:a00:1"),  # an IPv4-mapped address stays IPv6: written so, stored so
        ("::ffff:10.0.0.0/104", "::ffff:a00:0/104"),
    ],
)
def test_addresses_stay_addresses_and_ranges_become_networks(written: str, stored: str) -> None:
    assert normalise_ip(written, "allowedIPs[0]") == stored
    assert parse_network(stored) == parse_network(written)  # the gateway reads back what it would have read


@pytest.mark.parametrize(
    ("written", "detail"),
    [
        ("fe80::1%eth0", "must not carry an IPv6 zone"),
        ("10.0.0.1%x/8", "must not carry an IPv6 zone"),
        ("%", "must not carry an IPv6 zone"),
        ("10.0.0.300", "must be an IP address or a CIDR range"),
        ("10.0.0.1/33", "must be an IP address or a CIDR range"),
        (" 10.0.0.1", "must be an IP address or a CIDR range"),
        ("010.0.0.1", "must be an IP address or a CIDR range"),
        ("10.0.0.1/", "must be an IP address or a CIDR range"),
        ("1.2.3.4/8/8", "must be an IP address or a CIDR range"),
        ("", "must be an IP address or a CIDR range"),
        ("0", "must be an IP address or a CIDR range"),
        (5, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_refusals_name_the_entry(written: Any, detail: str) -> None:
    with pytest.raises(ValidationError) as refused:
        normalise_ip(written, "allowedIPs[3]")
    assert (refused.value.field, refused.value.detail) == ("allowedIPs[3]", detail)


_ADDRESS_LIKE = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: str(a).upper()),
    st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=24),
)


@given(_ADDRESS_LIKE)
def test_an_address_is_accepted_exactly_when_it_is_one_and_kept_as_it(text: str) -> None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or "%" in text:
        with pytest.raises(ValidationError):
            normalise_ip(text, "allowedIPs[0]")
    else:
        assert normalise_ip(text, "allowedIPs[0]") == str(address)
