# fwknop Single Packet Authorization, the receiving half, pure: a UDP payload and one stanza's key
# -> the SpaMessage it carries, or a SpaError whose `reason` says which check refused it. Wire
# compatible with fwknop 2.6.10 (protocol 3.0.0, Rijndael mode); the format and the server's checks
# are in shared/spec/fwknop-spa.md.
#
# Why it is shaped like this:
# - It is fed whatever arrives on the SPA port, so it never raises anything but SpaError, and it
#   bounds its work: the key-independent checks (length, base64 alphabet, the first character every
#   Rijndael packet has) run first and cost a few C-level byte operations; then the HMAC (one
#   one-shot hmac.digest) before any decryption, as fwknopd does; decryption only for packets that
#   authenticated (or for stanzas without HMAC, which the config must ask for explicitly).
# - Constant-time comparisons for the HMAC tag and the digest (hmac.compare_digest).
# - No policy: age, ports, user, allowed message types and the allow-IP's meaning are the engine's.
#   The decoder returns what the packet says, validated only for syntax (fwknop's own checks,
#   sometimes stricter: IPv4 without leading zeros, known protocols, ports <= 65535).
# - `canonical` (SHA-256 of the plaintext without its digest) is the replay key: every wire variant
#   of one packet (fwknopd's bit-flip weakness: unused low bits of the last base64 character)
#   decrypts to the same plaintext, so it gets the same key.
from __future__ import annotations

import binascii
import hashlib
import hmac as _hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# Base64 (unpadded) lengths of each digest: the HMAC tag length for the configured algorithm, and
# how the plaintext digest's algorithm is recognised (sha3 shares the sha2 lengths).
HMAC_TAG_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "md5": 22,
        "sha1": 27,
        "sha256": 43,
        "sha384": 64,
        "sha512": 86,
        "sha3_256": 43,
        "sha3_512": 86,
    }
)
DIGEST_NAMES: tuple[str, ...] = tuple(HMAC_TAG_LENGTHS)
# fwknop's digest-by-length table, with the sha3 fallbacks tried when the sha2 digest fails.
_DIGESTS_BY_LENGTH: dict[int, tuple[str, ...]] = {
    22: ("md5",),
    27: ("sha1",),
    43: ("sha256", "sha3_256"),
    64: ("sha384",),
    86: ("sha512", "sha3_512"),
}

# Limits. MAX_KEY_LENGTH: AES-256 key material as fwknop takes it (a passphrase or KEY_BASE64 is
# used as-is, up to 32 bytes). MAX_HMAC_KEY_LENGTH: fwknop's largest HMAC key (SHA-512 block).
MAX_KEY_LENGTH = 32
MAX_HMAC_KEY_LENGTH = 128
LEGACY_KEY_LENGTH = 16  # -M legacy: the key right-padded with "0" (or truncated) to 16 bytes
# The smallest possible Rijndael packet: a 61-byte plaintext (16 digits, 1-char user, shortest
# fields, command message, MD5 digest) pads to 64 bytes; with "Salted__" and the salt that is an
# 80-byte blob, 107 base64 characters, 97 after the 10-character prefix is cut.
MIN_WIRE_LENGTH = 97
# fwknop's MAX_SPA_ENCODED_MSG_SIZE; real packets are 161..~400 characters.
MAX_WIRE_LENGTH = 1500
MIN_BLOB_LENGTH = 80

SALTED_B64 = b"U2FsdGVkX1"  # base64 of "Salted__" (its first 10 characters): cut from the wire
_SALTED = b"Salted__"
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The 11th base64 character of "Salted__" + salt holds the last 4 bits of "_" (1111) and 2 salt
# bits: it is always one of these four, so the first wire character is too.
_FIRST_CHARS = frozenset(b"89+/")
_PRINTABLE = bytes(range(0x20, 0x7F))
_AES_BLOCK = 16

# Plaintext field limits (fwknop's fko_limits.h; the user is checked decoded, see _parse_user).
MAX_USERNAME_LENGTH = 64
_MAX_TIMESTAMP_DIGITS = 12
_MAX_VERSION_LENGTH = 8
_MAX_MESSAGE_FIELD = 256
_MAX_CLIENT_TIMEOUT = 1 << 16  # fwknop's strtol bound (2 << 15)
_MIN_FIELDS, _MAX_FIELDS = 6, 9  # P's fields, without the digest
MESSAGE_TYPES = range(7)
_NAT_TYPES = frozenset({2, 4, 5, 6})
_TIMEOUT_TYPES = frozenset({3, 4, 6})
PROTOCOLS = ("tcp", "udp", "icmp")

