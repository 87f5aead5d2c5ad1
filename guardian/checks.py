# Checks for `guardian check`: a valid config can still lock the operator out or be weak against
# scans or captured packets. These pure functions read a Config (and the SSH_CLIENT value and the
# time, passed in by the caller; config_warnings reads the clock only when not given one) and
# return sentences for a human; they never fail and never decide anything by themselves.
from __future__ import annotations

import time

from guardian.addresses import IPAddress, in_any, parse_address
from guardian.config import (
    SPA_NO_HMAC,
    Config,
    Door,
    Guard,
    SpaStanza,
    door_window,
    format_duration,
)
from guardian.configfile import PASSPHRASE_FORMS, render_expires, spa_key_sources
from guardian.events import SYN

LONG_TIMEOUT = 60.0  # seconds from first to last knock; knock clients need a few seconds
LONG_WINDOW = 600.0  # seconds a completed knock waits for a first connection
MIN_STEPS = 3  # fewer knocks than this are found quickly by scanning
MIN_SPA_KEY = 16  # bytes; `guardian keygen` (like `fwknop --key-gen`) makes 32
LEGACY_KEY = 16  # bytes of key that legacy mode uses (padded with '0' or cut to this)


def lockout_warnings(config: Config, ssh_client: str | None) -> list[str]:
    """Ways this config could shut the operator out, judged from SSH_CLIENT ("ADDR PORT LPORT").

    Rules, in order:
    - no trusted network, no door and no SPA stanza: nobody can open a new connection to a
      guarded port (said whatever SSH_CLIENT is);
    - SSH_CLIENT missing or empty (not run over ssh): nothing more can be said;
    - SSH_CLIENT not understood: said, since the check could not be made;
    - the operator connects over loopback: no warning (the gate accepts `iif lo` first);
    - LPORT (the server port this session uses) is not guarded: said, since the guardian leaves
      that port open to everyone, which is usually a forgotten guard.ports entry;
    - LPORT is guarded and ADDR is not trusted: with no door and no SPA stanza, the operator
      cannot come back once this session ends (established sessions go on); otherwise
      reconnecting needs a knock or an SPA packet first.
    Each item is one sentence, meant to be printed after "warning: "."""
    warnings: list[str] = []
    guard = config.guard
    ports = ", ".join(str(p) for p in guard.ports)
    if not guard.trusted and not config.doors and not config.spa.enabled:
        warnings.append(
            f"guard.trusted is empty and there is no [[door]] or [[spa.stanza]]: nobody can open "
            f"a new connection to the guarded port(s) {ports}"
        )
    if ssh_client is None or not ssh_client.strip():
        return warnings
    parsed = parse_ssh_client(ssh_client)
    if parsed is None:
        warnings.append(
            f'SSH_CLIENT={ssh_client!r} is not "ADDRESS PORT LOCALPORT": cannot tell whether '
            "this config would lock you out"
        )
        return warnings
    address, local_port = parsed
    if address.is_loopback:
        return warnings
    if local_port not in guard.ports:
        warnings.append(
            f"this session uses port {local_port}, which is not guarded (guard.ports = [{ports}]): "
            f"it stays open to everyone; if sshd listens there, add {local_port} to guard.ports"
        )
        return warnings
    if in_any(address, guard.trusted):
        return warnings
    if not config.doors and not config.spa.enabled:
        warnings.append(
            f"your address {address} is not in guard.trusted and there is no [[door]] or "
            f"[[spa.stanza]]: this session goes on, but once it ends you cannot connect to port "
            f"{local_port} again; add {address} (or its network) to guard.trusted"
        )
        return warnings
    ways = []
    if config.doors:
        ways.append(f"knock first (door: {', '.join(door.name for door in config.doors)})")
    if config.spa.enabled:
        stanzas = ", ".join(stanza.name for stanza in config.spa.stanzas)
        ways.append(f"send an SPA packet first (stanza: {stanzas})")
    warnings.append(
        f"your address {address} is not in guard.trusted: this session goes on, but to "
        f"connect to port {local_port} again you must {' or '.join(ways)}"
    )
    return warnings


def parse_ssh_client(value: str) -> tuple[IPAddress, int] | None:
    """ "192.0.2.7 51234 22" -> (address, 22); None when it does not have that shape."""
    fields = value.split()
    if len(fields) != 3:
        return None
    try:
        address = parse_address(fields[0].split("%", 1)[0])  # drop an IPv6 zone: fe80::1%eth0
        local_port = int(fields[2])
    except ValueError:
        return None
    if not 1 <= local_port <= 65535:
        return None
    return address, local_port


