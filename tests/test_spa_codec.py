# The SPA codec (guardian/parsers/spa.py decoding, guardian/spa_packet.py encoding), pure and fast:
# the spec's real fwknop 2.6.10 test vector, the reason of every refusal, the bit-flip replay
# trick, encode -> decode round trips for every HMAC and digest algorithm and key kind, and
# Hypothesis fuzzing that nothing but SpaError ever escapes. Packets made by the real client and
# accepted by the real server are in test_spa_fwknop_client.py and test_lab_spa_fwknopd.py.
from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.parsers import spa
from guardian.parsers.spa import (
    HMAC_TAG_LENGTHS,
    SpaError,
    SpaKey,
    SpaMessage,
    check_wire,
    decode,
)
from guardian.spa_packet import encode, generate_keys, render_keygen

# -- the spec's test vector (shared/spec/fwknop-spa.md; throwaway keys) ----------------------------
VECTOR_KEY = base64.b64decode("Etvos/HBZ1AzjavjxfcCpbiKyDu0ShEHQQKwxI3BJ6g=")
VECTOR_HMAC_KEY = base64.b64decode(
    "jGtH+on60Qq6Ryl5DeUNXZr6TeWkw0Im/Afs0f1mVIIi2KisY5liI0ghkxLHspl7q87FR8s6LzsSiHl+C+L7FQ=="
)
VECTOR_WIRE = (
    b"/o5tJR/aVfilnYLHPTCM7Kh4MwEL4eKBVu38TH0e9jva2GujTX2SgnB2JsIn8H0V9888b51J/jmEEGld5Btsxt"
    b"wG2c+hq3T4GWuSeMLYtMLiaFjdUPj7HkGQuEjonmaGGVR4yHy5deKFtbGX90UGFOp4c+0sohTnAQbGLbclbk"
    b"p69wZVR+f72Cyr+8KFFdGX9K/iGjT6pnf0"
)
VECTOR_TAG = b"QbGLbclbkp69wZVR+f72Cyr+8KFFdGX9K/iGjT6pnf0"
VECTOR_SALT = bytes.fromhex("e8e6d251fda55f8a")
VECTOR_AES_KEY = bytes.fromhex("f0747f739ed4980d8c2f468404c5d2a9c8071ceecfd9bbaa9818c1ef2a43c591")
VECTOR_IV = bytes.fromhex("a32d33827db0035a985886650e7b4934")
VECTOR_P = b"1765315992137248:cm9vdA:1795243644:3.0.0:1:MTI3LjAuMC4yLHRjcC8yMg"
VECTOR_DIGEST = b"x6/gbyuuj5K1UZPzgp5fZmat6eF5/yqTZ99/xQinNUI"
VECTOR_FWKNOPD_REPLAY_KEY = "tEG5AXIIR4EpQDvj/1X6W1PmFuuh93bQOq9yivrrCQM"

KEY = SpaKey(VECTOR_KEY, VECTOR_HMAC_KEY)
NO_HMAC = SpaKey(VECTOR_KEY, None, "none")
SALT = bytes(range(8))
DIGITS = "1234567890123456"
TS = 1_800_000_000
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(SpaError) as caught:
        call()
    assert str(caught.value)  # every refusal says what happened
    return caught.value.reason


def packet(key: SpaKey = KEY, **overrides: object) -> bytes:
    """A deterministic packet (fixed salt and random digits) unless overridden."""
    fields: dict[str, object] = {
        "username": "alice",
        "allow_ip": "192.0.2.4",
        "access": [("tcp", 22)],
        "timestamp": TS,
        "random_digits": DIGITS,
        "salt": SALT,
    }
    fields.update(overrides)
    return encode(key, **fields)  # type: ignore[arg-type]


