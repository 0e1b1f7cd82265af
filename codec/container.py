"""The pixark container: one image <-> one self-describing, checksummed byte string. Spec: docs/FORMAT.md.

    magic "\\x89PXK" | version u16 | header length u32 | header (JSON) | CRC32C(all before) u32
    | metadata blobs | payload | CRC32C(metadata + payload) u32

Version 2 adds ``content_sha256`` to the header: a hash of the rest of the header, the metadata blobs and the
payload, so metadata (palette, ICC, EXIF, text) and stored bytes are covered by a hash like the pixels are, and
PNG text moves out of the JSON header into a ``text`` blob. Version 1 streams keep decoding.

Readers check every header field's type, and sizes against hard bounds, before allocating, so a bad header
cannot make them allocate much or fail with anything but CorruptStream.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field

import crc32c

from .errors import CorruptStream, UnsupportedStream
from .image import MAX_PIXELS, MODES

MAGIC = b"\x89PXK"
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAX_HEADER = 1 << 24  # 16 MiB of JSON: large PNG text chunks fit, a bad length cannot ask for more
_PREFIX = struct.Struct("<4sHI")
# Codecs whose streams may hold a file kept as its bytes, with no pixel hash: store (the bytes themselves) and
# lepton (a JPEG recompressed; its params carry the file's sha256, which its decoder checks).
FILE_CODECS = ("store", "lepton")


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
    info: dict = field(default_factory=dict)  # small metadata: dpi, transparency, palette mode (v1: PNG text)
    content_sha256: str = ""  # version 2: sha256 of the header without this field, the blobs and the payload

    def to_json(self) -> dict:
        return dict(self.__dict__)


def pack(header: Header, blobs: dict[str, bytes], payload: bytes) -> bytes:
    blobs = dict(sorted(blobs.items()))  # the JSON header lists them sorted; the bytes follow the same order
    header.blobs = {k: len(v) for k, v in blobs.items()}
    header.payload_bytes = len(payload)
    header.content_sha256 = content_sha256(header, blobs, payload)
    text = _json(header.to_json())
    if len(text) > MAX_HEADER:
        raise ValueError("container header too large (metadata over 16 MiB outside the blobs?)")
    head = _PREFIX.pack(MAGIC, VERSION, len(text)) + text
    body = b"".join(blobs.values()) + payload
    return head + struct.pack("<I", crc32c.crc32c(head)) + body + struct.pack("<I", crc32c.crc32c(body))


def _json(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_sha256(header: Header, blobs: dict[str, bytes], payload: bytes) -> str:
    """sha256 of the header's JSON without ``content_sha256``, then the blobs in stream order, then the payload."""
    fields = header.to_json()
    fields.pop("content_sha256", None)
    h = hashlib.sha256(_json(fields))
    for blob in blobs.values():
        h.update(blob)
    h.update(payload)
    return h.hexdigest()


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
        if not isinstance(fields, dict):
            raise TypeError(f"a JSON {type(fields).__name__}, not an object")
        if version == 1 and "content_sha256" in fields:
            raise TypeError("content_sha256 in a version 1 header")
        header = Header(**fields)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptStream(f"unreadable container header: {exc}") from exc
    _check(header, version)
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
    payload = bytes(body[pos:])
    if header.content_sha256 and content_sha256(header, blobs, payload) != header.content_sha256:
        raise CorruptStream("content hash mismatch: the header, metadata or payload is damaged")
    return header, blobs, payload


_STR_FIELDS = ("codec", "model_id", "mode", "format", "pixel_sha256", "content_sha256")
_INT_FIELDS = ("codec_version", "height", "width", "channels", "bit_depth", "payload_bytes")
_SHA256 = re.compile("[0-9a-f]{64}")


def _count(v) -> bool:
    return type(v) is int and 0 <= v < 1 << 62  # bool is no count; the bound keeps products exact and small


def _check(h: Header, version: int = VERSION) -> None:
    """Every field of the right type and within bounds, so nothing downstream fails on a damaged header with
    anything but CorruptStream, or allocates for sizes the stream cannot hold."""
    if not (all(isinstance(getattr(h, k), str) for k in _STR_FIELDS)
            and all(_count(getattr(h, k)) for k in _INT_FIELDS)):
        raise CorruptStream("container header has fields of the wrong type")
    if not isinstance(h.params, dict) or not isinstance(h.info, dict) or not isinstance(h.blobs, dict):
        raise CorruptStream("container header has fields of the wrong type")
    if not all(isinstance(k, str) and _count(v) for k, v in h.blobs.items()):
        raise CorruptStream("container header has bad metadata lengths")
    if version >= 2 and not _SHA256.fullmatch(h.content_sha256):
        raise CorruptStream("container header lacks its content hash")
    _check_info(h.info)
    if h.height * h.width > MAX_PIXELS:
        raise CorruptStream(f"implausible image size {h.width}x{h.height} in header")
    if not h.pixel_sha256:  # only a file kept as its bytes has no pixel hash: nothing to decode, no size
        if h.codec not in FILE_CODECS or h.params.get("raw") or h.height or h.width or h.channels or h.bit_depth:
            raise CorruptStream("container header lacks the pixel hash (only a file kept as its bytes may)")
        return
    if not _SHA256.fullmatch(h.pixel_sha256):
        raise CorruptStream("container header has a malformed pixel hash")
    if h.height == 0 or h.width == 0:
        raise CorruptStream(f"implausible image size {h.width}x{h.height} in header")
    if MODES.get(h.mode) != (h.channels, f"uint{h.bit_depth}"):
        raise CorruptStream(f"header mode {h.mode!r} does not match {h.channels} channels of {h.bit_depth} bits")


def _check_info(info: dict) -> None:
    """The small metadata items restore writes back must have the types the writer gives them."""
    ok = (isinstance(info.get("text", {}), dict) and all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in info.get("text", {}).items())
          and info.get("palette_mode", "") in ("", "RGB", "RGBA"))
    if "dpi" in info:
        dpi = info["dpi"]
        ok = ok and isinstance(dpi, list) and len(dpi) == 2 and all(type(v) in (int, float) and 0 < v < 1e9
                                                                    for v in dpi)
    if "transparency" in info:
        t = info["transparency"]
        ok = ok and (_count(t) or (isinstance(t, str) and len(t) % 2 == 0 and re.fullmatch("[0-9a-f]*", t) is not None)
                     or (isinstance(t, list) and len(t) <= 4 and all(_count(v) for v in t)))
    if not ok:
        raise CorruptStream("container header has metadata of the wrong type")
