"""Byte-exact PNG files from pixels: the recipe that rewrites a PNG file exactly as it was.

A PNG file is its pixels filtered row by row, deflated with zlib and cut into IDAT chunks, between chunks that
hold everything else. Given the pixels, what remains to say is small: the other chunks as they were (their order,
contents and CRCs), each row's filter type, the zlib parameters (level, window, memLevel, strategy) and the IDAT
chunk sizes. ``make`` reads these from the file, searches the zlib parameters that reproduce its deflate stream,
then proves the recipe by rewriting the file from the pixels and comparing sha256; ``rewrite`` does the same at
restore time. A file whose stream no stdlib-zlib setting reproduces (written by libdeflate, zlib-ng, zopfli,
another zlib version, a stream cut into several zlib streams ...), an interlaced file, or anything odd gets no
recipe: it restores pixel-exact, as every recoded image did before.

Recipe (a container blob, ``png_recipe``; spec in docs/FORMAT.md):

    b"PXPNG" | version u8 (1) | JSON length u32 (big-endian) | JSON | zlib(skeleton + filter bytes)

JSON: level, wbits, mem_level, strategy (zlib's deflateInit2 arguments), skeleton (its length), rows, bytes and
sha256 (of the file), zlib (the zlib version that made it). The skeleton is the file with each IDAT chunk's data
and CRC left out (its length and type kept), plus anything after IEND as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import CodecError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAGIC = b"PXPNG"
VERSION = 1
BLOB = "png_recipe"  # the container blob that holds a recipe
MAX_SKELETON = 1 << 28  # non-IDAT chunks of a PNG restore can rewrite; a bad length cannot ask for more
# Search effort: compressing with the wrong parameters is abandoned at the first output byte that differs, but a
# very compressible image may emit nothing for a long while; past this many times the raw size fed to all the
# candidates together, give up (the file restores pixel-exact).
SEARCH_BUDGET = 6
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_SHA256 = re.compile("[0-9a-f]{64}")
# The settings PNG writers use, tried first (measured: Pillow 13 writes level 6, or compress_level, or 9 with
# optimize=True, memLevel 9, Z_FILTERED unless no row is filtered; libpng 1.6 (imagecodecs.png_encode) level 6,
# memLevel 8, default strategy; libspng level 6, memLevel 8, Z_FILTERED). Then the same at the other levels; the
# search tries every other stdlib setting (Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED) last.
_LIKELY = [(lv, st, ml) for lv in (6, 9, 1, 2, 3, 4, 5, 7, 8, 0) for st, ml in ((1, 9), (0, 9), (0, 8), (1, 8))]


class NotReproducible(CodecError):
    """Why a PNG file gets no recipe, or why a recipe does not give the file back here."""


@dataclass
class Recipe:
    level: int
    wbits: int
    mem_level: int
    strategy: int
    skeleton: bytes
    filters: bytes
    bytes: int
    sha256: str
    zlib: str = zlib.ZLIB_RUNTIME_VERSION

    def pack(self) -> bytes:
        head = json.dumps({"level": self.level, "wbits": self.wbits, "mem_level": self.mem_level,
                           "strategy": self.strategy, "skeleton": len(self.skeleton), "rows": len(self.filters),
                           "bytes": self.bytes, "sha256": self.sha256, "zlib": self.zlib},
                          sort_keys=True, separators=(",", ":")).encode()
        return (MAGIC + bytes([VERSION]) + struct.pack(">I", len(head)) + head
                + zlib.compress(self.skeleton + self.filters, 9))

    @classmethod
    def unpack(cls, blob: bytes) -> "Recipe":
        """The recipe in ``blob``; ValueError saying what is wrong with a damaged one."""
        if blob[:5] != MAGIC or len(blob) < 10:
            raise ValueError("not a PNG recipe")
        if blob[5] != VERSION:
            raise ValueError(f"PNG recipe version {blob[5]} is not supported (this build reads {VERSION})")
        (n,) = struct.unpack_from(">I", blob, 6)
        try:
            head = json.loads(blob[10:10 + n].decode())
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"unreadable PNG recipe: {exc}") from exc
        ints = ("level", "wbits", "mem_level", "strategy", "skeleton", "rows", "bytes")
        if not (isinstance(head, dict) and all(type(head.get(k)) is int and head[k] >= 0 for k in ints)
                and isinstance(head.get("sha256"), str) and _SHA256.fullmatch(head["sha256"])
                and isinstance(head.get("zlib"), str) and head["skeleton"] <= MAX_SKELETON
                and head["rows"] < 1 << 31 and head["level"] <= 9 and 9 <= head["wbits"] <= 15
                and 1 <= head["mem_level"] <= 9 and head["strategy"] <= 4):
            raise ValueError("PNG recipe has fields of the wrong type or out of range")
        want = head["skeleton"] + head["rows"]
        try:
            d = zlib.decompressobj()
            body = d.decompress(blob[10 + n:], want + 1)
        except zlib.error as exc:
            raise ValueError(f"PNG recipe does not decompress: {exc}") from exc
        if len(body) != want or not d.eof or d.unused_data:
            raise ValueError("PNG recipe is truncated or has trailing bytes")
        k = head["skeleton"]
        return cls(head["level"], head["wbits"], head["mem_level"], head["strategy"], body[:k], body[k:],
                   head["bytes"], head["sha256"], head["zlib"])


# ----------------------------------------------------------------------------------------------- archive time
def make(data: bytes, pixels: np.ndarray, mode: str) -> bytes:
    """The packed recipe that rewrites the PNG file ``data`` from ``pixels`` (as pixark decoded them, in pixark
    ``mode``), proven by rewriting it. Raises NotReproducible saying why not."""
    chunks, trailing = _chunks(data)
    ihdr = _ihdr(chunks)
    idat = b"".join(bytes(body) for kind, body, _ in chunks if kind == b"IDAT")
    rows = _rows(pixels, mode, ihdr)
    height, stride = rows.shape
    if len(idat) < 2 or idat[0] & 0x0F != 8 or (idat[0] << 8 | idat[1]) % 31 or idat[1] & 0x20:
        raise NotReproducible("IDAT does not start with a plain zlib header")
    wbits = (idat[0] >> 4) + 8
    d = zlib.decompressobj(wbits)
    try:
        raw = d.decompress(idat, height * (stride + 1) + 1)
    except zlib.error as exc:
        raise NotReproducible(f"IDAT does not inflate: {exc}") from exc
    if len(raw) != height * (stride + 1) or not d.eof or d.unused_data:
        raise NotReproducible("IDAT holds more or less than one zlib stream of the image's rows")
    filters = bytes(raw[:: stride + 1])
    if max(filters) > 4:
        raise NotReproducible("a row has an unknown filter type")
    stream = _filtered(rows, filters, ihdr)
    if stream != raw:
        raise NotReproducible("the pixels filtered again do not give the file's rows")
    found = _search(stream, idat, wbits, idat[1] >> 6)
    if found is None:
        raise NotReproducible("no stdlib zlib setting reproduces the deflate stream (another deflate library?)")
    level, strategy, mem_level = found
    skeleton = SIGNATURE + b"".join(struct.pack(">I", len(body)) + kind if kind == b"IDAT" else whole
                                    for kind, body, whole in chunks) + trailing
    recipe = Recipe(level, wbits, mem_level, strategy, skeleton, filters, len(data), hashlib.sha256(data).hexdigest())
    blob = recipe.pack()
    rewrite(pixels, mode, blob)  # the proof: restore's own path gives the file back, or no recipe
    return blob


def _search(stream: bytes, target: bytes, wbits: int, flevel: int) -> tuple[int, int, int] | None:
    """(level, strategy, memLevel) whose deflate of ``stream`` is ``target``, or None. Settings whose zlib header
    differs from ``target``'s are never tried; the others one by one, the settings PNG writers use first. Each is
    fed the input in 64 kB pieces and dropped at its first output byte that differs from ``target``, so a wrong
    setting costs about one deflate block, not the whole image; past SEARCH_BUDGET times the input fed in all,
    give up."""
    cands = [(lv, st, ml) for lv in range(10) for st in range(5) for ml in (9, 8) if _flevel(lv, st) == flevel]
    cands.sort(key=lambda c: _LIKELY.index(c) if c in _LIKELY else len(_LIKELY))
    budget = SEARCH_BUDGET * max(len(stream), 1 << 20)
    for level, strategy, mem_level in cands:
        obj = zlib.compressobj(level, zlib.DEFLATED, wbits, mem_level, strategy)
        pos, step, n = 0, 1 << 16, 0
        while pos < len(stream):
            out = obj.compress(stream[pos:pos + step])
            pos += step
            if out != target[n:n + len(out)]:
                break
            n += len(out)
        else:
            if obj.flush() == target[n:]:
                return level, strategy, mem_level
        budget -= min(pos, len(stream))
        if budget <= 0:
            return None
    return None


def _flevel(level: int, strategy: int) -> int:
    """The FLEVEL bits zlib writes in its header for these settings (deflate.c)."""
    if strategy >= 2 or level < 2:
        return 0
    return 1 if level < 6 else 2 if level == 6 else 3


# ----------------------------------------------------------------------------------------------- restore time
def rewrite(pixels: np.ndarray, mode: str, blob: bytes) -> bytes:
    """The PNG file a recipe describes, written from ``pixels``; its sha256 checked against the recipe's.
    Raises NotReproducible (a damaged recipe, or a zlib here that deflates differently)."""
    try:
        r = Recipe.unpack(blob)
    except ValueError as exc:
        raise NotReproducible(str(exc)) from exc
    try:
        chunks, trailing = _chunks(r.skeleton, skeleton=True)
        ihdr = _ihdr(chunks)
        rows = _rows(pixels, mode, ihdr)
    except NotReproducible as exc:
        raise NotReproducible(f"PNG recipe does not fit these pixels: {exc}") from exc
    if rows.shape[0] != len(r.filters) or max(r.filters, default=0) > 4:
        raise NotReproducible("PNG recipe's filter types do not fit these pixels")
    c = zlib.compressobj(r.level, zlib.DEFLATED, r.wbits, r.mem_level, r.strategy)
    idat = c.compress(_filtered(rows, r.filters, ihdr)) + c.flush()
    parts, pos = [SIGNATURE], 0
    for kind, body, whole in chunks:
        if kind == b"IDAT":
            n = body  # in a skeleton an IDAT's body is its length (see _chunks)
            piece = idat[pos:pos + n]
            pos += n
            parts.append(struct.pack(">I", n) + kind + piece + struct.pack(">I", zlib.crc32(kind + piece)))
        else:
            parts.append(whole)
    out = b"".join(parts) + trailing
    if pos != len(idat) or len(out) != r.bytes or hashlib.sha256(out).hexdigest() != r.sha256:
        here = zlib.ZLIB_RUNTIME_VERSION
        why = "" if here == r.zlib else f" (recipe made with zlib {r.zlib}, this is zlib {here})"
        raise NotReproducible(f"the PNG file rewritten from its pixels is not the archived file{why}")
    return out


# ----------------------------------------------------------------------------------------------- PNG structure
def _chunks(data: bytes, skeleton: bool = False) -> tuple[list[tuple[bytes, bytes, bytes]], bytes]:
    """[(type, body, whole chunk bytes)] up to IEND, and the bytes after it. In a skeleton (``skeleton``) an IDAT
    chunk is its length and type only: its body is that length (an int)."""
    view = memoryview(data)
    if bytes(view[:8]) != SIGNATURE:
        raise NotReproducible("no PNG signature")
    out, pos = [], 8
    while True:
        if pos + 8 > len(view):
            raise NotReproducible("chunks end without IEND")
        n, kind = struct.unpack_from(">I4s", view, pos)
        if kind == b"IDAT" and skeleton:
            out.append((kind, n, b""))
            pos += 8
            continue
        end = pos + 12 + n
        if n > 1 << 31 or end > len(view):
            raise NotReproducible(f"chunk {kind!r} runs past the end of the file")
        out.append((kind, view[pos + 8:end - 4], bytes(view[pos:end])))
        pos = end
        if kind == b"IEND":
            return out, bytes(view[pos:])


def _ihdr(chunks) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) of a plain PNG pixark can rewrite."""
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise NotReproducible("IHDR is not the first chunk")
    w, h, depth, colour, method, filt, interlace = struct.unpack(">IIBBBBB", bytes(chunks[0][1]))
    if interlace:
        raise NotReproducible("interlaced (Adam7) PNG")
    if colour not in _CHANNELS or depth not in (1, 2, 4, 8, 16) or method or filt:
        raise NotReproducible(f"unusual IHDR (colour type {colour}, bit depth {depth})")
    if any(kind in (b"acTL", b"fdAT") for kind, _, _ in chunks):
        raise NotReproducible("animated PNG")
    return w, h, depth, colour