def seal(plaintext: bytes, key: SpaKey = NO_HMAC, salt: bytes = SALT) -> bytes:
    """Encrypt an arbitrary plaintext (digest included) the fwknop way: to test the parser."""
    aes_key, iv = spa.derive_key_iv(spa.cipher_key(key), salt)
    pad = 16 - len(plaintext) % 16
    enc = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    blob = b"Salted__" + salt + enc.update(plaintext + bytes((pad,)) * pad) + enc.finalize()
    salted = spa.b64(blob)
    wire = salted[10:]
    if key.hmac_key is not None:
        wire += spa.hmac_tag(key.hmac_key, key.hmac, salted)
    return wire


def with_digest(message: bytes, name: str = "sha256") -> bytes:
    return message + b":" + spa.digest_b64(name, message)


def b64(text: str) -> bytes:
    return spa.b64(text.encode())


def plain(*fields: bytes) -> bytes:
    """A plaintext P from raw fields, with the 16 digits and a sha256 digest."""
    return with_digest(b":".join([DIGITS.encode(), *fields]))


ACCESS_FIELDS = (b64("root"), b"1795243644", b"3.0.0", b"1", b64("192.0.2.4,tcp/22"))


# -- the test vector -------------------------------------------------------------------------------


def test_vector_decodes_to_the_listed_fields() -> None:
    message = decode(VECTOR_WIRE, KEY)
    assert message == SpaMessage(
        random="1765315992137248",
        username="root",
        timestamp=1795243644,
        version="3.0.0",
        message_type=1,
        allow_ip="127.0.0.2",
        access=(("tcp", 22),),
        command=None,
        nat_access=None,
        client_timeout=None,
        digest_type="sha256",
        canonical=hashlib.sha256(VECTOR_P).digest(),
    )
    # The packet's own digest is SHA-256 of the same P: the canonical key is what fwknop signs.
    assert spa.b64(message.canonical) == VECTOR_DIGEST
    assert decode(VECTOR_WIRE, KEY).canonical == message.canonical


def test_vector_intermediate_values() -> None:
    assert len(VECTOR_WIRE) == 204 and VECTOR_WIRE.endswith(VECTOR_TAG)
    body = VECTOR_WIRE[: -len(VECTOR_TAG)]
    assert spa.hmac_tag(VECTOR_HMAC_KEY, "sha256", spa.SALTED_B64 + body) == VECTOR_TAG
    salt, ciphertext = spa._blob(body)
    assert salt == VECTOR_SALT and len(ciphertext) % 16 == 0
    assert spa.derive_key_iv(VECTOR_KEY, VECTOR_SALT) == (VECTOR_AES_KEY, VECTOR_IV)
    assert spa._decrypt(VECTOR_KEY, salt, ciphertext) == VECTOR_P + b":" + VECTOR_DIGEST
    # fwknopd's own replay key is over the wire text: what the bit-flip trick defeats.
    fwknopd_key = base64.b64encode(hashlib.sha256(VECTOR_WIRE).digest()).rstrip(b"=").decode()
    assert fwknopd_key == VECTOR_FWKNOPD_REPLAY_KEY


def test_vector_refused_with_wrong_keys() -> None:
    other = bytes(32)
    assert reason_of(lambda: decode(VECTOR_WIRE, SpaKey(other, VECTOR_HMAC_KEY))) == "decrypt"
    assert reason_of(lambda: decode(VECTOR_WIRE, SpaKey(VECTOR_KEY, other))) == "hmac"
    sha512 = SpaKey(VECTOR_KEY, VECTOR_HMAC_KEY, "sha512")
    assert reason_of(lambda: decode(VECTOR_WIRE, sha512)) == "hmac"
    md5 = SpaKey(VECTOR_KEY, VECTOR_HMAC_KEY, "md5")
    assert reason_of(lambda: decode(VECTOR_WIRE, md5)) == "hmac"
    # A stanza without HMAC sees tag characters where it expects ciphertext.
    assert reason_of(lambda: decode(VECTOR_WIRE, NO_HMAC)) in {"wire", "decrypt"}