# fwknop's validate_username: printable ASCII without " / \ [ ] : ; | = , + * ? < >
_USERNAME_FORBIDDEN = b'"/\\[]:;|=,+*?<>'
_USERNAME_OK = bytes(c for c in _PRINTABLE if c not in _USERNAME_FORBIDDEN)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_PROTO_PORT_RE = re.compile(r"(tcp|udp|icmp)/([0-9]{1,5})")
_VERSION_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3})*")
_NAT_RE = re.compile(r"([A-Za-z0-9.-]{1,253}),([0-9]{1,5})")
_MAX_PORT = 65535


class SpaError(Exception):
    """A payload this key does not accept; `reason` is a stable short word for logs and metrics.

    wire: not an fwknop Rijndael packet at all (length, alphabet, prefix, base64 shape)
    hmac: the HMAC tag does not match (wrong HMAC key or algorithm, or tampering)
    decrypt: the ciphertext does not decrypt under this key (padding, garbled plaintext)
    format: decrypted text that is not an SPA plaintext (random prefix, field count, digest field)
    digest: the plaintext digest is missing, of an unknown length, or does not match
    fields: a field fails validation (user, timestamp, version, type, message, NAT, timeout)
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpaKey:
    """One stanza's keys: `key` raw (KEY as-is or KEY_BASE64 decoded), HMAC key and algorithm."""

    key: bytes
    hmac_key: bytes | None
    hmac: str = "sha256"  # a HMAC_TAG_LENGTHS name, or "none" (then hmac_key is None)
    # fwknop -M legacy (pre-2.5 clients): the key padded to 16 bytes. The fwknop client refuses
    # legacy with HMAC ("incompatible"); it works here (both halves), but no fwknop client sends it.
    legacy: bool = False

    def __post_init__(self) -> None:
        # Configuration errors, raised when a stanza is loaded, never per packet.
        if not 1 <= len(self.key) <= MAX_KEY_LENGTH:
            raise ValueError(f"SPA key must be 1..{MAX_KEY_LENGTH} bytes, not {len(self.key)}")
        if self.hmac == "none":
            if self.hmac_key is not None:
                raise ValueError('hmac = "none" takes no HMAC key')
        elif self.hmac not in HMAC_TAG_LENGTHS:
            names = ", ".join([*HMAC_TAG_LENGTHS, "none"])
            raise ValueError(f"unknown HMAC algorithm {self.hmac!r} (one of {names})")
        elif self.hmac_key is None or not 1 <= len(self.hmac_key) <= MAX_HMAC_KEY_LENGTH:
            raise ValueError(f"HMAC key must be 1..{MAX_HMAC_KEY_LENGTH} bytes")


@dataclass(frozen=True, slots=True)
class SpaMessage:
    """What an authenticated packet says (syntax-checked; policy is the engine's)."""

    random: str  # the 16 random digits
    username: str
    timestamp: int  # client Unix seconds
    version: str  # "3.0.0" for fwknop 2.5+
    message_type: int  # 0 command, 1 access, 2 NAT, 3 access+timeout, 4 NAT+timeout, 5/6 local NAT
    allow_ip: str  # dotted IPv4 as sent; "0.0.0.0" means the packet's source
    access: tuple[tuple[str, int], ...]  # (("tcp", 22), ...); empty for type 0
    command: str | None  # type 0 only
    nat_access: str | None  # types 2, 4, 5, 6: "<host>,<port>"
    client_timeout: int | None  # types 3, 4, 6
    digest_type: str  # the plaintext digest that matched
    canonical: bytes  # SHA-256 of the plaintext without its digest: the replay key


# -- key derivation and the cipher (shared with guardian.spa_packet) ------------------------------


def cipher_key(key: SpaKey) -> bytes:
    """The password bytes fed to EVP_BytesToKey: as-is, or padded/truncated to 16 in legacy mode."""
    if key.legacy:
        return key.key[:LEGACY_KEY_LENGTH].ljust(LEGACY_KEY_LENGTH, b"0")
    return key.key