def config_warnings(config: Config, now: float | None = None) -> list[str]:
    """Settings that are valid but risky or surprising, one sentence each (for `guardian check`).

    - answer = "drop": guarded ports stay silent while unused ports answer with a reset, so a scan
      can tell that something is guarded;
    - a trusted network of everything (/0): the guard never closes for that family;
    - a window over LONG_WINDOW: the port stays open long after a knock;
    - per door: fewer than MIN_STEPS steps; no decoys at all, or decoy_band 0 (scans that hit the
      knock ports in order can complete the sequence, knock#71); a timeout over LONG_TIMEOUT;
      the same step twice in a row (indistinguishable from a retransmission); tcp_flags that a
      plain SYN, which knock clients send, does not satisfy; open_to = "everyone" (always: it
      opens the guarded ports to every address, loud by design), and a window over LONG_WINDOW
      for such a door;
    - [[hook]] commands that are not absolute paths (they are looked up in the daemon's PATH);
    - per SPA stanza, what spa_warnings says (judged at `now`, the current time if None)."""
    warnings: list[str] = []
    if config.guard.answer == "drop":
        warnings.append(
            'answer = "drop": guarded ports will not reply, while ports nothing listens on answer '
            'with a reset, so a scan can tell a firewall guards them; "reset" looks like a closed '
            "port"
        )
    for network in config.guard.trusted:
        if network.prefixlen == 0:
            warnings.append(
                f"guard.trusted contains {network}: every IPv{network.version} address is "
                "trusted, so the guard never closes for them"
            )
    if config.access.window > LONG_WINDOW:
        warnings.append(
            f"access.window is {config.access.window:g}s: a completed knock keeps the port open "
            "that long for anyone at that address; a first connection usually follows in seconds"
        )
    for door in config.doors:
        warnings.extend(_door_warnings(door))
        if door.open_to == "everyone":
            warnings.extend(_everyone_warnings(door, door_window(door, config.access)))
    for index, hook in enumerate(config.hooks, 1):
        if not hook.run[0].startswith("/"):
            warnings.append(
                f"hook[{index}] runs {hook.run[0]!r}, not an absolute path: it is looked up in "
                "the daemon's PATH"
            )
    warnings.extend(spa_warnings(config, time.time() if now is None else now))
    return warnings


def spa_warnings(config: Config, now: float) -> list[str]:
    """Valid [[spa.stanza]] settings that are weak or do nothing, one sentence each:

    - hmac = "none": no authentication before decryption (and fwknopd replayable);
    - encryption_mode = "legacy": the pre-2.5 format, at most 16 bytes of key;
    - a passphrase key (key, key_file): one MD5 round from passphrase to AES key;
      any key shorter than MIN_SPA_KEY bytes, and an HMAC key shorter than that;
    - require_source_address = false with source ANY: whoever delivers a captured packet first
      gets access for their own address;
    - expired stanzas (at `now`);
    - open_ports entries that are not guarded TCP ports: such requests are always refused."""
    warnings: list[str] = []
    for stanza in config.spa.stanzas:
        warnings.extend(_spa_crypto_warnings(stanza))
        warnings.extend(_spa_policy_warnings(stanza, config.guard, now))
    return warnings


def _spa_crypto_warnings(stanza: SpaStanza) -> list[str]:
    name = f"spa stanza {stanza.name!r}"
    warnings: list[str] = []
    if stanza.hmac == SPA_NO_HMAC:
        warnings.append(
            f'{name} has hmac = "none": packets are not authenticated before decryption (every '
            "garbage packet costs a decryption, and only an unkeyed digest inside the "
            "ciphertext protects its content); fwknopd even accepts a bit-flipped copy of a "
            "captured packet in this mode (ssh-guardian's replay cache does not); add an HMAC "
            'key (`guardian keygen`) and set hmac = "sha256"'
        )
    if stanza.legacy:
        warnings.append(
            f'{name} has encryption_mode = "legacy" (fwknop before 2.5): the key is padded with '
            f"'0' or cut to {LEGACY_KEY} bytes, so at most {LEGACY_KEY} bytes of it count; "
            'upgrade the clients and use "cbc"'
        )
        if stanza.hmac_key is not None:
            warnings.append(
                f"{name} combines legacy mode with an HMAC: the fwknop client refuses that "
                '("Legacy encryption mode is incompatible with HMAC usage"), so only '
                "`guardian knock --spa` can open it"
            )
    key_source, _ = spa_key_sources(stanza)
    if key_source.form in PASSPHRASE_FORMS:
        warnings.append(
            f"{name} uses a passphrase ({key_source.form}): fwknop turns it into the AES key with "
            "a single MD5 round, so one captured packet lets an attacker test guesses offline at "
            "great speed; use key_base64 (32 random bytes) from `guardian keygen`"
        )
    elif len(stanza.key) < MIN_SPA_KEY:
        warnings.append(
            f"{name} has a {len(stanza.key)}-byte key: short keys can be searched offline from "
            "one captured packet; `guardian keygen` makes 32 random bytes"
        )
    if stanza.hmac_key is not None and len(stanza.hmac_key) < MIN_SPA_KEY:
        warnings.append(
            f"{name} has a {len(stanza.hmac_key)}-byte HMAC key: `guardian keygen` makes 64 "
            "random bytes"
        )
    return warnings