# -- refusals and their reasons --------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 43, 100, 150, 203])
def test_truncated_hmac_packet_refused(cut: int) -> None:
    short = VECTOR_WIRE[:-cut]
    expected = "wire" if len(short) < spa.MIN_WIRE_LENGTH else "hmac"
    assert reason_of(lambda: decode(short, KEY)) == expected


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 22, 60])
def test_truncated_packet_without_hmac_refused(cut: int) -> None:
    whole = packet(NO_HMAC)
    short = whole[:-cut]
    assert decode(whole, NO_HMAC).username == "alice"
    assert reason_of(lambda: decode(short, NO_HMAC)) == "wire"


@pytest.mark.parametrize("position", [0, 1, 50, 100, 160, 180, 203])
def test_flipped_character_in_hmac_packet_refused(position: int) -> None:
    char = VECTOR_WIRE[position]
    other = b"A" if char != ord("A") else b"B"
    if position == 0:
        other = b"9" if char != ord("9") else b"8"  # keep the first-character check passing
    flipped = VECTOR_WIRE[:position] + other + VECTOR_WIRE[position + 1 :]
    assert reason_of(lambda: decode(flipped, KEY)) == "hmac"


@pytest.mark.parametrize("position", [5, 40, 80, 120, 150])
def test_flipped_character_without_hmac_refused(position: int) -> None:
    whole = packet(NO_HMAC)
    char = whole[position]
    other = b"A" if char != ord("A") else b"B"
    flipped = whole[:position] + other + whole[position + 1 :]
    assert reason_of(lambda: decode(flipped, NO_HMAC)) == "decrypt"


def test_wrong_key_without_hmac_is_a_decrypt_failure() -> None:
    wire = packet(NO_HMAC)
    for wrong in (bytes(32), VECTOR_KEY[:-1] + b"x", b"passphrase"):
        assert reason_of(lambda w=wrong: decode(wire, SpaKey(w, None, "none"))) == "decrypt"


def test_legacy_and_modern_keys_do_not_mix() -> None:
    legacy = SpaKey(b"short", None, "none", legacy=True)
    modern = SpaKey(b"short", None, "none")
    assert reason_of(lambda: decode(packet(legacy), modern)) == "decrypt"
    assert reason_of(lambda: decode(packet(modern), legacy)) == "decrypt"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "shorter"),
        (b"8" * 96, "shorter"),
        (b"8" * 1501, "longer"),
        (b"8" * 150 + b"=", "not base64"),
        (b"8" * 150 + b"\n", "not base64"),
        (b"8" * 150 + "é".encode(), "not base64"),
        (b"8" * 100 + b"\x00" * 60, "not base64"),
        (b"U2FsdGVkX1" + b"A" * 150, "U2FsdGVkX1"),
        (b"A" * 160, "Salted__"),
        (b"GET /" + b"A" * 150, "Salted__"),
        ("é".encode() + b"A" * 150, "Salted__"),
    ],
)
def test_check_wire_refuses(payload: bytes, why: str) -> None:
    with pytest.raises(SpaError) as caught:
        check_wire(payload)
    assert caught.value.reason == "wire"
    assert why in str(caught.value)
    assert reason_of(lambda: decode(payload, KEY)) == "wire"


def test_check_wire_accepts_real_packets() -> None:
    check_wire(VECTOR_WIRE)
    check_wire(packet(NO_HMAC))
    for first in b"89+/":
        check_wire(bytes((first,)) + b"A" * 160)


@pytest.mark.parametrize("length", [97, 98, 99, 100, 117, 118, 119, 140])
def test_base64_shape_that_cannot_be_a_blob_is_wire(length: int) -> None:
    # No HMAC: the whole payload must be base64 of "Salted__" + salt + whole AES blocks (>= 4).
    payload = b"8" + b"A" * (length - 1)
    blob_length = (length + 10) * 3 // 4
    if (length + 10) % 4 != 1 and blob_length % 16 == 0 and blob_length >= 80:
        assert reason_of(lambda: decode(payload, NO_HMAC)) == "decrypt"
    else:
        assert reason_of(lambda: decode(payload, NO_HMAC)) == "wire"


