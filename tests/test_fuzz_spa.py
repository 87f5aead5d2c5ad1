# Fuzz: the SPA decoder (guardian/parsers/spa.py decode), fed whatever arrives on the SPA port.
# Its contract: SpaError is the only exception. decode() wraps _decode in a catch-all that turns
# any other exception into SpaError("format", "undecodable packet (TypeName)") — so a bug there
# would pass a naive "only SpaError" check. These properties call that catch-all a failure: every
# refusal must come from a named check, with a reason of the documented set.
#
# Three depths: random payloads (refused at the wire checks, cheaply); arbitrary plaintexts sealed
# with the right key by guardian/spa_packet.py seal() (they pass the HMAC and decryption, so the
# plaintext parser meets garbage fields, digests and field counts); and valid packets from
# encode() with one character changed (the HMAC must refuse every change that alters the
# plaintext; fwknop's known bit-flip variants may pass, but then decode to the same canonical
# replay key). Valid packets decode to exactly what was encoded.
from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from guardian.parsers.spa import (
    DIGEST_NAMES,
    HMAC_TAG_LENGTHS,
    MAX_WIRE_LENGTH,
    MIN_WIRE_LENGTH,
    SpaError,
    SpaKey,
    SpaMessage,
    decode,
)
from guardian.spa_packet import HMAC_KEY_LENGTHS, encode, seal
from tests.test_fuzz_support import assert_fast, counted, fuzz_settings, outcome

REASONS = {"wire", "hmac", "decrypt", "format", "digest", "fields"}
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@st.composite
def _keys(draw: st.DrawFn) -> SpaKey:
    hmac = draw(st.sampled_from([*HMAC_TAG_LENGTHS, "none"]))
    key = draw(st.binary(min_size=1, max_size=32))
    legacy = draw(st.booleans())
    if hmac == "none":
        return SpaKey(key, None, "none", legacy)
    size = HMAC_KEY_LENGTHS[hmac]
    return SpaKey(key, draw(st.binary(min_size=size, max_size=size)), hmac, legacy)


KEYS = _keys()


def check_refusal(payload: bytes, key: SpaKey) -> SpaMessage | SpaError:
    """decode() once: its message, or a SpaError from a named check (never the catch-all)."""
    result = outcome("spa", lambda: decode(payload, key), (SpaError,), limit=0.5)
    assert isinstance(result, SpaMessage | SpaError), result
    if isinstance(result, SpaError):
        assert result.reason in REASONS, result.reason
        assert not str(result).startswith("undecodable packet"), (
            f"an exception inside the decoder was swallowed by its catch-all: {result!r} "
            f"<- {result.__cause__!r}"
        )
    return result


# ---- random payloads ---------------------------------------------------------------------------
_BASE64ISH = st.tuples(st.sampled_from(list(b"89+/")), st.binary(min_size=90, max_size=600)).map(
    lambda t: bytes([t[0], *(_B64[b % 64] for b in t[1])])
)
PAYLOADS = st.one_of(
    _BASE64ISH,
    st.binary(max_size=200),
    st.binary(min_size=MAX_WIRE_LENGTH - 2, max_size=MAX_WIRE_LENGTH + 2),
    _BASE64ISH.map(lambda p: b"U2FsdGVkX1" + p),
)


@fuzz_settings(300)
@given(payload=PAYLOADS, key=KEYS)
@counted("spa_random")
def test_random_payloads_are_refused_by_a_named_check(payload: bytes, key: SpaKey) -> None:
    result = check_refusal(payload, key)
    assert isinstance(result, SpaError)  # a forgery would need the keys


# ---- arbitrary plaintexts, sealed with the right key -------------------------------------------
# A plaintext is "16 digits:field:field:..."; these are the fields' usual shapes and their near
# misses (base64 of a user, of "allow-ip,proto/port", timestamps, versions, types, timeouts).
_USERS_B64 = [b"YWxpY2U", b"cm9vdA", b"", b"=", b"eDo9", b"YS9i", b"a" * 90, b"AAAA"]
_TIMESTAMPS = [b"1700000000", b"0", b"9" * 12, b"9" * 13, b"", b"12a", b"-1"]
_VERSIONS = [b"3.0.0", b"2.0", b"3.0.0.0.0", b"x", b"", b"999.999.999"]
_TYPES = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"", b"11", b"a"]
_MESSAGES = [
    b"MTkyLjAuMi4xLHRjcC8yMg", b"MC4wLjAuMCx0Y3AvMjI", b"MC4wLjAuMCxjbWQ", b"MC4wLjAuMA",
    b"MC4wLjAuMCx0Y3AvOTk5OTk", b"MDEuMi4zLjQsdGNwLzIy", b"MS4yLjMuNCxpY21wLzA", b"LCwsLA",
    b"MC4wLjAuMCx0Y3AvMjIsdWRwLzUz", b"", b"a" * 300, b"AA",
]  # fmt: skip
_EXTRA = [b"30", b"65536", b"65537", b"aG9zdCwyMg", b"aG9zdCw5OTk5OQ", b"", b"x", b"99999"]


