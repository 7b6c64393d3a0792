"""Which k miners run a redundant task: as independent as the pool allows.

Agreement between miners of one operator, or of one kind of machine, proves
less than agreement between strangers: one operator may run one cheat on all
its miners, and one build or device may share one numeric quirk. So the
choice prefers distinct operators first, then distinct tiers, and falls back
to repeats only when there are not enough of either.

An operator is what a miner declares (``inferswarm miner --operator NAME``).
A miner that declares none counts as its own operator: a declaration can only
group miners, never make them look more independent than they say they are.

Declarations cost nothing, so one operator could pose as many (a Sybil). The
network a miner connects from is harder to multiply: miners that connect from
one network (by default one IPv4 address, or one IPv6 /64, what one subscriber
gets) count as one operator too. Groups join transitively: miners that share
an operator or a network with each other are one group. Loopback addresses
group nothing: those miners run on the router's own machine (local tests,
``inferswarm up``), which no stranger can connect from, and behind a local
proxy that does not forward the client's address every miner would look alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from inferswarm.protocol import MinerId

DEFAULT_PREFIX_V4 = 32
DEFAULT_PREFIX_V6 = 64


@dataclass(frozen=True)
class Candidate:
    miner_id: MinerId
    operator: str
    """As declared; empty when the miner declared none."""
    tier: int
    network: str = ""
    """Where it connects from (``network_of``); empty when that groups nothing."""

    @property
    def operator_key(self) -> str:
        return self.operator or f"miner:{self.miner_id}"


def network_of(
    address: str, prefix_v4: int = DEFAULT_PREFIX_V4, prefix_v6: int = DEFAULT_PREFIX_V6
) -> str:
    """The network of a miner's IP address, ``'203.0.113.0/24'`` for a /24;
    empty for loopback and for what is not an IP address (nothing to group by)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    if ip.is_loopback:
        return ""
    prefix = prefix_v4 if ip.version == 4 else prefix_v6
    return str(ipaddress.ip_network((ip, prefix), strict=False))


def operator_groups(candidates: Sequence[Candidate]) -> list[str]:
    """A key per candidate, equal for candidates linked by a shared operator
    or network, directly or through others: each group counts as one operator."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for c in candidates:
        if c.network:
            parent[root(f"net:{c.network}")] = root(c.operator_key)
    return [root(c.operator_key) for c in candidates]


def choose_diverse(candidates: Sequence[Candidate], k: int) -> list[MinerId]:
    """Up to ``k`` miners, ``candidates`` being in order of preference: each
    pick is the most preferred one that adds a new operator and a new tier,
    else a new operator, else a new tier, else the most preferred left.
    Operators are the groups of ``operator_groups``."""
    group = dict(zip((c.miner_id for c in candidates), operator_groups(candidates), strict=True))
    chosen: list[Candidate] = []
    left = list(candidates)
    while left and len(chosen) < k:
        operators = {group[c.miner_id] for c in chosen}
        tiers = {c.tier for c in chosen}
        best = max(
            range(len(left)),
            key=lambda i: (
                group[left[i].miner_id] not in operators,
                left[i].tier not in tiers,
                -i,
            ),
        )
        chosen.append(left.pop(best))
    return [c.miner_id for c in chosen]


def checkers_to_avoid(candidates: Sequence[Candidate], checked: MinerId) -> frozenset[MinerId]:
    """Who must not check ``checked``'s work: every candidate of its group (a
    Sybil's miners would vouch for each other), unless that leaves nobody to
    check it; then only the miner itself. ``candidates`` are the miners able to
    check it, the checked miner among them."""
    groups = dict(zip((c.miner_id for c in candidates), operator_groups(candidates), strict=True))
    if checked not in groups:
        return frozenset({checked})
    group = frozenset(m for m, g in groups.items() if g == groups[checked])
    return group if len(group) < len(groups) else frozenset({checked})