# -- the plaintext parser: format, digest, fields --------------------------------------------------


def test_sealed_plaintext_helper_matches_encode() -> None:
    wire = packet(NO_HMAC)
    message = decode(wire, NO_HMAC)
    text = b":".join([DIGITS.encode(), b64("alice"), str(TS).encode(), b"3.0.0", b"1"])
    text += b":" + b64("192.0.2.4,tcp/22")
    assert seal(with_digest(text)) == wire
    assert message.canonical == hashlib.sha256(text).digest()


@pytest.mark.parametrize(
    "plaintext",
    [
        b"123456789012345:" + b"A" * 60,  # 15 digits
        b"12345678901234567" + b"A" * 60,  # no ':' after 16 digits
        b"123456789012345x:" + b"A" * 60,
        b"1234567890123456:only:four:" + b"f" * 60,
        b"1234567890123456:a:b:c:d:e:f:g:h:i:j:" + b"k" * 60,  # too many fields
    ],
)
def test_format_refusals(plaintext: bytes) -> None:
    assert reason_of(lambda: decode(seal(plaintext), NO_HMAC)) == "format"


def test_digest_refusals() -> None:
    message = b":".join([DIGITS.encode(), *ACCESS_FIELDS])
    good = with_digest(message)
    assert decode(seal(good), NO_HMAC).digest_type == "sha256"
    wrong = message + b":" + spa.digest_b64("sha256", message + b"x")
    assert reason_of(lambda: decode(seal(wrong), NO_HMAC)) == "digest"
    odd_length = message + b":" + spa.digest_b64("sha256", message)[:-1]
    assert reason_of(lambda: decode(seal(odd_length), NO_HMAC)) == "digest"
    # The digest is over P only: a changed field with the old digest fails.
    tampered = message.replace(b"1795243644", b"1795243645") + good[len(message) :]
    assert reason_of(lambda: decode(seal(tampered), NO_HMAC)) == "digest"


@pytest.mark.parametrize("name", list(HMAC_TAG_LENGTHS))
def test_every_digest_algorithm_is_recognised(name: str) -> None:
    message = b":".join([DIGITS.encode(), *ACCESS_FIELDS])
    assert decode(seal(with_digest(message, name)), NO_HMAC).digest_type == name


def fields_with(index: int, value: bytes) -> tuple[bytes, ...]:
    fields = list(ACCESS_FIELDS)
    fields[index] = value
    return tuple(fields)


@pytest.mark.parametrize(
    "fields",
    [
        fields_with(0, b""),  # empty user
        fields_with(0, b64("a/b")),  # fwknop's forbidden characters
        fields_with(0, b64("al:ce")),
        fields_with(0, b64("x" * 65)),
        fields_with(0, spa.b64(b"\x01ab")),  # not printable
        fields_with(0, b"cm9v*A"),  # not base64
        fields_with(0, b"Y"),  # base64 of length 1 mod 4
        fields_with(1, b"17952436x4"),
        fields_with(1, b"-1"),
        fields_with(1, b"1" * 13),
        fields_with(1, b""),
        fields_with(2, b"3.0.0.0.0"),
        fields_with(2, b"v3"),
        fields_with(2, b""),
        fields_with(3, b"7"),
        fields_with(3, b"01"),
        fields_with(3, b"x"),
        fields_with(4, b64("192.0.2.4")),  # no proto/port
        fields_with(4, b64("192.0.2.4,")),
        fields_with(4, b64("192.0.2.4,tcp/")),
        fields_with(4, b64("192.0.2.4,tcp/65536")),
        fields_with(4, b64("192.0.2.4,sctp/22")),
        fields_with(4, b64("192.0.2.4,tcp/22,")),
        fields_with(4, b64("192.0.2.4,tcp/22 ")),
        fields_with(4, b64("192.0.2.256,tcp/22")),
        fields_with(4, b64("192.0.02.4,tcp/22")),  # leading zero (octal to inet_aton)
        fields_with(4, b64("192.0.2,tcp/22")),
        fields_with(4, b64("2001:db8::1,tcp/22")),
        fields_with(4, b64("host.example,tcp/22")),
        fields_with(4, b64("192.0.2.4,tcp/22" + ",udp/1" * 60)),  # field over 256 chars
        (*ACCESS_FIELDS, b64("auth")),  # server_auth on a type 1 message
        (*ACCESS_FIELDS, b"30", b"x"),  # too many fields for type 1
        (*fields_with(3, b"3"),),  # type 3 without its timeout
        (*fields_with(3, b"3"), b"3x"),
        (*fields_with(3, b"3"), b"65537"),
        (*fields_with(3, b"3"), b""),
        (*fields_with(3, b"2"),),  # NAT type without the NAT field
        (*fields_with(3, b"2"), b64("192.0.2.9")),
        (*fields_with(3, b"2"), b64("192.0.2.9,99999")),
        (*fields_with(3, b"0")[:4], b64("192.0.2.4")),  # type 0: "ip,command"
        (*fields_with(3, b"0")[:4], b64("192.0.2.4,")),
    ],
)
def test_field_refusals(fields: tuple[bytes, ...]) -> None:
    assert reason_of(lambda: decode(seal(plain(*fields)), NO_HMAC)) == "fields"


