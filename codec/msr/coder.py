"""msr payload: WebP lossy base + MSB runs + escape LSBs + T masked-sampling iterations of network-coded LSBs.

Payload layout (versions 1 and 2, all integers little-endian; docs/MSR.md has the full description):

    b"MSR" u8 version | u8 k | u8 T | u8 q | u8 reserved(0) | u32 height | u32 width
    | 16 bytes sha256(X̂)[:16] | u32 webp length | WebP bytes | u32 side length | side (MSB varints)
    | range-coded words (u32 LE): MSB runs, escape LSBs, then per iteration i, per chunk (version 1: one; version
      2: CHUNKS chunks of the pixels picked at iteration i, chunk = rank * CHUNKS // (H W) by the mask rule's hash
      rank), per colour c, per table (ascending index s*64 + m; version 2: s shifted by the scale correction), the
      LSBs of the chunk's pixels in raster order.

Version 3 (images over TILE a side): the same 16-byte head, then u32 tile height | u32 tile width | per tile in
raster order, u32 length + a version-2 payload of that rectangle (same k, T, q).

Runtime knobs that do not change the stream: ``band`` (grid rows per network tile), ``batch`` (tiles per
network call) and torch's thread count. The tests check the stream does not depend on them.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from .. import entropy, tiling
from ..adapt import ScaleAdapter
from ..errors import CorruptStream, UnsupportedStream
from ..image import MAX_PIXELS
from ..nn.quant import run_on
from . import model as M
from . import rle, webpbase

MAGIC = b"MSR"
PAYLOAD_VERSION = 2  # written for images up to TILE a side; 1 (no scale correction) still decodes
TILED_VERSION = 3  # written for larger images: a grid of independent version-2 tiles
PAYLOAD_VERSIONS = (1, 2, 3)
CHUNKS = 8  # version 2: each iteration coded in 8 chunks spread over the image, the scale correction learning between
# The coder keeps a tile's whole state (network inputs and outputs, residual planes, the mask rule's global order)
# in memory, about 540 bytes a pixel (a 1024x1024 encode: 868 MB peak RSS, 302 MB before it), so larger images are
# cut into tiles of at most TILE x TILE, each coded on its own: memory stays bounded at any size, and so does the
# WebP base (VP8 frames are limited to 16383 pixels a side).
TILE = 1024
_HEAD = struct.Struct("<3sBBBBBII")
_TILES = struct.Struct("<II")  # version 3: tile height, tile width
DEFAULT_BAND = 32
DEFAULT_BATCH = 4


# ------------------------------------------------------------------------------------------------ network
def run_net(net: M.IntNet, inp: torch.Tensor, band: int = DEFAULT_BAND, batch: int = DEFAULT_BATCH,
            device: str = "cpu") -> torch.Tensor:
    """Head output (1, 36, h, w) of the integer network, computed tile by tile: row bands of ``band`` grid rows
    plus a halo of the receptive-field radius, so every kept output equals the whole-image result exactly;
    bands of equal shape go through the network ``batch`` at a time. ``device`` other than cpu ('cuda[:N]'): the
    layers copy their tensors there once and run ``nn.quant``'s int path; the output comes back to the CPU."""
    _, _, h, w = inp.shape
    halo = M.halo_cells(net.p)
    band = max(1, int(band))
    jobs = []  # (slice start, slice end, keep start, keep end)
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        a, b = max(0, y0 - halo), min(h, y1 + halo)
        jobs.append((a, b, y0 - a, y1 - a))
    out = torch.empty(1, M.N_OUT, h, w, dtype=torch.float32)  # integers below 2**15: exact
    by_shape: dict[int, list] = {}
    for j in jobs:
        by_shape.setdefault(j[1] - j[0], []).append(j)
    for group in by_shape.values():
        for i in range(0, len(group), max(1, int(batch))):
            part = group[i:i + max(1, int(batch))]
            x = torch.cat([inp[:, :, a:b] for a, b, _, _ in part], dim=0)
            res = run_on(device, net, x)
            for n, (a, b, k0, k1) in enumerate(part):
                out[0, :, a + k0:a + k1] = res[n, :, k0:k1]
    return out


