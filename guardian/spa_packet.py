# fwknop Single Packet Authorization, the sending half: build a packet the real fwknopd 2.6.10
# accepts (and guardian.parsers.spa decodes), and make keys the way `fwknop --key-gen` does.
#
# Pure apart from the randomness defaults (salt, the 16 random digits, key bytes from os.urandom),
# and every one of those can be passed in, so tests build byte-exact packets. It shares the key
# derivation, base64 and HMAC helpers with the decoder, so the two halves cannot drift apart. Only
# the access message types (1, and 3 with a client timeout) are built: NAT and command requests
# are nothing ssh-guardian sends or grants. Inputs are validated against what fwknopd accepts
# (ValueError), so a packet that leaves here is never refused for its syntax.
from __future__ import annotations

import binascii
import os
import secrets
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from guardian.parsers.spa import (
    DIGEST_NAMES,
    HMAC_TAG_LENGTHS,
    IPV4_RE,
    MAX_USERNAME_LENGTH,
    PROTOCOLS,
    SALTED_B64,
    SpaKey,
    b64,
    cipher_key,
    derive_key_iv,
    digest_b64,
    hmac_tag,
)

PROTOCOL_VERSION = "3.0.0"  # what fwknop 2.5 .. 2.6.10 send
KEY_LENGTH = 32  # `fwknop --key-gen`: 32 random bytes for Rijndael
# HMAC key lengths of `fwknop --key-gen --hmac-digest-type X` (the digest's block size for
# sha256/384/512, its output size for md5/sha1). fwknop 2.6.10 refuses to generate keys for sha3
# (a bug: no length in its table); the sha2 sizes of the same width are used, both verified to
# work with the real client.
HMAC_KEY_LENGTHS: dict[str, int] = {
    "md5": 16,
    "sha1": 20,
    "sha256": 64,
    "sha384": 128,
    "sha512": 128,
    "sha3_256": 64,
    "sha3_512": 128,
}
# fwknopd refuses an encoded username field longer than 64 characters: 48 bytes of name.
_MAX_ENCODED_USERNAME = 64
_USERNAME_FORBIDDEN = frozenset('"/\\[]:;|=,+*?<>')
_MAX_MESSAGE_FIELD = 256
_MAX_CLIENT_TIMEOUT = 1 << 16
_RANDOM_DIGITS = 16
_AES_BLOCK = 16


def encode(
    key: SpaKey,
    *,
    username: str,
    allow_ip: str,
    access: Sequence[tuple[str, int]],
    timestamp: int,
    message_type: int = 1,
    client_timeout: int | None = None,
    random_digits: str | None = None,
    salt: bytes | None = None,
    digest: str = "sha256",
) -> bytes:
    """One SPA payload (the UDP datagram's bytes), as `fwknop -A ... -a ALLOW_IP` would send it.

    message_type 1 is an access request; 3 adds `client_timeout` (fwknop's `-f`). `random_digits`
    (16 digits) and `salt` (8 bytes) default to fresh randomness.
    """
    plaintext = _plaintext(
        username=username,
        allow_ip=allow_ip,
        access=access,
        timestamp=timestamp,
        message_type=message_type,
        client_timeout=client_timeout,
        random_digits=_random_digits() if random_digits is None else random_digits,
    )
    return seal(key, plaintext, digest=digest, salt=salt)


def seal(
    key: SpaKey, plaintext: bytes, *, digest: str = "sha256", salt: bytes | None = None
) -> bytes:
    """The wire payload for a plaintext P (without its digest): digest, encrypt, HMAC. encode()
    builds P for access requests; tests use this to make the message types we never send."""
    if digest not in DIGEST_NAMES:
        raise ValueError(f"unknown digest {digest!r} (one of {', '.join(DIGEST_NAMES)})")
    padded_text = plaintext + b":" + digest_b64(digest, plaintext)
    salt = os.urandom(8) if salt is None else salt
    if len(salt) != 8:
        raise ValueError("salt must be 8 bytes")
    aes_key, iv = derive_key_iv(cipher_key(key), salt)
    pad = _AES_BLOCK - len(padded_text) % _AES_BLOCK
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded_text + bytes((pad,)) * pad) + encryptor.finalize()
    salted = b64(b"Salted__" + salt + ciphertext)
    if not salted.startswith(SALTED_B64):  # cannot happen: base64 of a fixed prefix
        raise AssertionError("base64 of the Salted__ blob lost its prefix")
    wire = salted[len(SALTED_B64) :]
    if key.hmac_key is not None:
        wire += hmac_tag(key.hmac_key, key.hmac, salted)
    return wire


