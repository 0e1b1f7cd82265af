"""MSB plane of the residual: run-length coding of its nonzero entries (most MSBs are 0).

The MSB array (H, W, 3) is read in raster order (pixel-major, colours inside a pixel). Each nonzero entry is
preceded by a run of zeros of length r >= 0, coded as its bit length b = bit_length(r) (0..30) with a table
from the image's own histogram of b (sent as varints, normalised with integer arithmetic on both sides), then
the b - 1 bits below the leading one in uniform chunks of at most 12 bits. The nonzero values are coded with a
second table from their histogram. Zeros after the last nonzero entry cost nothing: the count is sent.
"""

from __future__ import annotations

import numpy as np

from .. import entropy
from ..errors import CorruptStream

N_BUCKETS = 31
CHUNK = 12


def uniform(bits: int) -> np.ndarray:
    return np.full(1 << bits, entropy.TOTAL >> bits, np.int64)


def value_offset(k: int) -> int:
    """Bound on |MSB| for 8-bit residuals: (255 + 2**(k-1)) >> k, plus one for safety."""
    return ((255 + (1 << (k - 1))) >> k) + 1


def _bit_length(v: np.ndarray) -> np.ndarray:
    out = np.zeros(v.shape, np.int64)
    v = v.astype(np.int64).copy()
    while np.any(v):
        nz = v > 0
        out += nz
        v >>= 1
    return out


def write_varints(values) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        if v < 0:
            raise ValueError("varints are unsigned")
        while True:
            byte = v & 0x7F
            v >>= 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def read_varints(data: bytes, pos: int, count: int) -> tuple[list[int], int]:
    vals = []
    for _ in range(count):
        v = shift = 0
        while True:
            if pos >= len(data):
                raise CorruptStream("msr: side information is truncated")
            byte = data[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 63:
                raise CorruptStream("msr: bad varint in side information")
        vals.append(v)
    return vals, pos


def _extras(enc_or_dec, buckets: np.ndarray, extras: np.ndarray | None):
    """Code (or decode, when extras is None) the bits below the leading one, grouped by bit length."""
    out = np.zeros(buckets.shape, np.int64)
    for b in range(2, N_BUCKETS):
        sel = np.nonzero(buckets == b)[0]
        if not sel.size:
            continue
        nbits = b - 1
        acc = np.zeros(sel.size, np.int64)
        for lo in range(0, nbits, CHUNK):
            w = min(CHUNK, nbits - lo)
            if extras is not None:
                enc_or_dec.encode((extras[sel] >> lo) & ((1 << w) - 1), uniform(w))
            else:
                acc |= enc_or_dec.decode(uniform(w), sel.size).astype(np.int64) << lo
        out[sel] = acc
    return out


def encode(enc: entropy.Encoder, msb: np.ndarray, k: int) -> bytes:
    """Code msb (H, W, 3 ints) into ``enc``; returns the side information (varints) the decoder reads first."""
    flat = msb.reshape(-1)
    idx = np.flatnonzero(flat)
    if not idx.size:
        return write_varints([0])
    runs = np.diff(np.concatenate([[-1], idx])) - 1
    buckets = _bit_length(runs)
    off = value_offset(k)
    vals = flat[idx].astype(np.int64) + off
    if vals.min() < 0 or vals.max() > 2 * off:
        raise ValueError("MSB value outside its range (residual of non-8-bit data?)")
    hb = np.bincount(buckets, minlength=N_BUCKETS)
    hv = np.bincount(vals, minlength=2 * off + 1)
    enc.encode(buckets, entropy.normalize(hb))
    _extras(enc, buckets, runs - np.where(buckets > 0, 1 << np.maximum(buckets - 1, 0), 0))
    enc.encode(vals, entropy.normalize(hv))
    return write_varints([idx.size] + hb.tolist() + hv.tolist())


def decode(dec: entropy.Decoder, side: bytes, pos: int, shape: tuple[int, int, int], k: int):
    """Inverse of ``encode``: returns (msb array, position after the side information)."""
    (n,), pos = read_varints(side, pos, 1)
    total = shape[0] * shape[1] * shape[2]
    msb = np.zeros(total, np.int64)
    if n == 0:
        return msb.reshape(shape), pos
    if n > total:
        raise CorruptStream("msr: more MSB runs than subpixels")
    off = value_offset(k)
    hb, pos = read_varints(side, pos, N_BUCKETS)
    hv, pos = read_varints(side, pos, 2 * off + 1)
    if sum(hb) != n or sum(hv) != n:  # both are histograms of the n runs: anything else is damage
        raise CorruptStream("msr: side information histograms do not match the number of MSB runs")
    buckets = dec.decode(entropy.normalize(np.array(hb, np.int64)), n).astype(np.int64)
    extras = _extras(dec, buckets, None)
    runs = np.where(buckets > 0, (1 << np.maximum(buckets - 1, 0)) + extras, 0)
    vals = dec.decode(entropy.normalize(np.array(hv, np.int64)), n).astype(np.int64) - off
    idx = np.cumsum(runs + 1) - 1
    if idx[-1] >= total or np.any(vals == 0):
        raise CorruptStream("msr: MSB runs run past the image")
    msb[idx] = vals
    return msb.reshape(shape), pos