# ------------------------------------------------------------------------------------------------ iterations
class _State:
    """What both sides know while the LSBs are coded: X̂, residuals where known, known masks."""

    def __init__(self, xhat: np.ndarray, q: int, known: np.ndarray, r: np.ndarray):
        self.h, self.w = xhat.shape[:2]
        self.q = q
        self.xhat = torch.from_numpy(xhat.transpose(2, 0, 1).astype(np.float32))[None]
        self.known = known  # (3, H, W) bool
        self.r = r  # (3, H, W) int64 (only read where known)

    def params(self, net, band, batch, device):
        inp = M.make_inputs(self.xhat, torch.from_numpy(self.r.astype(np.float32))[None],
                            torch.from_numpy(self.known.astype(np.float32))[None], self.q)
        P = run_net(net, inp, band, batch, device)
        return M.split_params(P, self.h, self.w)

    def remaining(self) -> torch.Tensor:
        return torch.from_numpy(~self.known.all(axis=0))[None]


def _iterations(st: _State, net, k: int, T: int, coder, encoding: bool, band: int, batch: int, device: str,
                adaptive: bool):
    """The T masked-sampling iterations. Payload version 2 (``adaptive``) codes each iteration's pixels in
    ``CHUNKS`` chunks spread over the image, with the scale correction of codec/adapt.py updated after every
    (chunk, colour) and started afresh each iteration (later iterations see more context, so the network's scales
    are calibrated differently: on 12 dev images one state per iteration saved 1.14 % of the bits, one state for
    all 1.07 %, raster-order chunks 0.87 %); version 1 codes them as one chunk with the network's scales."""
    t = M.tables(k)
    freq = t["bank"]
    half = 1 << (k - 1)
    for i in range(T):
        adapter = ScaleAdapter(t["cost"]) if adaptive else None
        rem = st.remaining()
        if not bool(rem.any()):
            break
        off, sidx, coup = st.params(net, band, batch, device)
        sel = M.select(sidx, rem, T - i)[0].numpy()
        ys, xs = np.nonzero(sel)
        if adaptive:  # chunks spread over the whole image (the mask rule's hash rank), raster order inside
            part = M.rank_map(st.h, st.w)[ys, xs].numpy() * CHUNKS // (st.h * st.w)
            for j in range(CHUNKS):
                _code_chunk(st, ys[part == j], xs[part == j], off, sidx, coup, freq, adapter, k, half, coder,
                            encoding)
        else:
            _code_chunk(st, ys, xs, off, sidx, coup, freq, None, k, half, coder, encoding)
        st.known[:, ys, xs] = True


def _code_chunk(st: _State, ys, xs, off, sidx, coup, freq, adapter, k: int, half: int, coder, encoding: bool):
    """Code the unknown LSBs of pixels (ys, xs): colours R, G, B; inside a colour by table index (ascending),
    raster order inside a table."""
    g_off = off[0][:, ys, xs][None]
    g_coup = coup[0][:, ys, xs][None]
    g_s = sidx[0][:, ys, xs].numpy().astype(np.int64)
    known_sel = st.known[:, ys, xs]
    e = []
    for c in range(3):
        mu = M.channel_mu4(c, g_off, g_coup, e)[0]  # float64 holding integers
        todo = np.flatnonzero(~known_sel[c])
        s = g_s[c, todo]
        m = mu.numpy()[todo].astype(np.int64) - M.MU_LO
        tid = (adapter.shift(c, s) if adapter else s) * M.N_MEANS + m
        rc = st.r[c, ys, xs]
        if encoding:
            coder.encode_indexed(rc[todo] + half, tid, freq)
        else:
            vals = coder.decode_indexed(tid, freq) - half
            rc = rc.copy()
            rc[todo] = vals
            st.r[c, ys[todo], xs[todo]] = vals
        if adapter:
            adapter.update(c, s, (m << k) + rc[todo] + half)
        e.append(M.channel_err(torch.from_numpy(rc.astype(np.float64))[None], mu[None])[0])


