"""addresses: the special-purpose tables, checked against a spec written out again here.

`SPEC_V4` and `SPEC_V6` restate the IANA registries' ranges independently of the module, and
`spec_blocks` decides with integer arithmetic alone, so neither a slip in the module's table
nor Python's own `ipaddress` tables (`is_global`, ...) can make these tests agree by accident.
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.pipeline.acquire.addresses import (
    EMBEDDING_PREFIXES,
    SPECIAL_RANGES,
    IPAddress,
    address_problem,
    host_name_problem,
)

SPEC_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "192.175.48.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
]
SPEC_V6 = [
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2620:4f:8000::/48",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
    # only 2000::/3 is global unicast in the IANA IPv6 Address Space registry
    "::/3",
    "4000::/2",
    "8000::/1",
]
# (prefix, where its IPv4 address sits: right shift of the 128-bit value)
SPEC_EMBEDDING = [("::ffff:0:0/96", 0), ("64:ff9b::/96", 0), ("2002::/16", 80)]


def _inside(value: int, bits: int, cidr: str) -> bool:
    base, length = cidr.split("/")
    shift = bits - int(length)
    return value >> shift == int(ip_address(base)) >> shift


def spec_blocks(ip: IPAddress) -> bool:
    """The decision the registries call for, from the spec lists and integer arithmetic only."""
    value = int(ip)
    if isinstance(ip, IPv4Address):
        return any(_inside(value, 32, cidr) for cidr in SPEC_V4)
    for cidr, shift in SPEC_EMBEDDING:
        if _inside(value, 128, cidr):
            return spec_blocks(IPv4Address((value >> shift) & 0xFFFFFFFF))
    return any(_inside(value, 128, cidr) for cidr in SPEC_V6)


def table_blocks(ip: IPAddress) -> bool:
    """Membership over the module's own table, without its lookup code."""
    bits = 32 if isinstance(ip, IPv4Address) else 128
    if bits == 128:
        for prefix in EMBEDDING_PREFIXES:
            if _inside(int(ip), 128, str(prefix.network)):
                return table_blocks(IPv4Address(prefix.extract(int(ip))))
    return any(
        r.network.version == ip.version and _inside(int(ip), bits, str(r.network))
        for r in SPECIAL_RANGES
    )


def _ends(cidr: str) -> list[IPAddress]:
    net = ipaddress.ip_network(cidr)
    return [net.network_address, net.broadcast_address]


def _most_specific(ip: IPAddress) -> str:
    bits = 32 if isinstance(ip, IPv4Address) else 128
    spec = SPEC_V4 if bits == 32 else SPEC_V6
    return max((c for c in spec if _inside(int(ip), bits, c)), key=lambda c: int(c.split("/")[1]))


@pytest.mark.parametrize("cidr", SPEC_V4 + SPEC_V6)
def test_first_and_last_address_of_every_range_are_refused(cidr: str) -> None:
    for ip in _ends(cidr):
        problem = address_problem(ip)
        assert problem is not None, ip
        # The reason names a range that holds the address, no wider than the spec's narrowest.
        named = re.search(r"\(([0-9a-f.:]+/\d+), ", problem)
        assert named is not None, problem
        network = ipaddress.ip_network(named.group(1))
        assert ip in network
        assert network.prefixlen >= ipaddress.ip_network(_most_specific(ip)).prefixlen


@pytest.mark.parametrize("cidr", SPEC_V4 + SPEC_V6)
def test_the_neighbours_of_every_range_follow_the_spec(cidr: str) -> None:
    first, last = _ends(cidr)
    limit = 2**32 if isinstance(first, IPv4Address) else 2**128
    for value in (int(first) - 1, int(last) + 1):
        if 0 <= value < limit:
            ip = type(first)(value)
            assert (address_problem(ip) is not None) == spec_blocks(ip), ip


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "192.0.3.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700::1111",
        "2001:4860:4860::8888",  # Google: near 2001::/23, not in it
        "2001:200::1",  # the first /32 after 2001::/23
        "2a00:1450:4001::1",
        "3fff:1000::1",  # just past the 3fff::/20 documentation block
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_ordinary_public_addresses_pass(address: str) -> None:
    assert address_problem(ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "inner", "reason"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1", "loopback (127.0.0.0/8, RFC 1122)"),
        ("::ffff:169.254.169.254", "169.254.169.254", "link-local"),
        ("64:ff9b::10.0.0.1", "10.0.0.1", "private-use (10.0.0.0/8, RFC 1918)"),
        ("64:ff9b::192.168.1.1", "192.168.1.1", "private-use (192.168.0.0/16"),
        ("2002:a00:1::1", "10.0.0.1", "private-use"),
        ("2002:7f00:1:1:2:3:4:5", "127.0.0.1", "loopback"),
        ("2002:c000:9::", "192.0.0.9", "Port Control Protocol anycast"),
    ],
)
def test_ipv4_mapped_nat64_and_6to4_forms_are_judged_by_their_ipv4(
    address: str, inner: str, reason: str
) -> None:
    problem = address_problem(ip_address(address))
    assert problem is not None
    assert f"form of {inner}, which is {reason}" in problem


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("192.0.0.1", "IPv4 service continuity prefix (192.0.0.0/29, RFC 7335)"),
        ("192.0.0.9", "Port Control Protocol anycast (192.0.0.9/32, RFC 7723)"),
        ("192.0.0.200", "IETF protocol assignments (192.0.0.0/24, RFC 6890)"),
        ("0.0.0.0", '"this host on this network" (0.0.0.0/32, RFC 1122)'),
        ("255.255.255.255", "limited broadcast (255.255.255.255/32, RFC 919)"),
        ("64:ff9b:1::a00:1", "local-use IPv4/IPv6 translation (64:ff9b:1::/48, RFC 8215)"),
        ("2001::1", "Teredo (2001::/32, RFC 4380)"),
        ("2001:1::1", "Port Control Protocol anycast"),
        ("fe80::1%eth0", "link-local (fe80::/10, RFC 4291)"),
        ("::7f00:1", "reserved by the IETF, outside global unicast 2000::/3 (::/3, IANA"),
        ("::ffff:0:7f00:1", "reserved by the IETF"),  # SIIT's IPv4-translated form
    ],
)
def test_reasons_name_the_narrowest_entry(address: str, reason: str) -> None:
    problem = address_problem(ip_address(address))
    assert problem is not None
    assert problem.startswith(reason)


