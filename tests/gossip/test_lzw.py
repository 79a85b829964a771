"""Go compress/lzw (LSB, litWidth 8) compatibility: hand-checked vectors and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import PeerError
from meshnet.gossip import lzw


def pack_codes(codes: list[tuple[int, int]]) -> bytes:
    """Independent LSB-first bit packer: [(code, width), ...] -> bytes."""
    acc = 0
    n = 0
    for code, width in codes:
        acc |= code << n
        n += width
    return acc.to_bytes((n + 7) // 8, "little")


def test_vector_leading_clear_as_go_1_19():
    # "abab": clear, 'a', 'b', 258 ("ab"), EOF -- all 9 bits wide.
    want = pack_codes([(256, 9), (97, 9), (98, 9), (258, 9), (257, 9)])
    assert want == bytes.fromhex("00c388111810")
    assert lzw.compress(b"abab", leading_clear=True) == want
    assert lzw.decompress(want) == b"abab"


def test_vector_without_leading_clear():
    want = pack_codes([(97, 9), (98, 9), (258, 9), (257, 9)])
    assert lzw.compress(b"abab") == want
    assert lzw.decompress(want) == b"abab"


def test_vector_kwkwk():
    # "aaaa": 'a', then 258 used before the decoder has it complete ("aa"), 'a', EOF.
    stream = pack_codes([(97, 9), (258, 9), (97, 9), (257, 9)])
    assert lzw.compress(b"aaaa") == stream
    assert lzw.decompress(stream) == b"aaaa"


def test_clear_in_the_middle_resets_dictionary():
    stream = pack_codes([(97, 9), (98, 9), (256, 9), (258, 9)])
    with pytest.raises(PeerError):  # 258 is undefined right after a clear
        lzw.decompress(stream)
    stream = pack_codes([(97, 9), (98, 9), (256, 9), (99, 9), (100, 9), (258, 9), (257, 9)])
    assert lzw.decompress(stream) == b"abcdcd"


def test_width_grows_to_ten_bits_after_255_entries():
    # Code k (1-based after a clear) makes hi = 257 + k; at k = 255 hi hits 512, so
    # from the 256th code on, codes are 10 bits wide.
    data = bytes(i % 256 for i in range(300))
    codes = [(256, 9)] + [(b, 9 if i < 255 else 10) for i, b in enumerate(data)]
    codes.append((257, 10))
    assert lzw.decompress(pack_codes(codes)) == data


def test_twelve_bit_table_freezes_and_clear_restarts():
    # Enough distinct pairs to fill the table: the writer must emit a clear.
    import random

    data = bytes(random.Random(7).randrange(256) for _ in range(20000))
    c = lzw.compress(data)
    assert lzw.decompress(c) == data
    assert lzw.decompress(lzw.compress(b"ab" * 50000)) == b"ab" * 50000


def test_missing_eof_and_invalid_code():
    with pytest.raises(PeerError):
        lzw.decompress(pack_codes([(97, 9), (98, 9)]))
    with pytest.raises(PeerError):
        lzw.decompress(b"")
    with pytest.raises(PeerError):
        lzw.decompress(pack_codes([(97, 9), (300, 9), (257, 9)]))


def test_output_cap():
    bomb = lzw.compress(b"\x00" * 200_000)
    assert len(bomb) < 3000
    with pytest.raises(PeerError):
        lzw.decompress(bomb, max_output=100_000)


def test_trailing_bytes_after_eof_ignored():
    assert lzw.decompress(lzw.compress(b"xyz") + b"\xff\xff") == b"xyz"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_round_trip(data, leading_clear):
    assert lzw.decompress(lzw.compress(data, leading_clear=leading_clear)) == data


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b", b"ab", b"\x00", b"node-1"]), max_size=3000))
def test_round_trip_repetitive(parts):
    data = b"".join(parts)
    assert lzw.decompress(lzw.compress(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_only_raises_peer_error(data):
    try:
        lzw.decompress(data, max_output=1 << 16)
    except PeerError:
        pass
