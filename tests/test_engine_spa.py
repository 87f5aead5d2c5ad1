# The pure engine's SPA policy (engine/spa.py through Engine.feed): an authentic, fresh packet
# within its stanza's policy opens a grant of door "spa:<stanza>" for its allow-IP (0.0.0.0 = the
# packet's source, IPv6 included), which then lives like a knock's; every refusal has its own
# reason; replays are refused by canonical data, across a restart too (SpaReplaysLoaded). Packets
# are built by our encoder (guardian/spa_packet.py); explicit clocks, no sleeping.
from __future__ import annotations

import base64
import dataclasses
import ipaddress
import random

import pytest

from guardian.actions import Action, Notice, OpenGrant, RecordSpaReplay, RevokeGrant
from guardian.addresses import IPAddress
from guardian.config import Access, Config, Guard, Spa, SpaStanza
from guardian.engine import Engine
from guardian.events import BanRequested, SpaReplaysLoaded, SpaSeen
from guardian.parsers.spa import SpaKey, b64
from guardian.spa_packet import encode, seal

KEY = base64.b64decode("Etvos/HBZ1AzjavjxfcCpbiKyDu0ShEHQQKwxI3BJ6g=")
HMAC_KEY = bytes(range(64))
OTHER_KEY = bytes(32)
SRC = ipaddress.ip_address("198.51.100.7")
SRC6 = ipaddress.ip_address("2001:db8::7")
TRUSTED_NET = ipaddress.ip_network("192.0.2.0/24")
WALL = 1_800_000_000.0  # the wall clock at engine time 0
PORT = 62201


def stanza(**changes: object) -> SpaStanza:
    base = SpaStanza(name="alice", key=KEY, hmac_key=HMAC_KEY, hmac="sha256")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def engine(*stanzas: SpaStanza, max_age: float = 120.0) -> Engine:
    spa = Spa(max_age=max_age, stanzas=stanzas or (stanza(),))
    guard = Guard(ports=(22,), trusted=(TRUSTED_NET,))
    return Engine(Config(guard=guard, access=Access(linger=10.0), spa=spa))


def packet(
    key: SpaKey | None = None,
    *,
    at: float = WALL,
    allow_ip: str = "0.0.0.0",
    access: tuple[tuple[str, int], ...] = (("tcp", 22),),
    username: str = "alice",
    message_type: int = 1,
    client_timeout: int | None = None,
) -> bytes:
    return encode(
        key or SpaKey(KEY, HMAC_KEY, "sha256"),
        username=username,
        allow_ip=allow_ip,
        access=access,
        timestamp=int(at),
        message_type=message_type,
        client_timeout=client_timeout,
    )


def feed(e: Engine, payload: bytes, now: float = 0.0, source: IPAddress = SRC) -> list[Action]:
    return e.feed(SpaSeen(source, PORT, payload), now, wall=WALL + now)


def refusal(actions: list[Action]) -> str:
    notices = [a for a in actions if isinstance(a, Notice) and a.kind == "spa_refused"]
    assert len(notices) == 1, actions
    assert not [a for a in actions if isinstance(a, OpenGrant)], actions
    return notices[0].detail.split(":", 1)[0]


def test_an_authentic_packet_opens_a_grant_for_its_source_that_lives_like_a_knocks() -> None:
    e = engine()
    actions = feed(e, packet())
    grants = [a for a in actions if isinstance(a, OpenGrant)]
    assert grants == [OpenGrant(SRC, 30.0, "spa:alice")]
    assert next(a for a in actions if isinstance(a, Notice)).kind == "spa_accepted"
    replays = [a for a in actions if isinstance(a, RecordSpaReplay)]
    assert len(replays) == 1 and replays[0].expires_wall == WALL + 120.0 + 60.0
    # No session within the window: the grant closes by itself at its end.
    assert e.get_timer() == 30.0
    assert any(isinstance(a, RevokeGrant) and a.source == SRC for a in e.handle_timer(30.0))
    snap = e.snapshot(31.0)
    assert snap.counters["spa_accepted"] == 1 and snap.counters["spa_refused"] == 0