def _rows(pixels: np.ndarray, mode: str, ihdr) -> np.ndarray:
    """The image's unfiltered scanlines (H x bytes per row, uint8) from pixark's pixels."""
    w, h, depth, colour = ihdr
    ch = _CHANNELS[colour]
    if pixels.shape != (h, w, ch) or pixels.dtype != (np.uint16 if depth == 16 else np.uint8):
        raise NotReproducible(f"pixels {pixels.shape} {pixels.dtype} do not match IHDR ({w}x{h}, colour type "
                              f"{colour}, {depth} bits)")
    if depth == 16:
        return np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(h, w * ch * 2)
    if depth == 8:
        return np.ascontiguousarray(pixels).reshape(h, w * ch)
    samples = pixels[:, :, 0]
    if colour == 0:  # Pillow reads 1-bit grey as mode '1' (0/1 or 0/255) and 2- and 4-bit grey scaled to 0..255
        top = (1 << depth) - 1
        samples = (samples != 0).astype(np.uint8) if mode == "1" else samples // (255 // top)
        if mode != "1" and not np.array_equal(samples * (255 // top), pixels[:, :, 0]):
            raise NotReproducible(f"{depth}-bit grey pixels are not scaled as Pillow reads them")
    elif samples.max(initial=0) >> depth:
        raise NotReproducible(f"palette indices do not fit {depth} bits")
    per = 8 // depth
    padded = np.zeros((h, -(-w // per) * per), np.uint8)
    padded[:, :w] = samples
    parts = padded.reshape(h, -1, per)
    out = np.zeros(parts.shape[:2], np.uint8)
    for k in range(per):
        out |= parts[:, :, k] << (8 - depth * (k + 1))
    return out


def _filtered(rows: np.ndarray, filters: bytes, ihdr) -> bytes:
    """The zlib input: each row as its filter type byte then the row filtered that way (PNG spec, section 9),
    in bands of rows so that a large image needs little more memory than its rows."""
    _, _, depth, colour = ihdr
    bpp = max(1, _CHANNELS[colour] * depth // 8)  # bytes to the pixel on the left (1 below 8 bits)
    h, stride = rows.shape
    kinds = np.frombuffer(filters, np.uint8)
    band = max(1, (1 << 22) // max(stride, 1))
    out = []
    for top in range(0, h, band):
        x = rows[top:top + band].astype(np.int16)
        b = np.zeros_like(x)  # the byte above
        b[1:] = x[:-1]
        if top:
            b[0] = rows[top - 1]
        a = np.zeros_like(x)  # the byte to the left
        a[:, bpp:] = x[:, :-bpp]
        c = np.zeros_like(x)  # above and to the left
        c[:, bpp:] = b[:, :-bpp]
        k = kinds[top:top + band, None]
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.select([k == 1, k == 2, k == 3, k == 4], [a, b, (a + b) >> 1, paeth], 0)
        f = ((x - pred) & 0xFF).astype(np.uint8)
        out.append(np.concatenate([k.astype(np.uint8), f], axis=1).tobytes())
    return b"".join(out)