def test_every_message_type_parses() -> None:
    head = ACCESS_FIELDS[:3]
    command = decode(seal(plain(*head, b"0", b64("192.0.2.4,echo hi"))), NO_HMAC)
    assert (command.message_type, command.command, command.access) == (0, "echo hi", ())
    assert command.allow_ip == "192.0.2.4"
    nat = decode(seal(plain(*head, b"2", b64("0.0.0.0,tcp/22"), b64("10.0.0.5,2222"))), NO_HMAC)
    assert (nat.nat_access, nat.client_timeout, nat.access) == (
        "10.0.0.5,2222",
        None,
        (("tcp", 22),),
    )
    timed = decode(seal(plain(*head, b"3", b64("0.0.0.0,tcp/22,udp/53"), b"600")), NO_HMAC)
    assert (timed.client_timeout, timed.access) == (600, (("tcp", 22), ("udp", 53)))
    assert timed.nat_access is None
    for mtype in (b"4", b"6"):
        both = decode(
            seal(plain(*head, mtype, b64("1.2.3.4,icmp/0"), b64("nat.example,22"), b"0")),
            NO_HMAC,
        )
        assert (both.nat_access, both.client_timeout) == ("nat.example,22", 0)
        assert both.access == (("icmp", 0),)
    local = decode(seal(plain(*head, b"5", b64("1.2.3.4,tcp/22"), b64("127.0.0.1,22"))), NO_HMAC)
    assert (local.message_type, local.nat_access) == (5, "127.0.0.1,22")


def test_username_limits() -> None:
    name = "u" * 64
    message = decode(seal(plain(b64(name), *ACCESS_FIELDS[1:])), NO_HMAC)
    assert message.username == name
    odd = "John Smith-2_(x)"
    assert decode(seal(plain(b64(odd), *ACCESS_FIELDS[1:])), NO_HMAC).username == odd


# -- the bit-flip trick ----------------------------------------------------------------------------


def flip_low_bit_of_last_char(wire: bytes) -> bytes:
    last = chr(wire[-1])
    return wire[:-1] + _B64[_B64.index(last) ^ 1].encode()


def packet_with_spare_bits(key: SpaKey) -> bytes:
    """A packet whose last base64 character carries unused bits (its length is not 0 mod 4)."""
    for size in range(1, 10):
        wire = packet(key, username="u" * size)
        body = wire[: -HMAC_TAG_LENGTHS[key.hmac]] if key.hmac_key else wire
        if (len(body) + 10) % 4 in (2, 3):
            return wire
    raise AssertionError("no packet size with spare bits found")


