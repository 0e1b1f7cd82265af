"""The pixark container: one image <-> one self-describing, checksummed byte string. Spec: docs/FORMAT.md.

    magic "\\x89PXK" | version u16 | header length u32 | header (JSON) | CRC32C(all before) u32
    | metadata blobs | payload | CRC32C(metadata + payload) u32

Readers check sizes against hard bounds before allocating, so a bad header cannot make them allocate much.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import crc32c

from .errors import CorruptStream, UnsupportedStream
from .image import MAX_PIXELS, MODES

MAGIC = b"\x89PXK"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_HEADER = 1 << 24  # 16 MiB of JSON: large PNG text chunks fit, a bad length cannot ask for more
_PREFIX = struct.Struct("<4sHI")


@dataclass
class Header:
    codec: str
    codec_version: int
    params: dict
    model_id: str
    height: int
    width: int
    channels: int
    bit_depth: int
    mode: str
    format: str
    pixel_sha256: str
    payload_bytes: int
    blobs: dict[str, int] = field(default_factory=dict)  # metadata blob name -> length, in this order
    info: dict = field(default_factory=dict)  # small metadata: PNG text, dpi, transparency, palette mode

    def to_json(self) -> dict:
        return dict(self.__dict__)


def pack(header: Header, blobs: dict[str, bytes], payload: bytes) -> bytes:
    blobs = dict(sorted(blobs.items()))  # the JSON header lists them sorted; the bytes follow the same order
    header.blobs = {k: len(v) for k, v in blobs.items()}
    header.payload_bytes = len(payload)
    text = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > MAX_HEADER:
        raise ValueError("container header too large (PNG text over 16 MiB?)")
    head = _PREFIX.pack(MAGIC, VERSION, len(text)) + text
    body = b"".join(blobs.values()) + payload
    return head + struct.pack("<I", crc32c.crc32c(head)) + body + struct.pack("<I", crc32c.crc32c(body))


def read_header(data: bytes) -> tuple[Header, int]:
    """Parse and check the header. Returns it and the offset where the metadata blobs start."""
    data = memoryview(data)
    if len(data) < _PREFIX.size:
        raise CorruptStream(f"not a pixark stream: {len(data)} bytes is shorter than the fixed header")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptStream("not a pixark stream (bad magic bytes)")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedStream(
            f"container format version {version} is not supported by this pixark (supports {SUPPORTED_VERSIONS}); "
            "upgrade pixark to decode it"
        )
    end = _PREFIX.size + hlen
    if hlen > MAX_HEADER or end + 4 > len(data):
        raise CorruptStream("truncated stream: header runs past the end of the data")
    (crc,) = struct.unpack_from("<I", data, end)
    if crc != crc32c.crc32c(data[:end]):
        raise CorruptStream("header checksum mismatch: the stream is damaged")
    try:
        fields = json.loads(bytes(data[_PREFIX.size : end]).decode())
        header = Header(**fields)
    except (ValueError, TypeError) as exc:
        raise CorruptStream(f"unreadable container header: {exc}") from exc
    _check(header)
    return header, end + 4


def unpack(data: bytes) -> tuple[Header, dict[str, bytes], bytes]:
    """Header, metadata blobs and payload, with every length and checksum checked."""
    header, start = read_header(data)
    body_len = sum(header.blobs.values()) + header.payload_bytes
    if len(data) != start + body_len + 4:
        what = "truncated" if len(data) < start + body_len + 4 else "has trailing bytes"
        raise CorruptStream(f"stream {what}: expected {start + body_len + 4} bytes, got {len(data)}")
    body = memoryview(data)[start : start + body_len]
    (crc,) = struct.unpack_from("<I", data, start + body_len)
    if crc != crc32c.crc32c(body):
        raise CorruptStream("payload checksum mismatch: the stream is damaged")
    blobs, pos = {}, 0
    for name, n in header.blobs.items():
        blobs[name] = bytes(body[pos : pos + n])
        pos += n
    return header, blobs, bytes(body[pos:])


def _check(h: Header) -> None:
    ints = (h.codec_version, h.height, h.width, h.channels, h.bit_depth, h.payload_bytes)
    if not all(isinstance(v, int) and v >= 0 for v in ints) or not isinstance(h.params, dict):
        raise CorruptStream("container header has fields of the wrong type")
    if not all(isinstance(v, int) and v >= 0 for v in h.blobs.values()):
        raise CorruptStream("container header has bad metadata lengths")
    if h.pixel_sha256:  # the stream claims pixels: their description must be sane before anything allocates
        if h.height * h.width > MAX_PIXELS or h.height == 0 or h.width == 0:
            raise CorruptStream(f"implausible image size {h.width}x{h.height} in header")
        if MODES.get(h.mode) != (h.channels, f"uint{h.bit_depth}"):
            raise CorruptStream(f"header mode {h.mode!r} does not match {h.channels} channels of {h.bit_depth} bits")
