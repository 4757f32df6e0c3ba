"""Which addresses and host names the fetch guard refuses, from tables written out here.

The special-purpose ranges come from the IANA IPv4 and IPv6 Special-Purpose Address Registries
(RFC 6890 and the RFCs that added entries since), plus multicast (RFC 5771, RFC 4291) and, for
IPv6, everything outside 2000::/3, the only block the IANA IPv6 Address Space registry gives to
global unicast (the rest is reserved by the IETF, unique-local, link-local or multicast). They
are spelled out rather than taken from `ipaddress`'s `is_global`, `is_private` and friends,
because those tables change between Python patch releases (3.11.7 counts 192.0.0.0/24 as
global), and a guard should not change with the interpreter.

Decisions:

* Every registry entry is refused, including those the registry marks globally reachable
  (PCP and TURN anycast, AS112, AMT, ORCHIDv2, drone entity tags): they are anycast service
  endpoints or identifiers, never a place an image is served from.
* Addresses that carry an IPv4 address are judged by that address: IPv4-mapped (::ffff:0:0/96),
  the NAT64 well-known prefix (64:ff9b::/96) and 6to4 (2002::/16). Their packets end at the
  embedded address, so a public one passes and a private one is refused. The local-use NAT64
  prefix (64:ff9b:1::/48) may embed its IPv4 address at several prefix lengths and is refused.
* Teredo (2001::/32) is refused with the rest of 2001::/23: a tunnel endpoint, not a server.

Host names are checked for the syntax every resolver accepts (labels of 1-63 letters, digits,
`-` or `_`, at most 253 characters) so that a name no resolver accepts is refused with a plain
reason instead of surfacing as an `idna` codec error from getaddrinfo.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_OUTSIDE_GLOBAL_UNICAST = "reserved by the IETF, outside global unicast 2000::/3"
_ADDRESS_SPACE = "IANA IPv6 address space"


@dataclass(frozen=True, slots=True)
class SpecialRange:
    """One refused range: its network, what it is and where it is defined."""

    network: IPNetwork
    name: str
    source: str

    @property
    def reason(self) -> str:
        return f"{self.name} ({self.network}, {self.source})"


def _rows(*rows: tuple[str, str, str]) -> tuple[SpecialRange, ...]:
    return tuple(SpecialRange(ip_network(cidr), name, source) for cidr, name, source in rows)


SPECIAL_RANGES: tuple[SpecialRange, ...] = _rows(
    # IPv4 Special-Purpose Address Registry
    ("0.0.0.0/8", '"this network"', "RFC 791"),
    ("0.0.0.0/32", '"this host on this network"', "RFC 1122"),
    ("10.0.0.0/8", "private-use", "RFC 1918"),
    ("100.64.0.0/10", "shared address space, carrier-grade NAT", "RFC 6598"),
    ("127.0.0.0/8", "loopback", "RFC 1122"),
    ("169.254.0.0/16", "link-local", "RFC 3927"),
    ("172.16.0.0/12", "private-use", "RFC 1918"),
    ("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    ("192.0.0.0/29", "IPv4 service continuity prefix", "RFC 7335"),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600"),
    ("192.0.0.9/32", "Port Control Protocol anycast", "RFC 7723"),
    ("192.0.0.10/32", "TURN anycast", "RFC 8155"),
    ("192.0.0.170/32", "NAT64/DNS64 discovery", "RFC 8880"),
    ("192.0.0.171/32", "NAT64/DNS64 discovery", "RFC 8880"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535"),
    ("192.52.193.0/24", "AMT", "RFC 7450"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
    ("192.168.0.0/16", "private-use", "RFC 1918"),
    ("192.175.48.0/24", "direct delegation AS112 service", "RFC 7534"),
    ("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    ("240.0.0.0/4", "reserved", "RFC 1112"),
    ("255.255.255.255/32", "limited broadcast", "RFC 919"),
    # IPv4 multicast (IANA IPv4 Multicast Address Space Registry)
    ("224.0.0.0/4", "multicast", "RFC 5771"),
    # IPv6 Special-Purpose Address Registry (less the embedding prefixes, see EMBEDDING_PREFIXES)
    ("::/128", "unspecified", "RFC 4291"),
    ("::1/128", "loopback", "RFC 4291"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation", "RFC 8215"),
    ("100::/64", "discard-only", "RFC 6666"),
    ("2001::/23", "IETF protocol assignments", "RFC 2928"),
    ("2001::/32", "Teredo", "RFC 4380"),
    ("2001:1::1/128", "Port Control Protocol anycast", "RFC 7723"),
    ("2001:1::2/128", "TURN anycast", "RFC 8155"),
    ("2001:1::3/128", "DNS-SD service registration anycast", "RFC 9665"),
    ("2001:2::/48", "benchmarking", "RFC 5180"),
    ("2001:3::/32", "AMT", "RFC 7450"),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535"),
    ("2001:10::/28", "deprecated ORCHID", "RFC 4843"),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343"),
    ("2001:30::/28", "drone remote ID entity tags", "RFC 9374"),
    ("2001:db8::/32", "documentation", "RFC 3849"),
    ("2620:4f:8000::/48", "direct delegation AS112 service", "RFC 7534"),
    ("3fff::/20", "documentation", "RFC 9637"),
    ("5f00::/16", "segment routing (SRv6) SIDs", "RFC 9602"),
    ("fc00::/7", "unique-local", "RFC 4193"),
    ("fe80::/10", "link-local", "RFC 4291"),
    ("fec0::/10", "deprecated site-local", "RFC 3879"),
    ("ff00::/8", "multicast", "RFC 4291"),
    # IPv6 Address Space registry: everything but 2000::/3
    ("::/3", _OUTSIDE_GLOBAL_UNICAST, _ADDRESS_SPACE),
    ("4000::/2", _OUTSIDE_GLOBAL_UNICAST, _ADDRESS_SPACE),
    ("8000::/1", _OUTSIDE_GLOBAL_UNICAST, _ADDRESS_SPACE),
)


@dataclass(frozen=True, slots=True)
class EmbeddingPrefix:
    """An IPv6 prefix whose addresses carry an IPv4 address; `extract` reads it from the int."""

    network: IPv6Network
    name: str
    source: str
    extract: Callable[[int], int]


def _low_32(value: int) -> int:
    return value & 0xFFFFFFFF


def _sixtofour(value: int) -> int:
    return (value >> 80) & 0xFFFFFFFF  # 2002:AABB:CCDD::/48 carries AA.BB.CC.DD


EMBEDDING_PREFIXES: tuple[EmbeddingPrefix, ...] = (
    EmbeddingPrefix(IPv6Network("::ffff:0:0/96"), "IPv4-mapped", "RFC 4291", _low_32),
    EmbeddingPrefix(IPv6Network("64:ff9b::/96"), "NAT64", "RFC 6052", _low_32),
    EmbeddingPrefix(IPv6Network("2002::/16"), "6to4", "RFC 3056", _sixtofour),
)

# Most specific first, so the reason names the narrowest entry (192.0.0.9, not 192.0.0.0/24).
_BY_SPECIFICITY = sorted(SPECIAL_RANGES, key=lambda r: r.network.prefixlen, reverse=True)


def special_range(ip: IPAddress) -> SpecialRange | None:
    """The most specific table entry holding `ip`, or None."""
    return next((r for r in _BY_SPECIFICITY if ip in r.network), None)


def embedded_ipv4(ip: IPv6Address) -> tuple[EmbeddingPrefix, IPv4Address] | None:
    """The prefix and IPv4 address an IPv4-mapped, NAT64 or 6to4 address carries, if any."""
    for prefix in EMBEDDING_PREFIXES:
        if ip in prefix.network:
            return prefix, IPv4Address(prefix.extract(int(ip)))
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address (the table entry, named), or None."""
    if isinstance(ip, IPv6Address):
        found = embedded_ipv4(ip)
        if found is not None:
            prefix, inner = found
            problem = address_problem(inner)
            if problem is None:
                return None  # the packets go to the public IPv4 address it carries
            return f"the {prefix.name} form of {inner}, which is {problem}"
    row = special_range(ip)
    return None if row is None else row.reason


_MAX_NAME = 253
_MAX_LABEL = 63
_LABEL_CHARS = re.compile(r"[a-z0-9_-]+")


def host_name_problem(host: str) -> str | None:
    """Why no resolver accepts the (lower-cased, dot-stripped) name `host`, or None."""
    if len(host) > _MAX_NAME:
        return f"{len(host)} characters long, over {_MAX_NAME}"
    for label in host.split("."):
        if not label:
            return "an empty label"
        if len(label) > _MAX_LABEL:
            return f"a label of {len(label)} characters, over {_MAX_LABEL}"
        if not _LABEL_CHARS.fullmatch(label):
            bad = next(c for c in label if not _LABEL_CHARS.fullmatch(c))
            return f"character {bad!a} is not allowed in host names"
    return None