def test_bit_flip_variant_has_the_same_canonical_key() -> None:
    wire = packet_with_spare_bits(NO_HMAC)
    variant = flip_low_bit_of_last_char(wire)
    assert variant != wire
    original, replayed = decode(wire, NO_HMAC), decode(variant, NO_HMAC)
    assert replayed == original  # same fields and, above all, the same replay key
    # Whereas fwknopd's replay key (over the wire text) differs: its weakness.
    assert hashlib.sha256(variant).digest() != hashlib.sha256(wire).digest()


def test_bit_flip_variant_fails_hmac() -> None:
    wire = packet_with_spare_bits(KEY)
    body_end = len(wire) - HMAC_TAG_LENGTHS["sha256"]
    variant = flip_low_bit_of_last_char(wire[:body_end]) + wire[body_end:]
    assert reason_of(lambda: decode(variant, KEY)) == "hmac"


def test_same_request_twice_has_distinct_canonical_keys() -> None:
    first = decode(packet(KEY, random_digits="1111111111111111"), KEY)
    second = decode(packet(KEY, random_digits="2222222222222222"), KEY)
    assert first.canonical != second.canonical
    # A re-encryption of the same plaintext (another salt) is the same packet: same key.
    resalted = decode(packet(KEY, random_digits="1111111111111111", salt=b"saltsalt"), KEY)
    assert resalted.canonical == first.canonical


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hmac_name", list(HMAC_TAG_LENGTHS))
def test_round_trip_every_hmac(hmac_name: str) -> None:
    key = SpaKey(os.urandom(32), os.urandom(64), hmac_name)
    wire = encode(key, username="bob", allow_ip="0.0.0.0", access=[("tcp", 22)], timestamp=TS)
    message = decode(wire, key)
    assert (message.username, message.allow_ip, message.access) == (
        "bob",
        "0.0.0.0",
        (("tcp", 22),),
    )
    assert (message.timestamp, message.message_type, message.version) == (TS, 1, "3.0.0")
    assert len(message.random) == 16 and message.random.isdigit()
    assert wire[-HMAC_TAG_LENGTHS[hmac_name] :] == spa.hmac_tag(
        key.hmac_key or b"", hmac_name, spa.SALTED_B64 + wire[: -HMAC_TAG_LENGTHS[hmac_name]]
    )


@pytest.mark.parametrize("digest", list(HMAC_TAG_LENGTHS))
def test_round_trip_every_digest(digest: str) -> None:
    assert decode(packet(KEY, digest=digest), KEY).digest_type == digest


@pytest.mark.parametrize(
    "key",
    [
        SpaKey(b"correct horse", None, "none"),  # passphrase KEY
        SpaKey(b"p" * 32, b"hmac passphrase"),  # longest passphrase, HMAC_KEY
        SpaKey(b"x", None, "none"),
        SpaKey(b"short", None, "none", legacy=True),  # -M legacy pads with "0" to 16
        SpaKey(VECTOR_KEY, None, "none", legacy=True),  # ... and truncates to 16
        SpaKey(b"short", VECTOR_HMAC_KEY, legacy=True),  # (the fwknop client refuses this one)
        SpaKey(os.urandom(32), os.urandom(128), "sha512"),
    ],
    ids=[
        "passphrase",
        "passphrase32-hmac",
        "one-byte",
        "legacy-short",
        "legacy-long",
        "legacy-hmac",
        "sha512",
    ],
)
def test_round_trip_key_kinds(key: SpaKey) -> None:
    message = decode(packet(key), key)
    assert (message.username, message.access, message.allow_ip) == (
        "alice",
        (("tcp", 22),),
        "192.0.2.4",
    )


def test_legacy_key_is_padded_and_truncated_to_16() -> None:
    padded = SpaKey(b"short", None, "none", legacy=True)
    assert spa.cipher_key(padded) == b"short00000000000"
    explicit = SpaKey(b"short00000000000", None, "none")
    assert decode(packet(padded), explicit).username == "alice"
    truncated = SpaKey(VECTOR_KEY, None, "none", legacy=True)
    assert decode(packet(truncated), SpaKey(VECTOR_KEY[:16], None, "none")).username == "alice"


