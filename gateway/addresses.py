"""Where a call comes from: the peer's address, believed proxies' `X-Forwarded-For`, and IPv6 grouping.

One answer for everything that keys on a caller's address: a keyless
caller's public principal (its client address), the per-address rate limit,
and the gateway's per-caller cap on calls in flight. IPv6 callers are grouped
per /64, the block one subscriber is usually given, so one machine cannot
spread over addresses to escape a limit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from avgate.kernel.principal import Principal, Role, normalise_client_address

FORWARDED_FOR_KEY = "x-forwarded-for"
IPV6_GROUP_PREFIX = 64
ANONYMOUS_SUBJECT = "anonymous"
"""The subject of a keyless caller's public principal (its address is the client address)."""


def peer_address(peer: str) -> str | None:
    """'ipv4:1.2.3.4:5678' or 'ipv6:[::1]:5678' → the IP."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return normalise_client_address(rest.rsplit(":", 1)[0])
    if kind == "ipv6":
        return normalise_client_address(rest.rsplit(":", 1)[0].strip("[]"))
    return None


def address_group(address: str) -> str:
    """What one bucket limits: an IPv4 address, or the /64 an IPv6 address is in."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_GROUP_PREFIX), strict=False))
    return str(ip)


class ClientAddresses:
    """The address a keyless call comes from, believing `X-Forwarded-For` only from trusted proxies."""

    def __init__(self, trusted_proxies: Sequence[str] = ()):
        self._trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies]

    def is_trusted(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in self._trusted)

    def of(self, peer: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """The peer's address, or the last `X-Forwarded-For` hop when the peer is a trusted proxy
        (a malformed hop leaves the proxy's own address, so the call is still limited)."""
        address = peer_address(peer)
        if address is None or not self._trusted or not self.is_trusted(address):
            return address
        hops = [
            hop.strip()
            for key, value in metadata or ()
            if key == FORWARDED_FOR_KEY
            for hop in (value.decode() if isinstance(value, bytes) else value).split(",")
        ]
        forwarded = normalise_client_address(hops[-1]) if hops and hops[-1] else None
        return forwarded or address


def caller_key(principal: Principal) -> str:
    """Whom a per-caller limit counts: the API key, or for a keyless caller its address group."""
    if principal.role is Role.PUBLIC and principal.subject == ANONYMOUS_SUBJECT:  # key ids never read so
        address = principal.client_address
        return f"address:{address_group(address) if address else 'unknown'}"
    return f"key:{principal.subject}"
