# Actions: what the engine asks the world to do. Frozen dataclasses, data only; the effectors
# (nftables, logging) execute them. The engine returns them from feed()/handle_timer() and never
# performs them itself.
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from guardian.addresses import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class OpenGrant:
    """Allow the source through the gate; the kernel drops the element after `timeout` seconds."""

    source: IPAddress
    timeout: float
    door: str


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """Reset an existing grant's kernel timeout to `timeout` seconds from now."""

    source: IPAddress
    timeout: float


@dataclass(frozen=True, slots=True)
class RevokeGrant:
    """Remove the source's grant now (idempotent: the kernel may have expired it already)."""

    source: IPAddress
    reason: str


@dataclass(frozen=True, slots=True)
class Ban:
    """Drop everything from `network` (a /32, /128, or the configured IPv6 prefix) for `timeout`
    seconds (kernel timeout; None = permanent). `offence` is the how-many-th ban this is."""

    network: IPNetwork
    timeout: float | None
    reason: str
    offence: int


@dataclass(frozen=True, slots=True)
class Unban:
    """Lift the ban on `network` now (idempotent)."""

    network: IPNetwork
    reason: str


@dataclass(frozen=True, slots=True)
class RecordOffence:
    """Persist a source's offence history (the state store executes this; survives restarts)."""

    network: IPNetwork
    offences: int
    last_ban_wall: float


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth telling the operator (log line, event stream). Changes nothing.

    kind is a stable machine-readable word: knock_completed, knock_failed, grant_opened,
    grant_closed, ..."""

    kind: str
    source: IPAddress | None
    door: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class OpenEveryone:
    """Open the guarded ports to every source for `timeout` seconds (an everyone door); the
    kernel closes them by itself then. Never sent again while it is open: not extended."""

    door: str
    timeout: float


@dataclass(frozen=True, slots=True)
class CloseEveryone:
    """Close what OpenEveryone opened, now (idempotent: the kernel may have timed it out)."""

    door: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordSpaReplay:
    """Persist an accepted SPA packet's replay digest until `expires_wall` (epoch seconds), so a
    restart does not forget it (the state store executes this)."""

    digest: bytes
    expires_wall: float


Action: TypeAlias = (
    OpenGrant
    | RefreshGrant
    | RevokeGrant
    | Ban
    | Unban
    | RecordOffence
    | Notice
    | OpenEveryone
    | CloseEveryone
    | RecordSpaReplay
)
