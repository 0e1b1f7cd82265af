"""Image dimensions read from a classical payload's own header, before a library decodes it.

The container's header is bounded and checksummed, but a crafted payload with valid checksums could still carry
an inner PNG/WebP/JPEG XL header announcing a huge image, and libpng/libwebp/libjxl would allocate for it. The
classical decoders compare these inner dimensions with the container's first. Each function returns
(width, height), or None for a layout it does not know (then the library's own limits are all that applies).
"""

from __future__ import annotations

import struct

JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1 and height-1, little endian bits
        v = int.from_bytes(data[21:25], "little")
        return (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame: 14-bit sizes
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


class _Bits:
    """LSB-first bit reader (JPEG XL's bit order)."""

    def __init__(self, data: bytes, start: int):
        self.v = int.from_bytes(data[start:start + 16], "little")
        self.pos = 0

    def u(self, n: int) -> int:
        out = (self.v >> self.pos) & ((1 << n) - 1)
        self.pos += n
        return out

    def u32_size(self) -> int:  # U32(Bits(9), Bits(13), Bits(18), Bits(30))
        return self.u((9, 13, 18, 30)[self.u(2)])


def _jxl_codestream(data: bytes) -> int | None:
    """Offset of the codestream's 0xFF0A signature: bare codestream, or the first jxlc/jxlp box of the container."""
    if data[:2] == b"\xff\x0a":
        return 0
    if data[:12] != b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return None
    pos = 12
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1 and pos + 16 <= len(data):
            size, head = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        body = pos + head + (4 if kind == b"jxlp" else 0)  # jxlp starts with a 4-byte part index
        if kind in (b"jxlc", b"jxlp"):
            return body if data[body:body + 2] == b"\xff\x0a" else None
        if size == 0 or size < head:
            return None
        pos += size
    return None


def jxl_size(data: bytes) -> tuple[int, int] | None:
    start = _jxl_codestream(data)
    if start is None or len(data) < start + 12:
        return None
    b = _Bits(data, start + 2)
    small = b.u(1)
    h = 8 * (b.u(5) + 1) if small else b.u32_size() + 1
    ratio = b.u(3)
    if ratio:
        num, den = JXL_RATIOS[ratio]
        return h * num // den, h
    w = 8 * (b.u(5) + 1) if small else b.u32_size() + 1
    return w, h