# ------------------------------------------------------------------------------------------------ encode
def encode(pixels: np.ndarray, net: M.IntNet, q: int, k: int, T: int, band: int = DEFAULT_BAND,
           batch: int = DEFAULT_BATCH, device: str = "cpu", tile: int = TILE) -> bytes:
    """Payload version 2, or version 3 (independent version-2 tiles) when the image is over ``tile`` a side."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("msr codes 8-bit RGB pixels (H, W, 3)")
    if not 0 <= q <= 100:
        raise ValueError(f"msr quality q must be 0..100, got {q}")
    if not 1 <= T <= 255:
        raise ValueError(f"msr iterations T must be 1..255, got {T}")
    M.tables(k)  # refuses an unsupported k
    h, w, _ = pixels.shape
    if max(h, w) <= tile:
        return _encode_tile(pixels, net, q, k, T, band, batch, device)
    th, tw = tiling.balanced(h, w, tile)
    parts = [_HEAD.pack(MAGIC, TILED_VERSION, k, T, q, 0, h, w), _TILES.pack(th, tw)]
    for y, x, hh, ww in tiling.grid(h, w, th, tw):
        sub = _encode_tile(np.ascontiguousarray(pixels[y:y + hh, x:x + ww]), net, q, k, T, band, batch, device)
        parts += [struct.pack("<I", len(sub)), sub]
    return b"".join(parts)


def _encode_tile(pixels: np.ndarray, net: M.IntNet, q: int, k: int, T: int, band: int, batch: int,
                 device: str) -> bytes:
    h, w, _ = pixels.shape
    webp = webpbase.encode(pixels, q)
    xhat = webpbase.decode(webp, h, w)
    r, msb, lsb = M.split_residual(pixels.astype(np.int64), xhat.astype(np.int64), k)
    enc = entropy.Encoder()
    side = rle.encode(enc, msb, k)
    esc = msb != 0  # (H, W, 3)
    enc.encode(lsb[esc], rle.uniform(k))
    st = _State(xhat, q, np.ascontiguousarray(esc.transpose(2, 0, 1)), np.ascontiguousarray(r.transpose(2, 0, 1)))
    with torch.no_grad():
        _iterations(st, net, k, T, enc, True, band, batch, device, adaptive=True)
    head = _HEAD.pack(MAGIC, PAYLOAD_VERSION, k, T, q, 0, h, w)
    return b"".join([head, webpbase.digest(xhat), struct.pack("<I", len(webp)), webp,
                     struct.pack("<I", len(side)), side, enc.finish()])


# ------------------------------------------------------------------------------------------------ decode
def parse(payload: bytes) -> dict:
    """Fixed fields of a payload (checks lengths; raises CorruptStream). Version 3: the tile shape and the tiles'
    payloads (``tiles``, raster order)."""
    if len(payload) < _HEAD.size + 8:
        raise CorruptStream("msr payload is truncated")
    magic, ver, k, T, q, _, h, w = _HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise CorruptStream("not an msr payload (bad magic)")
    if ver not in PAYLOAD_VERSIONS:
        raise UnsupportedStream(f"msr payload version {ver} is not supported by this build (knows "
                                f"{', '.join(map(str, PAYLOAD_VERSIONS))})")
    f = {"version": ver, "k": k, "T": T, "q": q, "height": h, "width": w}
    if ver == TILED_VERSION:
        return {**f, **_parse_tiles(payload, h, w)}
    if len(payload) < _HEAD.size + 20:
        raise CorruptStream("msr payload is truncated")
    pos = _HEAD.size
    digest = payload[pos:pos + 16]
    pos += 16
    (wl,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    if pos + wl + 4 > len(payload):
        raise CorruptStream("msr payload is truncated (WebP base)")
    webp = payload[pos:pos + wl]
    pos += wl
    (sl,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    if pos + sl > len(payload):
        raise CorruptStream("msr payload is truncated (side information)")
    return {**f, "digest": digest, "webp": webp, "side": payload[pos:pos + sl], "words": payload[pos + sl:]}


def _parse_tiles(payload: bytes, h: int, w: int) -> dict:
    th, tw = _TILES.unpack_from(payload, _HEAD.size)
    if not (0 < h * w <= MAX_PIXELS and 0 < th <= h and 0 < tw <= w):
        raise CorruptStream(f"msr: impossible tiling ({h}x{w} pixels in tiles of {th}x{tw})")
    n = -(-h // th) * -(-w // tw)
    pos = _HEAD.size + _TILES.size
    if n * 4 > len(payload) - pos:  # every tile takes at least its length field
        raise CorruptStream("msr payload is truncated (tiles)")
    tiles = []
    for _ in range(n):
        if pos + 4 > len(payload):
            raise CorruptStream("msr payload is truncated (tiles)")
        (n_bytes,) = struct.unpack_from("<I", payload, pos)
        if pos + 4 + n_bytes > len(payload):
            raise CorruptStream("msr payload is truncated (tiles)")
        tiles.append(payload[pos + 4:pos + 4 + n_bytes])
        pos += 4 + n_bytes
    if pos != len(payload):
        raise CorruptStream("msr payload has trailing bytes after its tiles")
    return {"tile": (th, tw), "tiles": tiles}


def decode(payload: bytes, net: M.IntNet, band: int = DEFAULT_BAND, batch: int = DEFAULT_BATCH,
           device: str = "cpu") -> np.ndarray:
    f = parse(payload)
    h, w, k, T, q = f["height"], f["width"], f["k"], f["T"], f["q"]
    if f["version"] == TILED_VERSION:
        return _decode_tiles(f, net, band, batch, device)
    if k not in (4, 5, 6) or T < 1:
        raise CorruptStream(f"msr payload has impossible parameters k={k} T={T}")
    xhat = webpbase.decode(f["webp"], h, w)
    if webpbase.digest(xhat) != f["digest"]:
        raise CorruptStream("msr: the lossy base does not match its stored hash: the payload is damaged (or, if "
                            "every other stream of this archive decodes, this libwebp decodes differently from the "
                            "encoder's)")
    dec = entropy.Decoder(f["words"])
    msb, used = rle.decode(dec, f["side"], 0, (h, w, 3), k)
    if used != len(f["side"]):
        raise CorruptStream("msr: side information has trailing bytes")
    esc = msb != 0
    lsb = np.zeros((h, w, 3), np.int64)
    lsb[esc] = dec.decode(rle.uniform(k), int(esc.sum()))
    r = (msb << k) + lsb - (1 << (k - 1))
    r = np.where(esc, r, 0)
    st = _State(xhat, q, np.ascontiguousarray(esc.transpose(2, 0, 1)), np.ascontiguousarray(r.transpose(2, 0, 1)))
    with torch.no_grad():
        _iterations(st, net, k, T, dec, False, band, batch, device, adaptive=f["version"] == 2)
    x = xhat.astype(np.int64) + st.r.transpose(1, 2, 0)
    if x.min() < 0 or x.max() > 255:
        raise CorruptStream("msr: decoded pixels fall outside 0..255 (damaged stream)")
    return x.astype(np.uint8)


def _decode_tiles(f: dict, net: M.IntNet, band: int, batch: int, device: str) -> np.ndarray:
    """Version 3: every tile is a version-1/2 payload of its own rectangle with the image's k, T and q."""
    grid = tiling.grid(f["height"], f["width"], *f["tile"])
    for (y, x, hh, ww), sub in zip(grid, f["tiles"]):  # every tile's fields before any pixel memory
        g = parse(sub)
        if (g["version"] == TILED_VERSION or (g["height"], g["width"]) != (hh, ww)
                or (g["k"], g["T"], g["q"]) != (f["k"], f["T"], f["q"])):
            raise CorruptStream(f"msr: tile at ({y}, {x}) does not match the image's tiling or parameters")
    out = np.empty((f["height"], f["width"], 3), np.uint8)
    for (y, x, hh, ww), sub in zip(grid, f["tiles"]):
        out[y:y + hh, x:x + ww] = decode(sub, net, band, batch, device)
    return out