def test_python_address_tables_are_not_consulted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> bool:
        raise AssertionError("consulted ipaddress's own tables")

    for cls in (IPv4Address, IPv6Address):
        for name in ("is_global", "is_private", "is_reserved", "is_loopback", "is_link_local",
                     "is_multicast", "is_unspecified"):  # fmt: skip
            monkeypatch.setattr(cls, name, property(refuse))
    monkeypatch.setattr(IPv6Address, "is_site_local", property(refuse))
    monkeypatch.setattr(IPv6Address, "ipv4_mapped", property(refuse))
    monkeypatch.setattr(IPv6Address, "sixtofour", property(refuse))
    monkeypatch.setattr(IPv6Address, "teredo", property(refuse))
    for address in ("192.0.0.1", "8.8.8.8", "::ffff:10.0.0.1", "2002:808:808::1", "fd00::1"):
        address_problem(ip_address(address))


# Addresses anywhere, and addresses near each range's ends, where slips would hide.
def _near_ranges() -> st.SearchStrategy[IPAddress]:
    def around(cidr: str, offset: int, at_end: bool) -> IPAddress:
        first, last = _ends(cidr)
        limit = 2**32 if isinstance(first, IPv4Address) else 2**128
        value = (int(last) + offset if at_end else int(first) - offset) % limit
        return type(first)(value)

    cidrs = SPEC_V4 + SPEC_V6 + [c for c, _ in SPEC_EMBEDDING]
    return st.builds(around, st.sampled_from(cidrs), st.integers(-3, 3), st.booleans())


def _embedded_near_ranges() -> st.SearchStrategy[IPAddress]:
    def embed(inner: IPAddress, prefix: int) -> IPAddress:
        value = int(inner) & 0xFFFFFFFF
        forms = [0xFFFF << 32 | value, 0x64FF9B << 96 | value, 0x2002 << 112 | value << 80]
        return IPv6Address(forms[prefix])

    return st.builds(embed, _near_ranges(), st.integers(0, 2))


ANY_ADDRESS = st.one_of(st.ip_addresses(), _near_ranges(), _embedded_near_ranges())


@given(ANY_ADDRESS)
def test_decision_equals_membership_in_the_table(ip: IPAddress) -> None:
    assert (address_problem(ip) is not None) == table_blocks(ip)


@given(ANY_ADDRESS)
def test_decision_equals_the_registry_spec(ip: IPAddress) -> None:
    assert (address_problem(ip) is not None) == spec_blocks(ip)


# --- host names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("a" * 64 + ".example", "a label of 64 characters, over 63"),
        (".".join(["a" * 63] * 4), "255 characters long, over 253"),
        ("a..b", "an empty label"),
        (".a", "an empty label"),
        ("a\x00b", r"character '\x00' is not allowed"),
        ("\ud800", r"character '\ud800' is not allowed"),
        ("a%20b", "character '%' is not allowed"),
        ("a b", "character ' ' is not allowed"),
        ("ß.de", r"character '\xdf' is not allowed"),  # names arrive IDNA-encoded
    ],
)
def test_names_no_resolver_accepts(host: str, problem: str) -> None:
    found = host_name_problem(host)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    "host",
    ["example.com", "a" * 63 + ".example", ".".join(["a" * 63] * 3 + ["a" * 61]), "xn--zca.de",
     "my_bucket.cdn-1.example", "127.0.0.1"],
)  # fmt: skip
def test_ordinary_names_pass(host: str) -> None:
    assert host_name_problem(host) is None


@given(st.text(max_size=300))
def test_names_that_pass_are_accepted_by_the_resolver_codec(host: str) -> None:
    # socket.getaddrinfo encodes str hosts with the `idna` codec before calling C.
    if host_name_problem(host) is None:
        assert host.encode("idna").decode("ascii") == host
