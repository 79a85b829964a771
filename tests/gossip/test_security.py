"""Keyring and memberlist AES-GCM framing (notes section 6)."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshnet.errors import PeerError, UserError
from meshnet.gossip.security import Keyring, decode_key, encrypt_overhead, generate_key

K1 = bytes(range(32))
K2 = bytes(range(1, 17))
NONCE = bytes(range(100, 112))


def test_udp_version1_vector_no_aad():
    ring = Keyring([K1])
    blob = ring.encrypt(b"\x00ping", nonce=NONCE)
    assert blob == b"\x01" + NONCE + AESGCM(K1).encrypt(NONCE, b"\x00ping", None)
    assert len(blob) == len(b"\x00ping") + encrypt_overhead() == 5 + 29
    assert ring.decrypt_packet(blob) == b"\x00ping"


def test_version0_pkcs7_decrypt():
    pt = b"hello"
    padded = pt + bytes([11]) * 11
    blob = b"\x00" + NONCE + AESGCM(K1).encrypt(NONCE, padded, None)
    assert Keyring([K1]).decrypt(blob) == pt
    assert encrypt_overhead(0) == 45
    full = b"x" * 16 + bytes([16]) * 16
    blob = b"\x00" + NONCE + AESGCM(K1).encrypt(NONCE, full, None)
    assert Keyring([K1]).decrypt(blob) == b"x" * 16


def test_tcp_form_aad_is_header():
    ring = Keyring([K1])
    framed = ring.encrypt_stream(b"\x06payload")
    assert framed[0] == 10
    (size,) = struct.unpack(">I", framed[1:5])
    assert size == len(framed) - 5 == len(b"\x06payload") + 29
    assert ring.decrypt_stream(framed[:5], framed[5:]) == b"\x06payload"
    nonce = framed[6:18]
    assert AESGCM(K1).decrypt(nonce, framed[18:], framed[:5]) == b"\x06payload"
    with pytest.raises(PeerError):
        ring.decrypt(framed[5:])  # without the AAD it must fail


def test_decrypt_tries_every_key_and_rejects_bad_input():
    old = Keyring([K2])
    blob = old.encrypt(b"data")
    ring = Keyring([K1, K2])
    assert ring.decrypt(blob) == b"data"
    with pytest.raises(PeerError):
        Keyring([K1]).decrypt(blob)
    with pytest.raises(PeerError):
        ring.decrypt(b"\x02" + blob[1:])  # version > 1
    with pytest.raises(PeerError):
        ring.decrypt(b"\x01short")
    bad_pad = b"\x00" + NONCE + AESGCM(K1).encrypt(NONCE, b"x" * 15 + b"\x00", None)
    with pytest.raises(PeerError):
        ring.decrypt(bad_pad)


def test_keyring_operations_like_serf():
    ring = Keyring([K1])
    ring.install(K2)
    assert ring.primary == K1 and ring.keys == [K1, K2]
    ring.use(K2)
    assert ring.primary == K2
    with pytest.raises(UserError):
        ring.remove(K2)  # primary
    ring.remove(K1)
    assert ring.keys == [K2]
    with pytest.raises(UserError):
        ring.use(K1)
    with pytest.raises(UserError):
        ring.install(b"short")


def test_base64_keys():
    key = generate_key()
    assert len(base64.b64decode(key)) == 32
    assert decode_key(key) == base64.b64decode(key)
    assert len(decode_key(base64.b64encode(bytes(24)).decode())) == 24
    with pytest.raises(UserError):
        decode_key("not base64!!")
    with pytest.raises(UserError):
        decode_key(base64.b64encode(bytes(20)).decode())
    ring = Keyring.from_base64([key])
    assert ring.primary == decode_key(key)