def test_replay_is_refused_also_after_a_restart() -> None:
    e = engine()
    payload = packet()
    first = feed(e, payload)
    assert any(isinstance(a, OpenGrant) for a in first)
    assert refusal(feed(e, payload, 1.0)) == "replay"
    # A new engine that loads what the first persisted refuses it too.
    record = next(a for a in first if isinstance(a, RecordSpaReplay))
    again = engine()
    again.feed(SpaReplaysLoaded(((record.digest, record.expires_wall),)), 0.0, wall=WALL + 5)
    assert refusal(feed(again, payload, 5.0)) == "replay"
    assert again.snapshot(5.0).counters["spa_replays_loaded"] == 1
    # Without the loaded digest the same packet would have been accepted.
    fresh = engine()
    assert any(isinstance(a, OpenGrant) for a in feed(fresh, payload, 5.0))


def test_the_bit_flipped_variant_of_a_no_hmac_packet_is_the_same_packet() -> None:
    no_hmac = SpaKey(KEY, None, "none")
    e = engine(stanza(hmac_key=None, hmac="none"))
    payload = packet(no_hmac)
    flipped = _flip_low_bit_of_last_char(payload)
    assert flipped != payload
    assert any(isinstance(a, OpenGrant) for a in feed(e, payload))
    assert refusal(feed(e, flipped, 1.0)) == "replay"


def _flip_low_bit_of_last_char(payload: bytes) -> bytes:
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(payload[-1:])
    # The wire text lost its 10-character prefix; the whole base64 text's length mod 4 (2 or 3:
    # no padding written) says its last character carries 4 or 2 unused low bits.
    assert (len(payload) + 10) % 4 in (2, 3), "the packet length leaves no unused bits"
    return payload[:-1] + alphabet[last ^ 1 : (last ^ 1) + 1]


@pytest.mark.parametrize(
    ("payload_key", "reason"),
    [
        (SpaKey(OTHER_KEY, HMAC_KEY, "sha256"), "not_authentic"),  # wrong Rijndael key
        (SpaKey(KEY, bytes(64), "sha256"), "not_authentic"),  # wrong HMAC key
    ],
)
def test_wrong_keys_are_refused(payload_key: SpaKey, reason: str) -> None:
    actions = feed(engine(), packet(payload_key))
    assert refusal(actions) == reason


def test_wrong_hmac_names_the_stanza_and_the_check() -> None:
    actions = feed(engine(), packet(SpaKey(KEY, bytes(64), "sha256")))
    notice = next(a for a in actions if isinstance(a, Notice))
    assert notice.door == "spa:alice" and "alice: hmac" in notice.detail


@pytest.mark.parametrize(("offset", "reason"), [(-121.0, "too_old"), (121.0, "from_future")])
def test_a_timestamp_121s_off_either_way_is_refused_with_the_skew(
    offset: float, reason: str
) -> None:
    actions = feed(engine(), packet(at=WALL + offset))
    assert refusal(actions) == reason
    notice = next(a for a in actions if isinstance(a, Notice))
    assert "2m1s" in notice.detail or "121s" in notice.detail


def test_within_the_age_window_either_way_is_accepted() -> None:
    for offset in (-119.0, 119.0):
        assert any(isinstance(a, OpenGrant) for a in feed(engine(), packet(at=WALL + offset)))


def test_policy_refusals_each_with_their_own_reason() -> None:
    cases = [
        (engine(), packet(access=(("tcp", 2222),)), "port_not_allowed"),
        (engine(stanza(restrict_ports=(("tcp", 22),))), packet(), "port_not_allowed"),
        (
            engine(stanza(open_ports=(("tcp", 22), ("tcp", 80)))),
            packet(access=(("tcp", 80),)),
            "port_not_guarded",
        ),
        (engine(stanza(require_username="bob")), packet(), "username"),
        (engine(stanza(expires=WALL - 1)), packet(), "expired_stanza"),
        (engine(stanza(require_source_address=True)), packet(), "source_required"),
        (engine(stanza(source=(ipaddress.ip_network("203.0.113.0/24"),))), packet(), "no_stanza"),
        (engine(), b"garbage!", "wire"),
    ]
    for e, payload, reason in cases:
        assert refusal(feed(e, payload)) == reason, reason
        assert e.snapshot(0.0).spa_refusals == {reason: 1}