def _plaintext(
    *,
    username: str,
    allow_ip: str,
    access: Sequence[tuple[str, int]],
    timestamp: int,
    message_type: int,
    client_timeout: int | None,
    random_digits: str,
) -> bytes:
    """P = RAND:B64(user):TS:VER:MTYPE:B64(msg)[:CTIMEOUT], validated as fwknopd would."""
    if len(random_digits) != _RANDOM_DIGITS or not (
        random_digits.isascii() and random_digits.isdigit()
    ):
        raise ValueError("random_digits must be 16 ASCII digits")
    user_field = _b64_text(username, "username")
    if (
        not username
        or len(username) > MAX_USERNAME_LENGTH
        or len(user_field) > _MAX_ENCODED_USERNAME
        or any(not " " <= c <= "~" or c in _USERNAME_FORBIDDEN for c in username)
    ):
        raise ValueError(f"username {username!r} is not one fwknopd accepts (<= 48 plain chars)")
    if not IPV4_RE.fullmatch(allow_ip):
        raise ValueError(f"allow_ip {allow_ip!r} must be a dotted IPv4 address")
    if not access:
        raise ValueError("access needs at least one (proto, port)")
    for proto, port in access:
        if proto not in PROTOCOLS or not 0 <= port <= 65535:
            raise ValueError(f"bad access entry {proto}/{port}")
    if isinstance(timestamp, bool) or not 0 <= timestamp < 10**12:
        raise ValueError("timestamp must be Unix seconds (0 .. 10**12)")
    message_field = _b64_text(allow_ip + "".join(f",{p}/{n}" for p, n in access), "message")
    if len(message_field) > _MAX_MESSAGE_FIELD:
        raise ValueError("too many access entries for one packet")
    fields = [
        random_digits.encode(),
        user_field,
        str(timestamp).encode(),
        PROTOCOL_VERSION.encode(),
        str(message_type).encode(),
        message_field,
    ]
    if message_type == 1:
        if client_timeout is not None:
            raise ValueError("client_timeout needs message_type 3")
    elif message_type == 3:
        if client_timeout is None or not 0 <= client_timeout <= _MAX_CLIENT_TIMEOUT:
            raise ValueError("message_type 3 needs client_timeout in 0..65536 seconds")
        fields.append(str(client_timeout).encode())
    else:
        raise ValueError(f"message_type {message_type} is not built here (1 or 3)")
    return b":".join(fields)


def _b64_text(text: str, what: str) -> bytes:
    if not text.isascii():
        raise ValueError(f"{what} must be ASCII")
    return b64(text.encode("ascii"))


def _random_digits() -> str:
    return f"{secrets.randbelow(10**_RANDOM_DIGITS):0{_RANDOM_DIGITS}d}"


def generate_keys(
    hmac: str = "sha256", *, randbytes: Callable[[int], bytes] = os.urandom
) -> tuple[str, str]:
    """(KEY_BASE64, HMAC_KEY_BASE64) as `fwknop --key-gen [--hmac-digest-type HMAC]` makes them."""
    if hmac not in HMAC_KEY_LENGTHS:
        raise ValueError(f"unknown HMAC algorithm {hmac!r} (one of {', '.join(HMAC_TAG_LENGTHS)})")
    return _std_b64(randbytes(KEY_LENGTH)), _std_b64(randbytes(HMAC_KEY_LENGTHS[hmac]))


def _std_b64(data: bytes) -> str:
    # --key-gen prints padded base64 ("...=" / "...=="), which access.conf and the client expect.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def render_keygen(key_b64: str, hmac_b64: str) -> str:
    """The text `fwknop --key-gen` prints: access.conf / .fwknoprc lines."""
    return f"KEY_BASE64: {key_b64}\nHMAC_KEY_BASE64: {hmac_b64}\n"
