"""Gossip encryption keys in the form `serf keygen` prints: base64 of 16, 24 or 32 bytes."""

from __future__ import annotations

import base64
import binascii

from meshnet.errors import ConfigError


def decode_key(text: str) -> bytes:
    """Base64 text -> key bytes; a ConfigError names what is wrong."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("invalid encrypt key: not base64 (make one with 'meshnet keys generate')") from None
    if len(key) not in (16, 24, 32):
        raise ConfigError(f"invalid encrypt key: {len(key)} bytes, must be 16, 24 or 32")
    return key
