"""Gossip keyring and memberlist's AES-GCM framing.

Design notes
------------
* :class:`Keyring` mirrors serf's: a list of 16/24/32-byte AES keys; index 0 is the
  *primary* key that encrypts; decryption tries every key. ``install`` adds a key,
  ``use`` makes an installed key primary, ``remove`` refuses to drop the primary.
  Keys travel as base64, exactly what ``serf keygen`` prints.
* Encrypted blob = ``[version][nonce 12][ciphertext || tag 16]``. We always send
  version 1 (no padding, what memberlist protocol >= 2 uses); we accept version 0
  (PKCS#7 padded to 16 bytes) and version 1.
* UDP: the datagram *is* the blob, no AAD (memberlist v0.2.2 has no labels).
  TCP: ``[10][len u32 BE][blob]`` with AAD = those 5 header bytes.
* Nonces come from ``os.urandom``: with AES-GCM a repeated nonce under one key is
  fatal, so they must not come from a seeded test RNG. Tests may pass ``nonce=``.
* ``cryptography`` is imported when the first key is installed: an agent without a key
  never loads it (about 7 MB of resident memory).
* Every failure to decrypt raises :class:`~meshnet.gossip.messages.DecodeError`
  with reason ``decrypt_failed``; misuse (bad key size) raises ``UserError``.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from typing import TYPE_CHECKING

from meshnet.errors import UserError
from meshnet.gossip.messages import ENCRYPT, DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12
TAG_SIZE = 16
BLOCK_SIZE = 16
MAX_ENCRYPTION_VERSION = 1
KEY_SIZES = (16, 24, 32)


def encrypt_overhead(version: int = 1) -> int:
    """Bytes added by encryption: 29 for version 1, 45 for padded version 0."""
    return 1 + NONCE_SIZE + TAG_SIZE + (BLOCK_SIZE if version == 0 else 0)


def decode_key(text: str) -> bytes:
    """Parse a base64 key as printed by ``serf keygen``; UserError if invalid."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"gossip key is not valid base64: {text!r}") from None
    _check_key(key)
    return key


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def generate_key() -> str:
    """A fresh 32-byte key in base64, like ``serf keygen``."""
    return encode_key(os.urandom(32))


def _check_key(key: bytes) -> None:
    if len(key) not in KEY_SIZES:
        raise UserError(f"gossip key must be 16, 24 or 32 bytes, got {len(key)}")


class Keyring:
    """An ordered set of AES keys; ``keys[0]`` is primary."""

    def __init__(self, keys: list[bytes] | None = None, primary: bytes | None = None) -> None:
        self._keys: list[bytes] = []
        self._aead: dict[bytes, AESGCM] = {}
        for k in keys or []:
            self.install(k)
        if primary is not None:
            self.install(primary)
            self.use(primary)

    @classmethod
    def from_base64(cls, keys: list[str]) -> Keyring:
        return cls([decode_key(k) for k in keys])

    @property
    def keys(self) -> list[bytes]:
        return list(self._keys)

    @property
    def primary(self) -> bytes:
        if not self._keys:
            raise UserError("keyring is empty")
        return self._keys[0]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def install(self, key: bytes) -> None:
        """Add ``key`` (no-op if present). The first key installed becomes primary."""
        _check_key(key)
        if key not in self._keys:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._keys.append(key)
            self._aead[key] = AESGCM(key)

    def use(self, key: bytes) -> None:
        """Make an installed key primary."""
        if key not in self._keys:
            raise UserError("key is not installed in the keyring")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Remove a key; the primary key cannot be removed (like serf)."""
        if self._keys and key == self._keys[0]:
            raise UserError("removing the primary key is not allowed")
        if key not in self._keys:
            raise UserError("key is not installed in the keyring")
        self._keys.remove(key)
        del self._aead[key]

    # -- encryption -------------------------------------------------------

    def encrypt(self, plaintext: bytes, aad: bytes = b"", *, nonce: bytes | None = None,
                version: int = 1) -> bytes:
        """Encrypt with the primary key into ``[version][nonce][ct||tag]``."""
        if version not in (0, 1):
            raise ValueError(f"unsupported encryption version {version}")
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError("nonce must be 12 bytes")
        if version == 0:
            pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE
            plaintext = plaintext + bytes([pad]) * pad
        ct = self._aead[self.primary].encrypt(nonce, plaintext, aad or None)
        return bytes([version]) + nonce + ct

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Try every key; raise DecodeError(reason='decrypt_failed') if none works."""
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE:
            raise DecodeError("encrypted payload too short", "decrypt_failed")
        version = blob[0]
        if version > MAX_ENCRYPTION_VERSION:
            raise DecodeError(f"unsupported encryption version {version}", "decrypt_failed")
        nonce = blob[1 : 1 + NONCE_SIZE]
        ct = blob[1 + NONCE_SIZE :]
        from cryptography.exceptions import InvalidTag

        for key in self._keys:
            try:
                plain = self._aead[key].decrypt(nonce, ct, aad or None)
            except InvalidTag:
                continue
            if version == 0:
                return _pkcs7_unpad(plain)
            return plain
        raise DecodeError("no installed key decrypts the payload", "decrypt_failed")

    # -- memberlist framings ---------------------------------------------

    def encrypt_packet(self, packet: bytes) -> bytes:
        """UDP form: the whole datagram is the blob, no AAD."""
        return self.encrypt(packet)

    def decrypt_packet(self, data: bytes) -> bytes:
        return self.decrypt(data)

    def encrypt_stream(self, message: bytes) -> bytes:
        """TCP form: ``[10][len u32 BE][blob]``, AAD = the 5 header bytes."""
        size = len(message) + encrypt_overhead(1)
        header = struct.pack(">BI", ENCRYPT, size)
        return header + self.encrypt(message, aad=header)

    def decrypt_stream(self, header: bytes, blob: bytes) -> bytes:
        return self.decrypt(blob, aad=header)


def _pkcs7_unpad(data: bytes) -> bytes:
    if not data:
        raise DecodeError("padded payload is empty", "decrypt_failed")
    pad = data[-1]
    if pad == 0 or pad > BLOCK_SIZE or pad > len(data):
        raise DecodeError("bad PKCS#7 padding", "decrypt_failed")
    return data[:-pad]