def derive_key_iv(password: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey(MD5, 1 iteration): (AES-256 key, IV) from password and salt."""
    material = password + salt
    d1 = hashlib.md5(material).digest()  # noqa: S324 - the protocol's KDF, not our choice
    d2 = hashlib.md5(d1 + material).digest()  # noqa: S324
    d3 = hashlib.md5(d2 + material).digest()  # noqa: S324
    return d1 + d2, d3


def b64(data: bytes) -> bytes:
    """fwknop's base64: standard alphabet, trailing '=' removed."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=")


def hmac_tag(hmac_key: bytes, algorithm: str, salted_b64: bytes) -> bytes:
    """The base64 HMAC over T (the base64 blob with its "U2FsdGVkX1" prefix put back)."""
    return b64(_hmac.digest(hmac_key, salted_b64, algorithm))


def digest_b64(name: str, data: bytes) -> bytes:
    return b64(hashlib.new(name, data).digest())


# -- decoding --------------------------------------------------------------------------------------


def check_wire(payload: bytes) -> None:
    """Key-independent checks, cheapest first; raises SpaError("wire") for non-packets."""
    size = len(payload)
    if size < MIN_WIRE_LENGTH:
        raise SpaError("wire", f"payload of {size} bytes is shorter than any SPA packet")
    if size > MAX_WIRE_LENGTH:
        raise SpaError("wire", f"payload of {size} bytes is longer than {MAX_WIRE_LENGTH}")
    # One byte first: it refuses 98% of random bytes before the alphabet scan.
    if payload[0] not in _FIRST_CHARS:
        if payload.startswith(SALTED_B64):
            raise SpaError("wire", 'payload keeps the "U2FsdGVkX1" prefix fwknop clients cut')
        raise SpaError("wire", 'payload cannot be base64 of "Salted__" and a salt')
    if payload.translate(None, _B64_ALPHABET):
        raise SpaError("wire", "payload is not base64 text")


def decode(payload: bytes, key: SpaKey) -> SpaMessage:
    """Verify and decode one payload with one stanza's key; SpaError is the only exception."""
    try:
        return _decode(payload, key)
    except SpaError:
        raise
    except Exception as exc:  # a bug must not become a crash on hostile input
        raise SpaError("format", f"undecodable packet ({type(exc).__name__})") from exc


def _decode(payload: bytes, key: SpaKey) -> SpaMessage:
    check_wire(payload)
    if key.hmac_key is not None:
        tag_length = HMAC_TAG_LENGTHS[key.hmac]
        body = payload[:-tag_length]
        if len(body) < MIN_WIRE_LENGTH:
            raise SpaError("hmac", f"payload too short to carry an HMAC-{key.hmac} tag")
        expected = hmac_tag(key.hmac_key, key.hmac, SALTED_B64 + body)
        if not _hmac.compare_digest(expected, payload[-tag_length:]):
            raise SpaError("hmac", f"HMAC-{key.hmac} does not match")
    else:
        body = payload
    salt, ciphertext = _blob(body)
    plaintext = _decrypt(cipher_key(key), salt, ciphertext)
    return _parse_plaintext(plaintext)


def _blob(body: bytes) -> tuple[bytes, bytes]:
    """The wire text without tag -> (salt, ciphertext), checking the OpenSSL "Salted__" shape."""
    text_length = len(body) + len(SALTED_B64)
    blob_length = text_length * 3 // 4
    if text_length % 4 == 1 or blob_length < MIN_BLOB_LENGTH or blob_length % _AES_BLOCK:
        raise SpaError("wire", f"{len(body)} base64 characters cannot hold a Rijndael blob")
    try:
        blob = binascii.a2b_base64(SALTED_B64 + body + b"=" * (-text_length % 4))
    except binascii.Error as exc:
        raise SpaError("wire", f"bad base64 ({exc})") from exc
    if len(blob) != blob_length or not blob.startswith(_SALTED):
        raise SpaError("wire", 'payload is not a "Salted__" blob')
    return blob[8:16], blob[16:]


def _decrypt(password: bytes, salt: bytes, ciphertext: bytes) -> bytes:
    aes_key, iv = derive_key_iv(password, salt)
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _AES_BLOCK or padded[-pad:] != bytes((pad,)) * pad:
        raise SpaError("decrypt", "does not decrypt with this key (bad padding)")
    plaintext = padded[:-pad]
    if plaintext.translate(None, _PRINTABLE):
        raise SpaError("decrypt", "does not decrypt with this key (binary plaintext)")
    return plaintext


def _parse_plaintext(plaintext: bytes) -> SpaMessage:
    if len(plaintext) < 17 or plaintext[16] != 0x3A or not plaintext[:16].isdigit():
        raise SpaError("format", "plaintext does not start with 16 digits and ':'")
    cut = plaintext.rfind(b":")
    message, digest = plaintext[:cut], plaintext[cut + 1 :]
    fields = message.split(b":")
    if not _MIN_FIELDS <= len(fields) <= _MAX_FIELDS:
        raise SpaError("format", f"plaintext has {len(fields) + 1} fields, not 7..10")
    digest_type = _verify_digest(message, digest)
    canonical = hashlib.sha256(message).digest()
    return _parse_fields(fields, digest_type, canonical)


def _verify_digest(message: bytes, digest: bytes) -> str:
    candidates = _DIGESTS_BY_LENGTH.get(len(digest))
    if candidates is None:
        raise SpaError("digest", f"digest field of {len(digest)} characters fits no algorithm")
    for name in candidates:
        if _hmac.compare_digest(digest_b64(name, message), digest):
            return name
    raise SpaError("digest", f"{'/'.join(candidates)} digest does not match the plaintext")


def _parse_fields(fields: list[bytes], digest_type: str, canonical: bytes) -> SpaMessage:
    random, user_field, ts_field, version_field, type_field, message_field, *rest = fields
    username = _parse_user(user_field)
    if not (0 < len(ts_field) <= _MAX_TIMESTAMP_DIGITS and ts_field.isdigit()):
        raise SpaError("fields", "timestamp is not a decimal number")
    version = version_field.decode("ascii")
    if len(version) > _MAX_VERSION_LENGTH or not _VERSION_RE.fullmatch(version):
        raise SpaError("fields", f"bad version {version!r}")
    if not (len(type_field) == 1 and type_field.isdigit() and int(type_field) in MESSAGE_TYPES):
        raise SpaError("fields", f"unknown message type {type_field.decode('ascii')!r}")
    message_type = int(type_field)
    has_nat = message_type in _NAT_TYPES
    has_timeout = message_type in _TIMEOUT_TYPES
    expected = int(has_nat) + int(has_timeout)
    if len(rest) == expected + 1:
        raise SpaError("fields", "server_auth field is not supported")
    if len(rest) != expected:
        raise SpaError("fields", f"message type {message_type} takes {6 + expected} fields")
    text = _b64_field(message_field, "message", _MAX_MESSAGE_FIELD)
    allow_ip, _, request = text.partition(",")
    if not IPV4_RE.fullmatch(allow_ip):
        raise SpaError("fields", f"allow-IP {allow_ip!r} is not a dotted IPv4 address")
    command: str | None = None
    access: tuple[tuple[str, int], ...] = ()
    if message_type == 0:
        if not request:
            raise SpaError("fields", "command message without a command")
        command = request
    else:
        access = _parse_access(request)
    nat_access = _parse_nat(rest[0]) if has_nat else None
    client_timeout = _parse_timeout(rest[-1]) if has_timeout else None
    return SpaMessage(
        random=random.decode("ascii"),
        username=username,
        timestamp=int(ts_field),
        version=version,
        message_type=message_type,
        allow_ip=allow_ip,
        access=access,
        command=command,
        nat_access=nat_access,
        client_timeout=client_timeout,
        digest_type=digest_type,
        canonical=canonical,
    )


def _b64_field(field: bytes, what: str, limit: int) -> str:
    """A plaintext field in fwknop's unpadded base64 -> its printable ASCII text."""
    if not 0 < len(field) <= limit:
        raise SpaError("fields", f"{what} field is empty or longer than {limit}")
    try:
        raw = binascii.a2b_base64(field + b"=" * (-len(field) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise SpaError("fields", f"{what} field is not base64") from exc
    if not raw or raw.translate(None, _PRINTABLE):
        raise SpaError("fields", f"{what} is empty or not printable text")
    return raw.decode("ascii")


def _parse_user(field: bytes) -> str:
    # The encoded field may be longer than fwknopd's 64 characters: the limit is on the name.
    username = _b64_field(field, "username", (MAX_USERNAME_LENGTH * 4 + 2) // 3)
    if len(username) > MAX_USERNAME_LENGTH or username.encode().translate(None, _USERNAME_OK):
        raise SpaError("fields", f"bad username {username!r}")
    return username


def _parse_access(request: str) -> tuple[tuple[str, int], ...]:
    if not request:
        raise SpaError("fields", "access message without proto/port")
    access = []
    for spec in request.split(","):
        match = _PROTO_PORT_RE.fullmatch(spec)
        if match is None or int(match[2]) > _MAX_PORT:
            raise SpaError("fields", f"bad proto/port {spec!r}")
        access.append((match[1], int(match[2])))
    return tuple(access)


def _parse_nat(field: bytes) -> str:
    nat = _b64_field(field, "NAT access", _MAX_MESSAGE_FIELD)
    match = _NAT_RE.fullmatch(nat)
    if match is None or int(match[2]) > _MAX_PORT:
        raise SpaError("fields", f"bad NAT access {nat!r}")
    return nat


def _parse_timeout(field: bytes) -> int:
    if not (0 < len(field) <= 5 and field.isdigit() and int(field) <= _MAX_CLIENT_TIMEOUT):
        raise SpaError("fields", "client timeout is not a number of seconds <= 65536")
    return int(field)


def _load_cipher_backend() -> None:
    # cryptography loads its OpenSSL backend lazily, on the first Cipher: ~90 ms here, which would
    # otherwise land on the first SPA packet after a start (the SPA-to-open latency). Pay it at
    # import instead; no I/O, only library initialisation.
    Cipher(algorithms.AES(bytes(32)), modes.CBC(bytes(16))).decryptor().finalize()


_load_cipher_backend()