@st.composite
def _structured(draw: st.DrawFn) -> bytes:
    """RANDOM:USER:TS:VERSION:TYPE:MESSAGE[:NAT][:TIMEOUT], each field usually well formed."""
    fields = [
        draw(st.sampled_from([b"1234567890123456"] * 6 + [b"123456789012345x", b"1"])),
        draw(st.sampled_from(_USERS_B64[:1] * 6 + _USERS_B64)),
        draw(st.sampled_from(_TIMESTAMPS[:1] * 6 + _TIMESTAMPS)),
        draw(st.sampled_from(_VERSIONS[:1] * 6 + _VERSIONS)),
        draw(st.sampled_from([b"1", b"3"] * 3 + _TYPES)),
        draw(st.sampled_from(_MESSAGES[:2] * 4 + _MESSAGES)),
        *draw(st.lists(st.sampled_from(_EXTRA), max_size=3)),
    ]
    return b":".join(fields)


_STRUCTURED = _structured()
PLAINTEXTS = st.sampled_from([True] * 4 + [False]).flatmap(
    lambda structured: _STRUCTURED if structured else st.binary(max_size=120)
)


@fuzz_settings(300)
@given(
    plaintext=PLAINTEXTS,
    key=KEYS,
    digest=st.sampled_from(DIGEST_NAMES),
    salt=st.binary(min_size=8, max_size=8),
)
@counted("spa_plaintext")
def test_any_sealed_plaintext_decodes_or_is_refused_by_a_named_check(
    plaintext: bytes, key: SpaKey, digest: str, salt: bytes
) -> None:
    payload = seal(key, plaintext, digest=digest, salt=salt)
    result = check_refusal(payload, key)
    if isinstance(result, SpaError):
        tag = HMAC_TAG_LENGTHS.get(key.hmac, 0)
        sound_size = MIN_WIRE_LENGTH + tag <= len(payload) <= MAX_WIRE_LENGTH
        assert result.reason not in ("hmac", "wire") or not sound_size, result  # sealed right
        return
    assert len(result.username) <= 64 and len(result.canonical) == 32
    assert all(
        proto in ("tcp", "udp", "icmp") and 0 <= port <= 65535 for proto, port in result.access
    )


# ---- valid packets, then one character changed -----------------------------------------------
ACCESS = st.lists(
    st.tuples(st.sampled_from(["tcp", "udp", "icmp"]), st.integers(0, 65535)),
    min_size=1,
    max_size=4,
)
USERS = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"/\\[]:;|=,+*?<>'
    ),
    min_size=1,
    max_size=40,
).filter(lambda u: len(base64.b64encode(u.encode()).rstrip(b"=")) <= 64)


@fuzz_settings(300)
@given(
    key=KEYS,
    user=USERS,
    allow_ip=st.one_of(st.ip_addresses(v=4).map(str), st.just("0.0.0.0")),
    access=ACCESS,
    timestamp=st.integers(0, 10**12 - 1),
    timeout=st.one_of(st.none(), st.integers(0, 65536)),
    digest=st.sampled_from(DIGEST_NAMES),
    change=st.one_of(st.none(), st.tuples(st.integers(0, 2000), st.sampled_from(list(_B64)))),
)
@counted("spa_valid")
def test_valid_packets_decode_exactly_and_any_change_is_refused_or_the_same_packet(
    key: SpaKey,
    user: str,
    allow_ip: str,
    access: list[tuple[str, int]],
    timestamp: int,
    timeout: int | None,
    digest: str,
    change: tuple[int, int] | None,
) -> None:
    payload = encode(
        key, username=user, allow_ip=allow_ip, access=access, timestamp=timestamp,
        message_type=1 if timeout is None else 3, client_timeout=timeout, digest=digest,
    )  # fmt: skip
    original = check_refusal(payload, key)
    assert isinstance(original, SpaMessage), original
    assert (original.username, original.allow_ip, original.timestamp) == (user, allow_ip, timestamp)
    assert original.access == tuple(access) and original.client_timeout == timeout
    if change is None:
        return
    at, char = change
    at %= len(payload)
    changed = payload[:at] + bytes([char]) + payload[at + 1 :]
    result = check_refusal(changed, key)
    if isinstance(result, SpaMessage):
        # Only fwknop's bit-flip variants (unused low bits of a last base64 character) pass, and
        # they carry the same plaintext: the replay cache sees one packet.
        assert result.canonical == original.canonical, (payload, changed)
    elif key.hmac_key is not None and changed != payload:
        assert result.reason in ("wire", "hmac"), result  # refused before any decryption


def test_the_largest_payload_is_refused_fast() -> None:
    key = SpaKey(b"k" * 32, b"h" * 64, "sha512")
    payload = b"+" + b"A" * (MAX_WIRE_LENGTH - 1)
    result = assert_fast(lambda: check_refusal(payload, key), 0.05, "1500-byte SPA payload")
    assert isinstance(result, SpaError) and result.reason == "hmac"
