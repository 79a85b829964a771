"""LZW as Go's ``compress/lzw`` writes and reads it (LSB order, literal width 8).

Design notes
------------
* This is the flavour memberlist uses for its ``compress`` message (type 9): codes
  0..255 are literals, 256 is *clear*, 257 is *EOF*, the first dictionary code is
  258, codes start 9 bits wide and grow to at most 12 bits. Bits are packed
  little-endian (each code is OR-ed in at the current bit offset; low byte first).
* Decoder: a clear code may appear anywhere (Go 1.19's writer starts every stream
  with one). After a clear there is no "previous code", so the next code adds no
  dictionary entry. The KwKwK case (code == next free slot) is handled. When the
  next-code counter reaches ``1 << width`` the width grows; at 12 bits the table
  freezes until the next clear. A stream that ends without EOF is an error.
* Encoder: same rules as Go's writer but without the leading clear code (serf
  0.9.4 accepts either). It emits a clear and resets when the counter reaches 4095.
* Every malformed input raises :class:`~meshnet.errors.PeerError`; the output size
  is capped (``max_output``) so a small hostile stream cannot blow up memory.
* Pure Python. Entries are stored as whole ``bytes`` strings (at most 4096 of
  them, each at most 4096 bytes long), which is faster in CPython than walking
  prefix chains.
"""

from __future__ import annotations

from meshnet.errors import PeerError

LIT_WIDTH = 8
CLEAR = 1 << LIT_WIDTH  # 256
EOF = CLEAR + 1  # 257
MAX_WIDTH = 12
MAX_CODE = (1 << MAX_WIDTH) - 1  # 4095
DEFAULT_MAX_OUTPUT = 40 * 1024 * 1024

_LITERALS = [bytes([i]) for i in range(256)]


class LzwError(PeerError):
    """A malformed or oversized LZW stream."""


def compress(data: bytes, *, leading_clear: bool = False) -> bytes:
    """Compress ``data`` exactly as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` would.

    ``leading_clear=True`` reproduces the Go >= 1.19 writer byte for byte (it
    starts with a clear code); the default omits it, as older Go did.
    """
    out = bytearray()
    acc = 0  # pending bits, LSB first
    nacc = 0
    width = LIT_WIDTH + 1
    if leading_clear or not data:
        acc, nacc = CLEAR, width
    if not data:
        acc |= EOF << nacc
        nacc += width
        return (acc.to_bytes((nacc + 7) // 8, "little"))

    table: dict[int, int] = {}
    get = table.get
    hi = EOF
    overflow = 1 << (LIT_WIDTH + 1)
    code = data[0]
    for x in memoryview(data)[1:]:
        key = (code << 8) | x
        hit = get(key)
        if hit is not None:
            code = hit
            continue
        acc |= code << nacc
        nacc += width
        if nacc >= 64:
            out += (acc & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
            acc >>= 64
            nacc -= 64
        code = x
        hi += 1  # incHi: the next implied code
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == MAX_CODE:
            acc |= CLEAR << nacc
            nacc += width
            width = LIT_WIDTH + 1
            hi = EOF
            overflow = 1 << (LIT_WIDTH + 1)
            table.clear()
            continue
        table[key] = hi
    # Close: the pending code, then incHi, then EOF and the final partial byte.
    acc |= code << nacc
    nacc += width
    hi += 1
    if hi == overflow:
        width += 1
    if hi == MAX_CODE:
        acc |= CLEAR << nacc
        nacc += width
        width = LIT_WIDTH + 1
    acc |= EOF << nacc
    nacc += width
    out += acc.to_bytes((nacc + 7) // 8, "little")
    return bytes(out)


def decompress(data: bytes, *, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
    """Decompress a Go LSB/8 LZW stream; raise :class:`LzwError` if malformed.

    Bytes after the EOF code are ignored (Go stops reading there too).
    """
    out = bytearray()
    table: list[bytes] = list(_LITERALS) + [b"", b""]  # 256 clear, 257 eof placeholders
    width = LIT_WIDTH + 1
    mask = (1 << width) - 1
    hi = EOF
    overflow = 1 << width
    last: bytes | None = None  # expansion of the previous code; None after a clear
    frozen = False  # table full at 12 bits: add nothing until the next clear
    bits = 0
    nbits = 0
    pos = 0
    n = len(data)
    while True:
        if nbits < width:
            if pos >= n:
                raise LzwError("lzw: stream ends without EOF code")
            chunk = data[pos : pos + 6]
            bits |= int.from_bytes(chunk, "little") << nbits
            pos += len(chunk)
            nbits += 8 * len(chunk)
            if nbits < width:
                raise LzwError("lzw: stream ends without EOF code")
        code = bits & mask
        bits >>= width
        nbits -= width

        if code < CLEAR:
            cur = _LITERALS[code]
        elif code == CLEAR:
            del table[EOF + 1 :]
            width = LIT_WIDTH + 1
            mask = (1 << width) - 1
            hi = EOF
            overflow = 1 << width
            last = None
            frozen = False
            continue
        elif code == EOF:
            return bytes(out)
        elif code < len(table):
            cur = table[code]
        elif code == hi and last is not None and not frozen:
            cur = last + last[:1]  # KwKwK
        else:
            raise LzwError(f"lzw: invalid code {code}")

        out += cur
        if len(out) > max_output:
            raise LzwError(f"lzw: output exceeds {max_output} bytes")
        if last is not None and not frozen:
            table.append(last + cur[:1])
        hi += 1
        last = cur
        if hi >= overflow:
            if width == MAX_WIDTH:
                # Table full: keep decoding with it, add no entries until a clear.
                hi -= 1
                frozen = True
            else:
                width += 1
                mask = (1 << width) - 1
                overflow = 1 << width