def _spa_policy_warnings(stanza: SpaStanza, guard: Guard, now: float) -> list[str]:
    name = f"spa stanza {stanza.name!r}"
    warnings: list[str] = []
    if not stanza.require_source_address and not stanza.source:
        warnings.append(
            f'{name} accepts packets from ANY source that ask for 0.0.0.0 ("the address this '
            'packet comes from"): someone who sees such a packet on its way and delivers it '
            "first (holding back the original) gets access for their own address; the replay "
            "cache only stops a second use of it. With require_source_address = true the "
            "packet must name the address that gets access (fwknop -a ADDRESS or -R); note that "
            "fwknop clients can only name IPv4 addresses, so that rules out SPA over IPv6"
        )
    if stanza.expires is not None and now >= stanza.expires:
        warnings.append(
            f"{name} has expired (expires = {render_expires(stanza.expires)}): it opens nothing; "
            "remove it or move expires"
        )
    guarded = ", ".join(str(port) for port in guard.ports)
    for proto, port in stanza.open_ports:
        if proto != "tcp" or port not in guard.ports:
            warnings.append(
                f"{name} lists {proto}/{port} in open_ports, but it is not a guarded TCP port "
                f"(guard.ports = [{guarded}]): SPA grants open the guarded ports only, so a "
                "packet asking for it is refused"
            )
    return warnings


def _everyone_warnings(door: Door, window: float) -> list[str]:
    warnings = [
        f'DOOR {door.name!r} OPENS TO EVERYONE: open_to = "everyone" opens the guarded ports '
        f"to EVERY address for {format_duration(window)} after a knock from anywhere (bans "
        "still apply; sessions that started go on, the door itself closes at the window's end)"
    ]
    if door.window is None:
        warnings.append(
            f"door {door.name!r} opens to everyone with no window of its own: it uses "
            f"access.window ({format_duration(window)}); set window on the door to bound it"
        )
    if window > LONG_WINDOW:
        warnings.append(
            f"door {door.name!r} opens to everyone for {format_duration(window)}: every "
            "address can reach the guarded ports that long"
        )
    return warnings


def _door_warnings(door: Door) -> list[str]:
    warnings: list[str] = []
    steps = len(door.sequence)
    if steps < MIN_STEPS:
        warnings.append(
            f"door {door.name!r} has {steps} step{'s' if steps > 1 else ''}: a scan finds a short "
            f"sequence quickly; use {MIN_STEPS} or more"
        )
    if not door.decoys:
        warnings.append(
            f"door {door.name!r} has no decoy ports: a scan that hits its knock ports in order "
            "can complete the sequence (knock#71); keep decoy_band above 0"
        )
    elif door.decoy_band == 0:
        warnings.append(
            f"door {door.name!r} has decoy_band = 0: only its explicit decoys stop scans from "
            "walking the sequence"
        )
    if door.timeout > LONG_TIMEOUT:
        warnings.append(
            f"door {door.name!r} has a timeout of {door.timeout:g}s: a slow scan has that long "
            "to complete the sequence; knock clients need a few seconds"
        )
    for before, after in zip(door.sequence, door.sequence[1:], strict=False):
        if before == after:
            warnings.append(
                f"door {door.name!r} knocks {after} twice in a row: a retransmitted knock and a "
                "deliberate repeat look the same"
            )
            break
    uses_tcp = any(step.proto == "tcp" for step in (*door.sequence, *door.close))
    if uses_tcp and not door.tcp_flags.matches(SYN):
        warnings.append(
            f"door {door.name!r} has tcp_flags = {str(door.tcp_flags)!r}: the plain SYN packets "
            "that knock clients send (knock, guardian knock) do not count as knocks"
        )
    return warnings