def test_round_trip_type_3_and_many_ports() -> None:
    wire = packet(
        KEY,
        message_type=3,
        client_timeout=600,
        access=[("tcp", 22), ("udp", 53), ("icmp", 0), ("tcp", 65535)],
        allow_ip="0.0.0.0",
        username="root",
    )
    message = decode(wire, KEY)
    assert (message.message_type, message.client_timeout) == (3, 600)
    assert message.access == (("tcp", 22), ("udp", 53), ("icmp", 0), ("tcp", 65535))
    assert (message.nat_access, message.command) == (None, None)


def test_encode_is_deterministic_with_fixed_randomness() -> None:
    assert packet(KEY) == packet(KEY)
    assert packet(KEY) != packet(KEY, salt=b"saltsalt")


def test_packet_sizes_match_fwknop() -> None:
    # The spec: 161 bytes without HMAC, 204 with HMAC-SHA256, 183 md5, 247 sha512, for
    # "root" / "127.0.0.2,tcp/22" at a current timestamp.
    fields = {"username": "root", "allow_ip": "127.0.0.2", "access": [("tcp", 22)]}
    sizes = {}
    for name in ("none", "md5", "sha256", "sha512"):
        key = NO_HMAC if name == "none" else SpaKey(VECTOR_KEY, VECTOR_HMAC_KEY, name)
        sizes[name] = len(packet(key, timestamp=1795243644, **fields))
    assert sizes == {"none": 161, "md5": 183, "sha256": 204, "sha512": 247}


