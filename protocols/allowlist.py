"""Source-address allow-lists: which peers may talk to a listener at all (SIP and MRCP).

An allow-list is a set of CIDR networks, written as a comma-separated list (``10.0.0.0/8, 192.0.2.7,
2001:db8::/32``); a bare address is a network of one host. IPv4-mapped IPv6 addresses (``::ffff:10.1.2.3``,
what a dual-stack socket reports for an IPv4 peer) are matched as the IPv4 address they carry. A host that
is not an IP address at all (a Unix socket's empty name) is never allowed.

Pure: no sockets here; transports ask :meth:`NetworkAllowList.allows` with the peer's address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["AllowListError", "NetworkAllowList"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowListError(ValueError):
    """An allow-list's text is not a list of CIDR networks; the message names the bad entry."""


@dataclass(frozen=True, slots=True)
class NetworkAllowList:
    """The networks whose hosts are allowed.

    Attributes:
        networks: the allowed networks (never empty: no list means "anyone", which is the absence of one).
    """

    networks: tuple[IPNetwork, ...]

    def __post_init__(self) -> None:
        if not self.networks:
            raise AllowListError("an allow-list needs at least one network")

    @classmethod
    def parse(cls, text: str) -> NetworkAllowList:
        """Parse ``"10.0.0.0/8, 192.0.2.7"``.

        Raises:
            AllowListError: an entry is not an address or a network (host bits set count as an error:
                ``10.0.0.1/8`` is most likely a typo for ``10.0.0.0/8`` or ``10.0.0.1/32``), or the list
                is empty.
        """
        networks: list[IPNetwork] = []
        for entry in text.split(","):
            item = entry.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=True))
            except ValueError as exc:
                raise AllowListError(f"{item!r} is not a CIDR network or IP address ({exc})") from None
        if not networks:
            raise AllowListError("expected at least one CIDR network, got none")
        return cls(tuple(networks))

    def allows(self, host: str) -> bool:
        """Whether a peer at ``host`` (an IP address as a socket reports it) is on the list."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == net.version and address in net for net in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(net) for net in self.networks)