def test_an_authentic_but_refused_packet_is_still_not_replayable() -> None:
    e = engine(stanza(require_username="bob"))
    payload = packet()
    actions = feed(e, payload)
    assert refusal(actions) == "username"
    assert any(isinstance(a, RecordSpaReplay) for a in actions)
    assert refusal(feed(e, payload, 1.0)) == "replay"


def test_client_timeout_sets_the_window_capped_at_max_timeout() -> None:
    short = feed(engine(), packet(message_type=3, client_timeout=100))
    assert [a for a in short if isinstance(a, OpenGrant)] == [OpenGrant(SRC, 100.0, "spa:alice")]
    long = feed(engine(), packet(message_type=3, client_timeout=5000))
    assert [a for a in long if isinstance(a, OpenGrant)] == [OpenGrant(SRC, 300.0, "spa:alice")]


def test_an_explicit_allow_ip_is_what_gets_access() -> None:
    other = ipaddress.ip_address("203.0.113.9")
    actions = feed(engine(), packet(allow_ip=str(other)))
    assert [a for a in actions if isinstance(a, OpenGrant)] == [OpenGrant(other, 30.0, "spa:alice")]


def test_an_ipv6_packet_with_0000_grants_its_ipv6_source() -> None:
    actions = feed(engine(), packet(), source=SRC6)
    assert [a for a in actions if isinstance(a, OpenGrant)] == [OpenGrant(SRC6, 30.0, "spa:alice")]


def test_banned_sources_are_ignored_and_trusted_ones_need_no_grant() -> None:
    e = engine()
    e.feed(BanRequested(ipaddress.ip_network(f"{SRC}/32"), 600.0), 0.0, wall=WALL)
    assert feed(e, packet()) == []
    assert e.snapshot(0.0).counters["spa_banned"] == 1
    trusted = feed(engine(), packet(), source=ipaddress.ip_address("192.0.2.5"))
    assert not [a for a in trusted if isinstance(a, OpenGrant)]
    assert "trusted" in next(a for a in trusted if isinstance(a, Notice)).detail


def test_the_second_stanza_is_tried_when_the_first_does_not_authenticate() -> None:
    e = engine(stanza(name="bob", key=OTHER_KEY), stanza(name="alice"))
    actions = feed(e, packet())
    assert [a for a in actions if isinstance(a, OpenGrant)] == [OpenGrant(SRC, 30.0, "spa:alice")]


def test_garbage_floods_leave_a_valid_packet_working() -> None:
    rng = random.Random(5)
    e = engine()
    valid = packet(at=WALL + 1)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i in range(3000):
        kind = i % 3
        if kind == 0:
            junk = rng.randbytes(rng.randrange(0, 1600))
        elif kind == 1:
            junk = valid[: rng.randrange(0, len(valid))]
        else:
            junk = bytes(rng.choice(alphabet) for _ in range(rng.randrange(100, 400)))
        assert not [a for a in feed(e, junk, 0.5) if isinstance(a, OpenGrant)]
    assert e.snapshot(0.5).counters["spa_refused"] == 3000
    assert [a for a in feed(e, valid, 1.0) if isinstance(a, OpenGrant)]


@pytest.mark.parametrize(
    ("message_type", "body", "named"),
    [
        (0, b"0.0.0.0,touch /tmp/x", "command (type 0)"),
        (2, b"0.0.0.0,tcp/22:" + b64(b"192.168.1.2,22"), "NAT access (type 2)"),
        (5, b"0.0.0.0,tcp/22:" + b64(b"192.168.1.2,22"), "local NAT access (type 5)"),
    ],
)
def test_command_and_nat_messages_are_refused_by_name(
    message_type: int, body: bytes, named: str
) -> None:
    message, _, nat = body.partition(b":")
    fields = [b"1234567890123456", b64(b"alice"), str(int(WALL)).encode(), b"3.0.0"]
    fields += [str(message_type).encode(), b64(message)]
    if nat:
        fields.append(nat)
    payload = seal(SpaKey(KEY, HMAC_KEY, "sha256"), b":".join(fields))
    actions = feed(engine(), payload)
    assert refusal(actions) == "message_type"
    assert (
        f"{named} messages are not supported"
        in next(a for a in actions if isinstance(a, Notice)).detail
    )