@pytest.mark.parametrize(
    "overrides",
    [
        {"username": ""},
        {"username": "a/b"},
        {"username": "x" * 49},  # fwknopd's 64-character limit on the encoded field
        {"username": "jörg"},
        {"allow_ip": "192.0.2.256"},
        {"allow_ip": "::1"},
        {"access": []},
        {"access": [("sctp", 22)]},
        {"access": [("tcp", 65536)]},
        {"access": [("tcp", 1)] * 40},
        {"timestamp": -1},
        {"message_type": 2},
        {"message_type": 0},
        {"message_type": 3},  # needs a client timeout
        {"client_timeout": 30},  # needs message_type 3
        {"message_type": 3, "client_timeout": 70000},
        {"random_digits": "123"},
        {"random_digits": "12345678901234\uff156"},
        {"salt": b"short"},
        {"digest": "crc32"},
    ],
)
def test_encode_refuses_what_fwknopd_would(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        packet(KEY, **overrides)


def test_encode_longest_username_is_accepted() -> None:
    assert decode(packet(KEY, username="x" * 48), KEY).username == "x" * 48


# -- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"key": b"", "hmac_key": None, "hmac": "none"}, "1..32"),
        ({"key": b"k" * 33, "hmac_key": None, "hmac": "none"}, "1..32"),
        ({"key": b"k", "hmac_key": None}, "HMAC key"),
        ({"key": b"k", "hmac_key": b""}, "HMAC key"),
        ({"key": b"k", "hmac_key": b"h" * 129}, "HMAC key"),
        ({"key": b"k", "hmac_key": b"h", "hmac": "none"}, "none"),
        ({"key": b"k", "hmac_key": b"h", "hmac": "sha224"}, "unknown"),
    ],
)
def test_spa_key_validation(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SpaKey(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hmac_name", "hmac_length"),
    [("md5", 16), ("sha1", 20), ("sha256", 64), ("sha384", 128), ("sha512", 128)],
)
def test_generate_keys_lengths_like_fwknop(hmac_name: str, hmac_length: int) -> None:
    calls: list[int] = []

    def counting(n: int) -> bytes:
        calls.append(n)
        return bytes(range(n))

    key_b64, hmac_b64 = generate_keys(hmac_name, randbytes=counting)
    assert calls == [32, hmac_length]
    assert base64.b64decode(key_b64, validate=True) == bytes(range(32))
    assert base64.b64decode(hmac_b64, validate=True) == bytes(range(hmac_length))


def test_generate_keys_are_random_and_usable() -> None:
    first, second = generate_keys(), generate_keys()
    assert first != second
    key = SpaKey(base64.b64decode(first[0]), base64.b64decode(first[1]))
    assert decode(packet(key), key).username == "alice"
    with pytest.raises(ValueError):
        generate_keys("none")


def test_render_keygen() -> None:
    assert render_keygen("S0VZ", "SE1BQw==") == "KEY_BASE64: S0VZ\nHMAC_KEY_BASE64: SE1BQw==\n"


# -- fuzzing: nothing but SpaError, ever -----------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = [KEY, NO_HMAC, SpaKey(b"pw", None, "none", legacy=True), SpaKey(b"pw", b"hk", "sha512")]
DECODERS = [decode, spa._decode]  # _decode: the logic alone, without decode's safety net


def must_only_raise_spa_error(payload: bytes) -> None:
    for key in KEYS:
        for decoder in DECODERS:
            try:
                decoder(payload, key)
            except SpaError as exc:
                assert exc.reason in {"wire", "hmac", "decrypt", "format", "digest", "fields"}


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(payload: bytes) -> None:
    must_only_raise_spa_error(payload)


@FUZZ
@given(
    st.sampled_from(b"89+/"),
    st.text(alphabet=_B64, min_size=96, max_size=400),
)
def test_fuzz_base64_shaped(first: int, rest: str) -> None:
    must_only_raise_spa_error(bytes((first,)) + rest.encode())


@FUZZ
@given(st.data())
def test_fuzz_mutated_packets(data: st.DataObject) -> None:
    wire = bytearray(data.draw(st.sampled_from([VECTOR_WIRE, packet(NO_HMAC), packet(KEY)])))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    must_only_raise_spa_error(bytes(wire[:cut]))


_FIELD_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_FIELD = st.one_of(
    _FIELD_TEXT.map(str.encode),
    _FIELD_TEXT.map(b64),
    st.integers(0, 10**13).map(lambda n: str(n).encode()),
)


@FUZZ
@given(st.lists(_FIELD, min_size=4, max_size=10), st.sampled_from(list(HMAC_TAG_LENGTHS)))
def test_fuzz_plaintexts(fields: list[bytes], digest: str) -> None:
    # Authentic packets (sealed with the key, correct digest) with arbitrary fields: the parser.
    # (Too short a plaintext makes a blob smaller than any real packet's: "wire".)
    message = b":".join([DIGITS.encode(), *fields])
    for decoder in DECODERS:
        try:
            decoder(seal(with_digest(message, digest)), NO_HMAC)
        except SpaError as exc:
            assert exc.reason in {"wire", "format", "fields"}


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_decrypted_garbage(plaintext: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder(seal(plaintext), NO_HMAC)
        except SpaError as exc:
            assert exc.reason in {"wire", "decrypt", "format", "digest", "fields"}


_VALID_FIELDS = [*ACCESS_FIELDS, b64("10.0.0.5,22"), b"600"]


@FUZZ
@given(
    st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5", b"6"]),
    st.integers(0, 2),
    st.integers(0, 6),
    _FIELD,
)
def test_fuzz_one_field_off(mtype: bytes, extra: int, index: int, value: bytes) -> None:
    # Near-valid plaintexts of every message type, one field replaced: deep into the parser.
    fields = [*_VALID_FIELDS[:3], mtype, *_VALID_FIELDS[4 : 5 + extra]]
    fields[min(index, len(fields) - 1)] = value
    for decoder in DECODERS:
        try:
            message = decoder(seal(plain(*fields)), NO_HMAC)
        except SpaError as exc:
            assert exc.reason in {"format", "fields"}
        else:
            assert message.message_type == int(fields[3])
