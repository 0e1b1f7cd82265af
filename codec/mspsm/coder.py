"""MSPSM integer encoder/decoder (K = 1 profiles): tiles -> range-coded streams with the stored table bank.

Payload layout (little endian):
    b"MSPS" | u8 payload version (1 to 4) | u32 height | u32 width | u32 tile | u32 n_tiles | n_tiles x u32 length |
    the tiles' range-coded streams, in raster order of tiles.
Inside one tile's stream, in this order: (version 4) the tile's mode, 0 = the causal scale correction of version 3,
1 = transmitted corrections; the coarsest scale x^(M) with a uniform model (channel-major raster), then scales
M-1 .. 0, groups in order, channels R, G, B, each (group, channel) in mode 1 preceded by its corrections (the mean
corrections of each term, then the scale shifts, ``adapt.ShiftTable``, for the cells the step uses); the subpixels
of one (group, channel) are listed phase-major raster and coded in a stable sort by table index, one 1-D table
call per distinct table (the decoder computes the same table indices before decoding, so the order is agreed).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numba
import numpy as np
import torch
import torch.nn.functional as F

from .. import tiling
from ..adapt import SHIFT_BUCKET, SHIFT_FREQ, ScaleAdapter, ShiftTable, best_chains, chain_symbols, chain_values, \
    used_cells
from ..entropy import Decoder, Encoder, Table, cost, normalize, stack, table_order
from ..errors import CorruptStream, DeviceError, UnsupportedStream
from ..image import MAX_PIXELS
from ..nn.quant import run_on
from . import model as M

MAGIC = b"MSPS"
# 1: as first shipped; 2: K = 1 with per-tile scale correction (codec/adapt.py); 3: version 2 plus the copy model;
# 4: per tile version 3, or transmitted scale shifts and mean corrections instead of the causal correction,
# whichever is shorter
PAYLOAD_VERSIONS = (1, 2, 3, 4)
UNIFORM = np.full(256, 256, np.int64)
MODE = np.array([32768, 32768], np.int64)  # a version 4 tile's first symbol: 0 causal, 1 transmitted corrections
# version 4, mode 1: mean corrections mu += floor((a v + 32) / 64) per (step, channel, term v, cell of CORR_BUCKET
# scale indices), a in CORR (1/64, as the network's coupling coefficients). The terms of a channel: the earlier
# channels' errors 16 x - mu (a corrects the network's coupling to them), then the network's offset from the
# neighbour average (a scales it). Applied, sent and chosen in CORR_TERMS order (the previous channel's error
# first); each a is sent as the difference from the cell before: symbol = (a - a_before) / 2 + 32.
CORR = np.arange(-32, 33, 2)
CORR_BUCKET = 8
CORR_SAMPLE = 16384  # the encoder chooses corrections on about this many symbols of a step (speed)
CORR_TERMS = ((0,), (0, 1), (1, 0, 2))  # indices into the channel's terms [errors of R (, G), offset]
CORR_FREQ = normalize((64 >> np.minimum(np.abs(np.arange(-32, 33)), 6)) + 1)  # peaked at no difference
CORR_COST = cost(CORR_FREQ).astype(np.int64)
# the fixed tables, validated once: a small tile codes ~150 short runs with them
T_UNIFORM, T_MODE, T_CORR, T_SHIFT = (Table(f) for f in (UNIFORM, MODE, CORR_FREQ, SHIFT_FREQ))
# Coder state (pixels, masks, neighbour averages, network inputs and context) is held in float32: every value is an
# integer of magnitude below 2**13 and the only divisions are by 1..4 or powers of two, so float32 is exact, and the
# first layer takes its input without a conversion. The network's outputs come back as float64 (requantization).
DT = torch.float32
_NO_ERR = np.zeros((0, 3, 1, 1), np.float32)
_OFF, _SMAX, _COUP = M.OFF_CLAMP, M.N_SCALE_IDX - 1, M.COUP_CLAMP  # for the compiled kernels


# Largest tile side by default: a 576x576 photo is one tile, not 4 of 288 (gb82, 5 photos: -0.28 % bits at the same
# speed); a 4096x4096 photo codes in 1.5 GiB peak memory (docs/MSPSM.md).
DEFAULT_TILE = 1024
MAX_TILE = 4096  # the encoder's cap (codec parameter tile); a decoder refuses larger tiles before allocating one


def balanced_tile(h: int, w: int, max_tile: int) -> int:
    """The (square) tile side for an h x w image: no larger than ``max_tile``, with as many tiles per side as
    ``max_tile`` needs but of equal size (``tiling.balanced``). Same-size tiles go through the network together, and
    no thin strip is coded with almost no context: on 576x576 dev photos 14 % faster at the same bits (+-0.3 %)."""
    return max(tiling.balanced(h, w, max_tile))


class _CopyChoice:
    """The copy model of payload version 3, per channel of one tile. Where every known neighbour of a subpixel
    (base16's set: the 4-neighbours, else the diagonal ones) has the same difference d between this channel and
    the one before (R - 0, G - R, B - G: flat red, grey pixels with d = 0, flat colours), the subpixel may be coded
    as "the earlier channel plus d" with one table for all such subpixels (f = 0, one scale index) instead of the
    network's. Both sides keep the exact cost (1/256 bit) every option (the network's table, or the copy model
    with each scale index) would have spent on the flagged subpixels so far and use the cheapest; ties go to the
    network, so nothing changes until the copy model has proved itself on the tile. Measured on all of dev:
    gb82 -1.7 %, cid22 -0.3 %, -18 % on a mostly grey photo, no image larger by more than 0.03 % (docs/MSPSM.md)."""

    def __init__(self, cost_rows: np.ndarray, channels: int = 3):
        self.flat = cost_rows.reshape(-1)  # cost of table index t, symbol d at t * 256 + d
        self.copy_rows = np.ascontiguousarray(cost_rows.reshape(len(cost_rows), 16, 256)[:, 8])  # f = 0, all s
        self.copy_cols = np.ascontiguousarray(self.copy_rows.T)  # [d, s]
        self.acc = np.zeros((channels, 1 + len(cost_rows)), np.int64)

    def table(self, col: int) -> int | None:
        """The copy model's table index for channel ``col``, or None while the network's tables cost less."""
        opt = int(self.acc[col].argmin())
        return (opt - 1) * 16 + 8 if opt else None

    def update(self, col: int, net_tbl: np.ndarray, net_sym: np.ndarray, copy_sym: np.ndarray) -> None:
        self.acc[col, 0] += int(self.flat[net_tbl * 256 + net_sym].sum())
        if len(copy_sym) < 256:  # the same sums as below, cheaper for the few flagged symbols of a small step
            self.acc[col, 1:] += self.copy_cols[copy_sym].sum(axis=0)
        else:
            self.acc[col, 1:] += self.copy_rows @ np.bincount(copy_sym, minlength=256)


class Put(NamedTuple):
    """Symbols coded with given tables: one table (1-D ``freqs``) or a table per symbol (2-D)."""

    symbols: np.ndarray
    freqs: np.ndarray


class Step(NamedTuple):
    """One channel ``col`` of coding step ``key`` (scale x group): the network's scale indices ``s``, mean fractions
    ``f8`` and centres ``cn``, the pixel values ``x`` (None when decoding), the copy model's (flags, centres)
    (version >= 3) and the terms of the mean corrections (version 4: see CORR)."""

    key: int
    col: int
    s: np.ndarray
    f8: np.ndarray
    cn: np.ndarray
    x: np.ndarray | None
    copy: tuple[np.ndarray, np.ndarray] | None
    terms: list


class _TileModel:
    """What a tile's encoder and decoder keep in step while coding its steps: the scale correction (payload
    version >= 2, K = 1; codec/adapt.py), the copy model (version >= 3), and with version 4's transmitted side
    information the scale shifts and mean corrections. ``keys``: coding steps (scales x groups). Subclasses say
    how side information and symbols move (``_side``, ``_symbols``)."""

    def __init__(self, version: int, keys: int):
        t = M.tables()
        self.version, self.keys = version, keys
        self.adapt = ScaleAdapter(t["cost"]) if version >= 2 else None
        self.copy = _CopyChoice(t["cost"].rows) if version >= 3 else None
        self.copies = self.copy is not None
        self.freq = t["freq"].reshape(-1, 256)  # table index = sidx * 16 + f + 8
        self.bank = t["bank"]
        self.shifts: ShiftTable | None = None  # set: this tile codes with transmitted shifts, not self.adapt
        self.corr = np.zeros((keys, 3, 3, -(-64 // CORR_BUCKET)), np.int64)  # with the shifts: mean corrections

    def use_shifts(self, table: ShiftTable) -> None:
        self.shifts, self.adapt = table, None

    def code(self, st: Step) -> np.ndarray:
        """Code one step (``st.x`` when encoding; returns the pixel values)."""
        key, col, s, f8, cn = st.key, st.col, st.s, st.f8, st.cn
        if self.shifts is not None:  # this step's side information, read or written just before its symbols
            cells, cc = used_cells(s, CORR_BUCKET), s // CORR_BUCKET
            for j in CORR_TERMS[col]:
                a = self.corr[key, col, j]
                self._corrections(a, cells)
                cn, f8 = _recentre(cn, f8, st.terms[j], a[cc])
            self._shifts(key, col, used_cells(s, SHIFT_BUCKET))
            tbl = self.shifts.shift(key, col, s) * 16 + f8
        else:
            tbl = (self.adapt.shift(col, s) if self.adapt else s) * 16 + f8
        use, cen = tbl, cn
        ct = self.copy.table(col) if self.copy else None
        if ct is not None:
            use = np.where(st.copy[0], ct, tbl)
            cen = np.where(st.copy[0], st.copy[1], cn)
        x = self._symbols(st.x, use, cen)
        if self.adapt:
            self.adapt.update(col, s, f8 * 256 + ((x - cn) & 255))
        if self.copy and st.copy[0].any():
            fl = st.copy[0]
            self.copy.update(col, tbl[fl], (x[fl] - cn[fl]) & 255, (x[fl] - st.copy[1][fl]) & 255)
        return x


def _coder_bank():
    """The table bank with the fixed side tables as its last rows (``SIDE_ROWS``): a tile's symbols of every kind
    go to the range coder in one call."""
    global _CODER_BANK, SIDE_ROWS
    if _CODER_BANK is None:
        bank = M.tables()["bank"]
        SIDE_ROWS = {id(t): len(bank) + k for k, t in enumerate((T_UNIFORM, T_MODE, T_CORR, T_SHIFT))}
        _CODER_BANK = stack([bank, T_UNIFORM, T_MODE, T_CORR, T_SHIFT])
    return _CODER_BANK


_CODER_BANK = SIDE_ROWS = None


class _TileEncoder(_TileModel):
    """Writes a tile's stream; with ``count`` its ``bits`` sum the ideal code length of what it coded (a log per
    symbol: statistics only). The symbols and their rows of ``_coder_bank`` are gathered in coding order and
    range-coded in one call when the tile is done (or before a put with a table outside that bank): a small tile
    has ~150 short runs per pass, and each call has a fixed cost."""

    FLUSH = 1 << 20  # gathered symbols that are coded at once: bounds the memory of a large tile (16 B a symbol)

    def __init__(self, version: int, keys: int, count: bool = False):
        super().__init__(version, keys)
        self.enc, self.count, self.bits = Encoder(), count, 0.0
        self.bank_all = _coder_bank()
        self.syms: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.gathered = 0

    def _count(self, freqs: np.ndarray) -> None:
        if self.count:
            self.bits += float(-np.log2(freqs / 65536.0).sum())

    def put(self, symbols: np.ndarray, freqs) -> None:
        row = SIDE_ROWS.get(id(freqs))
        f = freqs.freqs if isinstance(freqs, Table) else freqs
        self._count(f[symbols] if f.ndim == 1 else f[np.arange(len(f)), symbols])
        if row is None:  # a table of its own (per-symbol mixture tables): after what is gathered so far
            self._flush()
            self.enc.encode(symbols, freqs)
        else:
            self._gather(np.asarray(symbols), np.full(len(symbols), row))

    def _corrections(self, a: np.ndarray, cells: np.ndarray) -> None:
        self.put(chain_symbols(a[cells], 2, 32), T_CORR)

    def _shifts(self, key: int, col: int, cells: np.ndarray) -> None:
        self.put(self.shifts.symbols(key, col, cells), T_SHIFT)

    def _symbols(self, x: np.ndarray, use: np.ndarray, cen: np.ndarray) -> np.ndarray:
        d = (x - cen) & 255
        self._count(self.freq[use, d])
        order = table_order(use, len(self.bank))  # encode_indexed's order: a run per table
        self._gather(d[order], use[order])
        return x

    def _gather(self, symbols: np.ndarray, rows: np.ndarray) -> None:
        self.syms.append(symbols)
        self.rows.append(rows)
        self.gathered += len(symbols)
        if self.gathered >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self.syms:
            self.enc.encode_rows(np.concatenate(self.syms), np.concatenate(self.rows), self.bank_all)
            self.syms, self.rows, self.gathered = [], [], 0

    def finish(self) -> bytes:
        self._flush()
        return self.enc.finish()


class _TileDecoder(_TileModel):
    """Reads a tile's stream (``dec``); a version 4 tile says first whether side information follows."""

    def __init__(self, dec: Decoder, version: int, keys: int):
        super().__init__(version, keys)
        self.dec = dec
        if version >= 4 and dec.decode(T_MODE, 1)[0]:
            self.use_shifts(ShiftTable(M.tables()["cost"], keys))  # its deltas are read as their cells come up

    def _corrections(self, a: np.ndarray, cells: np.ndarray) -> None:
        a[cells] = chain_values(self.dec.decode(T_CORR, len(cells)), 2, 32)

    def _shifts(self, key: int, col: int, cells: np.ndarray) -> None:
        self.shifts.read(key, col, cells, self.dec.decode(T_SHIFT, len(cells)))

    def _symbols(self, x, use: np.ndarray, cen: np.ndarray) -> np.ndarray:
        return (cen + self.dec.decode_indexed(use, self.bank)) & 255


class _TileRecorder:
    """A version 4 encoder: records the tile's ``Put`` and ``Step`` ops; ``finish`` then codes the tile twice, with
    the causal scale correction and with corrections chosen on the whole tile (``_choose``), and keeps the
    shorter stream."""

    def __init__(self, version: int, keys: int, count: bool = False):
        self.version, self.keys, self.count = version, keys, count
        self.copies = version >= 3
        self.ops: list[Put | Step] = []
        self.shifts = ShiftTable(M.tables()["cost"], keys)
        self.corr = np.zeros((keys, 3, 3, -(-64 // CORR_BUCKET)), np.int64)
        self.bits = 0.0

    def put(self, symbols: np.ndarray, freqs: np.ndarray) -> None:
        self.ops.append(Put(symbols, freqs))

    def code(self, st: Step) -> np.ndarray:
        self.ops.append(st)
        return st.x

    def finish(self) -> bytes:
        self._choose()
        best = None
        for table in (None, self.shifts):
            c = _TileEncoder(self.version, self.keys, self.count)
            c.put(np.array([int(table is not None)]), T_MODE)
            if table is not None:
                c.use_shifts(table)
                c.corr = self.corr
            for op in self.ops:
                c.put(*op) if isinstance(op, Put) else c.code(op)
            data = c.finish()
            if best is None or len(data) < len(best):
                best, self.bits = data, c.bits
        return best

    def _choose(self) -> None:
        """Version 4 encoder, on the whole tile: the mean corrections (with the network's scales; each given those
        before it), then the scale shifts on the corrected means; each minimises the code length including its
        own."""
        rows = M.tables()["cost"].rows
        trans = CORR_COST[(CORR[None, :] - CORR[:, None]) // 2 + 32]  # [previous a, a]
        ops = [op for op in self.ops if isinstance(op, Step)]
        for col in range(3):
            # the channel's steps laid end to end, one array each (a tile has 18 steps: one compiled call per term
            # instead of one per step and term)
            steps = [op for op in ops if op.col == col and len(op.s)]
            if not steps:
                continue
            lens = np.array([len(op.s) for op in steps])
            starts = np.cumsum(lens) - lens
            key = np.repeat([op.key for op in steps], lens)
            s, f8, cn, x = (np.concatenate([getattr(op, a) for op in steps]) for a in ("s", "f8", "cn", "x"))
            terms = [np.concatenate([op.terms[i] for op in steps]) for i in range(col + 1)]
            # the search's symbols: on a large step every k-th one, counted k times
            step = np.maximum(1, lens // CORR_SAMPLE)
            pick = np.concatenate([np.arange(a, a + n, k) for a, n, k in zip(starts, lens, step)])
            plens = -(-lens // step)
            pstarts = np.cumsum(plens) - plens
            weight = np.repeat(step, plens)
            ps, pf8, pcn, px = s[pick], f8[pick], cn[pick], x[pick]
            for n, j in enumerate(CORR_TERMS[col]):
                if n:  # the means as corrected by the terms chosen before this one
                    i = CORR_TERMS[col][n - 1]
                    a = self.corr[key[pick], col, i, ps // CORR_BUCKET]
                    pcn, pf8 = _recentre_steps(pcn, pf8, terms[i][pick], a, pstarts, plens)
                tot = np.zeros((self.keys, self.corr.shape[3], len(CORR)), np.int64)
                _correction_costs(rows, key[pick], weight, ps, 16 * pcn + pf8 - 8, px, terms[j][pick], CORR_BUCKET,
                                  CORR, tot)
                got = np.full(tot.shape[:2], -1)
                best_chains(tot, trans, len(CORR) // 2, got)
                self.corr[:, col, j] = np.where(got >= 0, CORR[got], self.corr[:, col, j])
            # the scale shifts' costs on all the symbols, with the means corrected
            for j in CORR_TERMS[col]:
                cn, f8 = _recentre_steps(cn, f8, terms[j], self.corr[key, col, j, s // CORR_BUCKET], starts, lens)
            self.shifts.add(key, col, s, f8 * 256 + ((x - cn) & 255))
        self.shifts.choose()


def _recentre(cn: np.ndarray, f8: np.ndarray, v: np.ndarray, a) -> tuple[np.ndarray, np.ndarray]:
    """Centres and mean fractions of the means moved by corrections ``a`` (1/64) on the term ``v``; all-zero
    corrections leave them as they are (the means are not even clipped then)."""
    if not np.any(a):
        return cn, f8
    return _moved(cn, f8, v, a)


def _moved(cn, f8, v, a):
    # shifts: floor division by 64, by 16; minimum/maximum: np.clip's checks cost more than the clipping here
    mu = np.minimum(np.maximum(16 * cn + f8 - 8 + ((a * v + 32) >> 6), 0), 4080)
    c = (mu + 8) >> 4
    return c, mu - 16 * c + 8


def _recentre_steps(cn, f8, v, a, starts, lens):
    """``_recentre`` of each step of several laid end to end (non-empty, from ``starts``, ``lens`` long)."""
    c, f = _moved(cn, f8, v, a)
    keep = np.repeat(~np.logical_or.reduceat(a != 0, starts), lens)  # the steps whose corrections are all zero
    return np.where(keep, cn, c), np.where(keep, f8, f)


@numba.njit(cache=True, nogil=True)
def _correction_costs(rows, key, weight, s, mu, x, v, bucket, cands, out):
    """out[key, s // bucket, k] += weight times the code length of x under the network's scale ``s`` and mean
    ``mu`` moved by cands[k] (as ``_recentre``), summed over the symbols. Neighbouring candidates often move a
    mean to the same place (small terms): its cost is looked up once."""
    for i in range(s.shape[0]):
        b, row = s[i] // bucket, rows[s[i]]
        last, c = -1, 0
        for k in range(cands.shape[0]):
            m = min(max(mu[i] + ((cands[k] * v[i] + 32) >> 6), 0), 4080)
            if m != last:
                last, cm = m, (m + 8) >> 4
                c = weight[i] * row[(m - 16 * cm + 8) * 256 + ((x[i] - cm) & 255)]
            out[key[i], b, k] += c


@numba.njit(cache=True, nogil=True, inline="always")
def _sums(Xp, kp, n, ys, xs):
    """Over the known ones of the 4 pixels (ys[i], xs[i]) of padded x-hat ``Xp`` (known mask ``kp``, zero in the
    padding): their number, the sums of R, G, B, and the sums of squares of the differences R - 0, G - R, B - G.
    Branch-free: a multiply by the mask instead of a test per pixel (several times faster; every value is an
    integer below 2**24, exact in float32)."""
    cnt = sr = sg = sb = qr = qg = qb = np.float32(0)
    for i in range(4):
        k = kp[n, 0, ys[i], xs[i]]
        r, g, b = Xp[n, 0, ys[i], xs[i]] * k, Xp[n, 1, ys[i], xs[i]] * k, Xp[n, 2, ys[i], xs[i]] * k
        cnt += k
        sr += r
        sg += g
        sb += b
        qr += r * r
        qg += (g - r) * (g - r)
        qb += (b - g) * (b - g)
    return int(cnt), int(sr), int(sg), int(sb), int(qr), int(qg), int(qb)


@numba.njit(cache=True, nogil=True, inline="always")
def _avg16(s, cnt):
    """floor((16 s + floor(cnt / 2)) / cnt) for s >= 0 and cnt 1..4, 2048 for cnt 0 (a constant divisor for
    each case)."""
    if cnt == 4:
        return (16 * s + 2) >> 2
    if cnt == 2:
        return (16 * s + 1) >> 1
    if cnt == 3:
        return (16 * s + 1) // 3
    return 16 * s if cnt == 1 else 2048


@numba.njit(cache=True, nogil=True)
def _stage(Xp, kp, err, z, scale, copy_ph, inp, b16, flag, diff):
    """One stage's coder inputs in one compiled pass (the coder's form of ``model.base16`` and
    ``model.net_input``, which the trainer uses and ``run_tiles(check_reference=True)`` compares with this):
    Xp (B,3,2h+2,2w+2) pixels and kp (B,1,2h+2,2w+2) the 0/1 known mask, both padded by one zero pixel; err
    (B,3,2h,2w) the error map (empty without feedback); z (B,ctx,h,w) the context. Writes the network input
    ``inp`` (B,Cin,h,w); ``b16`` (B,3ph,3col,h,w) the neighbour-average prediction in 1/16 px at the unknown
    positions of the three unknown phases; and for the phases with ``copy_ph[ph]`` the copy model's ``flag`` and
    difference ``diff`` (same shape; see _CopyChoice): flag where base16's neighbour set (the known 4-neighbours,
    else the known diagonal ones) is non-empty and its pixels all have the same difference d to the earlier
    channel (R: to 0), found as cnt * sum(d^2) == sum(d)^2; diff = d there."""
    nb = Xp.shape[0]
    h, w = (Xp.shape[2] - 2) // 2, (Xp.shape[3] - 2) // 2
    ctx = z.shape[1]
    fb = err.shape[0] > 0
    for n in range(nb):  # plane by plane, row by row: contiguous writes
        for y in range(h):
            for x in range(w):
                inp[n, 16, y, x] = 16 * scale
        for c in range(ctx):
            for y in range(h):
                for x in range(w):
                    inp[n, 17 + c, y, x] = 2 * z[n, c, y, x]
        for ph in range(4):
            py, px = ph >> 1, ph & 1
            if fb:
                for c in range(3):
                    for y in range(h):
                        for x in range(w):
                            inp[n, 17 + ctx + 3 * ph + c, y, x] = err[n, c, 2 * y + py, 2 * x + px]
            for y in range(h):
                yy = 2 * y + py + 1  # in the padded arrays
                for x in range(w):
                    xx = 2 * x + px + 1
                    k = kp[n, 0, yy, xx] > 0
                    inp[n, 12 + ph, y, x] = 64 if k else 0
                    if k:
                        for c in range(3):
                            inp[n, 3 * ph + c, y, x] = Xp[n, c, yy, xx] - 128
                        if not copy_ph[ph]:
                            continue
                    # base16's neighbour set: the known 4-neighbours, else the known diagonal ones
                    cnt, sr, sg, sb, qr, qg, qb = _sums(Xp, kp, n, (yy - 1, yy + 1, yy, yy), (xx, xx, xx - 1, xx + 1))
                    if cnt == 0:
                        cnt, sr, sg, sb, qr, qg, qb = _sums(Xp, kp, n, (yy - 1, yy - 1, yy + 1, yy + 1),
                                                            (xx - 1, xx + 1, xx - 1, xx + 1))
                    if not k and ph < 3:  # (phase (1,1) is always known: the coarser scale)
                        for c, s in enumerate((sr, sg, sb)):
                            v = _avg16(s, cnt)
                            b16[n, ph, c, y, x] = v
                            inp[n, 3 * ph + c, y, x] = ((v + 8) >> 4) - 128
                    if copy_ph[ph] and cnt:
                        for c, (q, d) in enumerate(((qr, sr), (qg, sg - sr), (qb, sb - sg))):
                            if cnt * q == d * d:
                                flag[n, ph, c, y, x] = True
                                diff[n, ph, c, y, x] = d // cnt


def stage_inputs(p, X, known, z, err, scale: int, copy_phases=()):
    """``_stage``'s outputs as tensors: (network input, base16 of the unknown phases, copy flags, differences)."""
    bsz, _, h2, w2 = X.shape
    h, w = h2 // 2, w2 // 2
    inp = torch.empty(bsz, M.n_inputs(p), h, w, dtype=DT)
    b16 = torch.zeros(bsz, 3, 3, h, w, dtype=DT)
    flag = torch.zeros(bsz, 3, 3, h, w, dtype=torch.bool)
    diff = torch.zeros(bsz, 3, 3, h, w, dtype=DT)
    copy_ph = np.array([ph in copy_phases for ph in range(4)])
    _stage(F.pad(X, (1, 1, 1, 1)).numpy(), F.pad(known, (1, 1, 1, 1)).numpy(),
           _NO_ERR if err is None else err.numpy(), z.numpy(), scale, copy_ph,
           inp.numpy(), b16.numpy(), flag.numpy(), diff.numpy())
    return inp, b16, flag, diff


@numba.njit(cache=True, nogil=True)
def _gather(P, b16, X, flag, diff, pos, out):
    """A group's subpixels, pos (n, 4) = (tile, phase, y, x) in coding order: ``out`` (7, n, 3col) float32 holds
    base16, x-hat (the true pixels when encoding), and the network's offset, scale index and coupling clamped as
    ``model.split_params`` clamps them (P: its K = 1 outputs, channels-last (B, h, w, 30)), then the copy flag
    and difference."""
    for i in range(pos.shape[0]):
        b, ph, y, x = pos[i, 0], pos[i, 1], pos[i, 2], pos[i, 3]
        yy, xx = 2 * y + (ph >> 1), 2 * x + (ph & 1)
        o = 10 * ph
        for c in range(3):
            out[0, i, c] = b16[b, ph, c, y, x]
            out[1, i, c] = X[b, c, yy, xx]
            out[2, i, c] = min(max(P[b, y, x, o + 1 + c], -_OFF), _OFF)
            out[3, i, c] = min(max(P[b, y, x, o + 4 + c], 0), _SMAX)
            out[4, i, c] = min(max(P[b, y, x, o + 7 + c], -_COUP), _COUP)
            out[5, i, c] = flag[b, ph, c, y, x]
            out[6, i, c] = diff[b, ph, c, y, x]


@numba.njit(cache=True, nogil=True)
def _scatter(pos, xs, e16, X, known, err, decoding):
    """After a group is coded: mark its subpixels known; when decoding, write their values ``xs`` (n, 3) into
    x-hat; with feedback (non-empty ``err``), their errors ``e16`` (16 x - mu16) into the error map in quarter
    pixels, clamped to +-127 (``model.feedback_errors``, the trainer's form)."""
    fb = err.shape[0] > 0
    for i in range(pos.shape[0]):
        b, ph, y, x = pos[i, 0], pos[i, 1], pos[i, 2], pos[i, 3]
        yy, xx = 2 * y + (ph >> 1), 2 * x + (ph & 1)
        known[b, 0, yy, xx] = 1
        for c in range(3):
            if decoding:
                X[b, c, yy, xx] = xs[i, c]
            if fb:
                err[b, c, yy, xx] = min(max((np.int64(e16[i, c]) + 2) >> 2, -127), 127)


def _coarsest(tiles, sizes, bsz: int, scales: int, coders):
    """The scale pyramid (encoding; None when decoding) and x^(M), coded with the uniform model."""
    if tiles is not None:
        x = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).to(DT)
        pyr = [x]
        for _ in range(scales):
            pyr.append(M.pad_even(pyr[-1])[:, :, 1::2, 1::2])
        top = pyr[-1]
        for b in range(bsz):
            coders[b].put(top[b].reshape(-1).numpy().astype(np.int32), T_UNIFORM)
        return pyr, top
    hm, wm = sizes[-1]
    top = torch.zeros(bsz, 3, hm, wm, dtype=DT)
    for b in range(bsz):
        top[b] = torch.from_numpy(coders[b].dec.decode(T_UNIFORM, 3 * hm * wm).reshape(3, hm, wm).astype(np.float32))
    return None, top


def _scale_start(p, i: int, h: int, w: int, bsz: int, cur, pyr, z):
    """State at the start of scale i: x-hat (true coarser pixels; when encoding, all true pixels), the known
    mask, the context carried up from the coarser scale, the group map and the not-yet-coded set."""
    if pyr is None:
        X = torch.zeros(bsz, 3, 2 * h, 2 * w, dtype=DT)
        X[:, :, 1::2, 1::2] = cur
    else:
        X = M.pad_even(pyr[i])
    known = torch.zeros(bsz, 1, 2 * h, 2 * w, dtype=DT)
    known[:, :, 1::2, 1::2] = 1
    z = torch.zeros(bsz, p.context, h, w, dtype=DT) if z is None else \
        z.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :h, :w]
    return X, known, z, M.group_map(p, i, h, w), torch.ones(bsz, 3, h, w, dtype=torch.bool)


def _predict(net, X, known, z, err, i: int, j: int, copy_phases, check_reference: bool, stats,
             device: str = "cpu"):
    """One stage: the coder inputs (``stage_inputs``), then the network pass; returns (base16 of the unknown
    phases, copy flags, copy differences, outputs P, next context z). Only the network runs on ``device``; its
    integer outputs come back to the CPU, where the rest of the stage runs as always."""
    inp, b16, flag, diff = stage_inputs(net.p, X, known, z, err, i, copy_phases)
    if check_reference:  # the trainer's torch form of the inputs, and the pure-integer network
        ref16 = M.base16(X, known)
        unknown = M.unknown_phases(known.expand_as(X)) == 0
        if not (torch.equal(inp, M.net_input(net.p, X, known, ref16, z, i, err))
                and torch.equal(b16[unknown], M.unknown_phases(ref16)[unknown])):
            raise AssertionError(f"coder inputs != the trainer's at scale {i} group {j}")
    P, z = run_on(device, net, inp)
    z = z.to(DT)  # the context feeds the next stage's input
    if check_reference:
        rp, rz = net.reference(inp.numpy().astype(np.int64))
        if not (np.array_equal(rp, P.numpy().astype(np.int64)) and np.array_equal(rz, z.numpy().astype(np.int64))):
            raise AssertionError(f"fast path != integer reference at scale {i} group {j}")
        if stats is not None:
            stats["reference_checks"] = stats.get("reference_checks", 0) + 1
    return b16, flag, diff, P, z


def _group_done(X, known, sel, xt, decoding: bool):
    """After a group is coded: when decoding, write its decoded subpixels into x-hat; return the known mask with
    the group added."""
    bsz, _, h2, w2 = known.shape
    selk = torch.zeros(bsz, 1, h2, w2, dtype=torch.bool)
    for ph, (py, px) in enumerate(M.PHASES[:3]):
        selk[:, 0, py::2, px::2] = sel[:, ph]
        if decoding:
            X[:, :, py::2, px::2] = torch.where(sel[:, ph][:, None], xt[:, ph, :, 0], X[:, :, py::2, px::2])
    return torch.where(selk, torch.ones_like(known), known)


def _pixels(cur) -> np.ndarray:
    """The tiles' pixels (B,H,W,3) uint8."""
    return cur.numpy().astype(np.uint8).transpose(0, 2, 3, 1)


def run_tiles(net: M.IntNet, tiles: np.ndarray | None, shape: tuple[int, int, int], coders: list,
              check_reference: bool = False, stats: dict | None = None, device: str = "cpu") -> np.ndarray:
    """Code a batch of same-size tiles. Encoding: ``tiles`` (B,H,W,3) uint8. Decoding: ``tiles`` None and
    ``shape`` = (B,H,W); returns the (B,H,W,3) uint8 pixels. ``check_reference`` also runs the pure-integer
    numpy reference network at every stage and raises if it differs from the fast path. ``device``: where the
    network runs ('cpu', 'cuda[:N]'); the stream does not depend on it."""
    p = net.p
    if p.mixtures > 1:
        return _run_tiles_mixture(net, tiles, shape, coders, check_reference, stats, device)
    bsz, H, W = shape
    decoding = tiles is None
    sizes = M.pyramid_sizes(H, W, p.scales)
    pyr, cur = _coarsest(tiles, sizes, bsz, p.scales, coders)
    z = err = None
    for i in reversed(range(p.scales)):
        h, w = sizes[i + 1]
        X, known, z, gmap, remaining = _scale_start(p, i, h, w, bsz, cur, pyr, z)
        err = M.start_errors(p, X, err)
        for j in range(p.groups):
            # the copy model's inputs for the phases this group may code (dynamic grouping: any not yet coded)
            cph = () if not coders[0].copies else M.group_phases(remaining if gmap is None else (gmap == j)[None])
            b16, cflag, cdiff, P, z = _predict(net, X, known, z, err, i, j, cph, check_reference, stats, device)
            if gmap is None:
                logits, _, sidx, _ = M.split_params(P, 1)
                sel = M.dynamic_select(sidx, logits, remaining, p.groups - j)
            else:
                sel = (gmap == j)[None].expand(bsz, 3, h, w)
            remaining = remaining & ~sel
            # everything below runs on the group's subpixels only, (1, n, 3col, 1) in tile order and inside a
            # tile phase-major raster (the coding order), the shape channel_mu16 indexes as (B, ph, col, k)
            pos = sel.nonzero().numpy()  # (n, 4): tile, phase, y, x in that order
            cuts = np.searchsorted(pos[:, 0], np.arange(bsz + 1))
            g = np.empty((7, len(pos), 3), np.float32)
            _gather(P.permute(0, 2, 3, 1).numpy(), b16.numpy(), X.numpy(), cflag.numpy(), cdiff.numpy(), pos, g)
            # views of g: decoded values written into xs below are what _scatter reads back from g[1]
            base, xs, off, sidx, coup, cflag, cdiff = (torch.from_numpy(t)[None, :, :, None] for t in g)
            e = []
            for col in range(3):
                mu = M.channel_mu16(col, base[:, :, col], off, coup, e, torch.floor)  # (1,n,1)
                c = torch.floor((mu + 8) / 16)
                s = sidx[0, :, col, 0].numpy().astype(np.int64)
                f8 = (mu - 16 * c + 8)[0, :, 0].numpy().astype(np.int64)
                cn = c[0, :, 0].numpy().astype(np.int64)
                xn = xs[0, :, col, 0].numpy().astype(np.int64)
                # the mean corrections' terms: the earlier channels' errors, the network's offset
                vs = [v[0, :, 0].numpy().astype(np.int64) for v in e + [off[:, :, col]]]
                if coders[0].copies:  # the copy centres: the earlier channel (just coded; R: 0) plus d
                    fl = cflag[0, :, col, 0].numpy() > 0
                    cc = ((xs[0, :, col - 1, 0] if col else 0) + cdiff[0, :, col, 0]).numpy().astype(np.int64)
                for b in range(bsz):
                    t = slice(cuts[b], cuts[b + 1])
                    v = coders[b].code(Step(i * p.groups + j, col, s[t], f8[t], cn[t], None if decoding else xn[t],
                                            (fl[t], cc[t]) if coders[0].copies else None, [u[t] for u in vs]))
                    if decoding:
                        xn[t] = v
                if decoding:
                    xs[0, :, col, 0] = torch.from_numpy(xn.astype(np.float32))
                e.append(16 * xs[:, :, col] - mu)
            _scatter(pos, g[1], torch.cat(e, dim=2)[0].numpy(), X.numpy(), known.numpy(),
                     err.numpy() if p.feedback else _NO_ERR, decoding)
        hi, wi = sizes[i]
        cur = X[:, :, :hi, :wi]
    return _pixels(cur)


def _exp_weight() -> np.ndarray:
    global _EXPW
    if _EXPW is None:
        _EXPW = np.load(M.TABLES_PATH.replace("logistic256.npz", "mixture.npz"))["exp_weight"].astype(np.int64)
    return _EXPW


_EXPW = None
CHUNK = 4096


def _mixture_pmf(freq2: np.ndarray, tbl: np.ndarray, cen: np.ndarray) -> np.ndarray:
    """Per-position, per-component integer pmf over x = 0..255: freq[tbl][(x - c) mod 256]. (n, K, 256)."""
    rows = freq2[tbl]  # (n, K, 256) indexed by d
    idx = (np.arange(256)[None, None, :] - cen[:, :, None]) & 255
    return np.take_along_axis(rows, idx, axis=2)


def _run_tiles_mixture(net, tiles, shape, coders, check_reference=False, stats=None, device="cpu"):
    """K > 1: per-symbol 2-D integer tables. Subpixel pmf = sum_k w_k pmf_k (then entropy.normalize); w_k from
    the integer logits by the stored exp table; channel coupling by integer posterior weights
    w_k <- (w_k * pmf_k(x)) >> 16 after each channel (the coded symbol is x itself)."""
    from ..entropy import normalize

    p = net.p
    k = p.mixtures
    bsz, H, W = shape
    decoding = tiles is None
    sizes = M.pyramid_sizes(H, W, p.scales)
    expw = _exp_weight()
    freq2 = coders[0].freq
    pyr, cur = _coarsest(tiles, sizes, bsz, p.scales, coders)
    z = None
    for i in reversed(range(p.scales)):
        h, w = sizes[i + 1]
        X, known, z, gmap, remaining = _scale_start(p, i, h, w, bsz, cur, pyr, z)
        for j in range(p.groups):
            b16, _, _, P, z = _predict(net, X, known, z, None, i, j, (), check_reference, stats, device)
            logits, off, sidx, coup = M.split_params(P, k)
            if gmap is None:
                sel = M.dynamic_select(sidx, logits, remaining, p.groups - j)
            else:
                sel = (gmap == j)[None].expand(bsz, 3, h, w)
            remaining = remaining & ~sel
            base = b16[:, :, :, None]
            xt = M.unknown_phases(X)[:, :, :, None].clone()  # (B,3ph,3col,1,h,w)
            seln = sel.numpy().reshape(bsz, -1)
            lg = logits.permute(0, 1, 3, 4, 2).reshape(bsz, -1, k).numpy().astype(np.int64)  # (B, n, K)
            wts = [None] * bsz
            for b in range(bsz):
                l = lg[b][seln[b]]
                wts[b] = expw[np.minimum(l.max(axis=1, keepdims=True) - l, 255)]
            e = []
            for col in range(3):
                mu = M.channel_mu16(col, base[:, :, col], off, coup, e, torch.floor)  # (B,3,K,h,w)
                c = torch.floor((mu + 8) / 16)
                f = mu - 16 * c
                tbl = (sidx[:, :, col] * 16 + f + 8).permute(0, 1, 3, 4, 2).reshape(bsz, -1, k).numpy().astype(np.int64)
                cn = c.permute(0, 1, 3, 4, 2).reshape(bsz, -1, k).numpy().astype(np.int64)
                xcol = xt[:, :, col, 0].reshape(bsz, -1).numpy().astype(np.int64)
                for b in range(bsz):
                    m = seln[b]
                    tb, cb, wb = tbl[b][m], cn[b][m], wts[b]
                    n = len(tb)
                    xs = xcol[b][m] if not decoding else np.zeros(n, np.int64)
                    for a0 in range(0, n, CHUNK):
                        sl = slice(a0, min(n, a0 + CHUNK))
                        pmf = _mixture_pmf(freq2, tb[sl], cb[sl])  # (n, K, 256)
                        counts = (wb[sl][:, :, None] * pmf).sum(axis=1)
                        table = normalize(counts)
                        if decoding:
                            xs[sl] = coders[b].dec.decode(table)
                        else:
                            coders[b].put(xs[sl], table)
                        pk = np.take_along_axis(pmf, xs[sl][:, None, None].repeat(k, 1), axis=2)[:, :, 0]
                        wb[sl] = (wb[sl] * pk) >> 16
                    if decoding:
                        xcol[b][m] = xs
                if decoding:
                    xv = torch.from_numpy(xcol.astype(np.float32)).reshape(bsz, 3, 1, h, w)
                    xt[:, :, col] = torch.where(sel[:, :, None], xv, xt[:, :, col])
                e.append(16 * xt[:, :, col] - mu)
            known = _group_done(X, known, sel, xt, decoding)
        hi, wi = sizes[i]
        cur = X[:, :, :hi, :wi]
    return _pixels(cur)


def encode(net: M.IntNet, pixels: np.ndarray, tile: int = DEFAULT_TILE, tile_batch: int = 2,
           check_reference: bool = False, stats: dict | None = None, device: str = "cpu",
           version: int | None = None, batch_pixels: int | None = None) -> bytes:
    """One image's payload: ``encode_many`` of one image. ``version``: the payload version to write (default: the
    newest the profile can use; K > 1 writes 1)."""
    return encode_many(net, [pixels], tile, tile_batch, check_reference, stats, device, version, batch_pixels)[0]


def encode_many(net: M.IntNet, images, tile=DEFAULT_TILE, tile_batch: int = 2, check_reference: bool = False,
                stats: dict | None = None, device: str = "cpu", version: int | None = None,
                batch_pixels: int | None = None) -> list[bytes]:
    """The payloads of several images, each byte-identical to ``encode`` of that image alone: tiles are coded
    independently, so same-size tiles of all the images share network batches (``_batches``: bounded by
    ``tile_batch`` tiles or ``batch_pixels`` pixels, whichever allows more). ``tile``: one tile side for every
    image, or one per image. Small images gain most: each network call has a fixed cost."""
    images = list(images)
    tiles = [tile] * len(images) if isinstance(tile, (int, np.integer)) else [int(t) for t in tile]
    if len(tiles) != len(images):
        raise ValueError(f"{len(tiles)} tile sides for {len(images)} images")
    if version is None:
        version = PAYLOAD_VERSIONS[-1] if net.p.mixtures == 1 else 1
    if version not in PAYLOAD_VERSIONS or (version > 1 and net.p.mixtures > 1):
        raise ValueError(f"mspsm cannot write payload version {version} for this profile")
    grids = []
    for pixels, t in zip(images, tiles):
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError("mspsm codes HxWx3 uint8 pixels")
        h, w = pixels.shape[:2]
        if h < 1 or w < 1 or t < 1:
            raise ValueError("empty image or bad tile size")
        grids.append(tiling.grid(h, w, t, t))
    streams: list[list[bytes]] = [[b""] * len(g) for g in grids]
    keys = net.p.scales * net.p.groups
    # version 4 chooses the shifts on the whole tile: it codes the tile when it is done
    tile_coder = _TileRecorder if version >= 4 else _TileEncoder
    for (th, tw, _), batch in _batches(grids, [version] * len(images), tile_batch, batch_pixels):
        px = np.stack([images[n][y:y + th, x:x + tw] for n, k in batch for y, x in [grids[n][k][:2]]])
        coders = [tile_coder(version, keys, count=stats is not None) for _ in batch]
        run_tiles(net, px, (len(batch), th, tw), coders, check_reference=check_reference, stats=stats,
                  device=device)
        for (n, k), cd in zip(batch, coders):
            streams[n][k] = cd.finish()
            if stats is not None:
                stats["bits"] = stats.get("bits", 0.0) + cd.bits
    out = []
    for pixels, t, ss in zip(images, tiles, streams):
        head = MAGIC + struct.pack("<BIIII", version, *pixels.shape[:2], t, len(ss))
        out.append(head + struct.pack(f"<{len(ss)}I", *[len(s) for s in ss]) + b"".join(ss))
    return out


def parse_head(payload: bytes) -> tuple[int, int, int, int, int]:
    """(version, height, width, tile, tiles) of a payload, checked against each other and the payload's length
    before anything is sized from them (a damaged height must not make a decoder build billions of tiles)."""
    if len(payload) < 21 or payload[:4] != MAGIC:
        raise CorruptStream("not an mspsm payload (bad magic)")
    ver, h, w, tile, n = struct.unpack_from("<BIIII", payload, 4)
    if ver not in PAYLOAD_VERSIONS:
        raise UnsupportedStream(f"mspsm payload version {ver} is not supported by this build (knows "
                                f"{', '.join(map(str, PAYLOAD_VERSIONS))})")
    if tile > MAX_TILE:
        raise CorruptStream(f"mspsm payload has {tile}-pixel tiles; encoders write at most {MAX_TILE}")
    if not (h and w and tile) or h * w > MAX_PIXELS or -(-h // tile) * -(-w // tile) != n:
        raise CorruptStream("mspsm payload tile count does not match its size")
    if len(payload) < 21 + 4 * n:
        raise CorruptStream("mspsm payload truncated")
    return ver, h, w, tile, n


def decode(net: M.IntNet, payload: bytes, tile_batch: int = 2, device: str = "cpu",
           batch_pixels: int | None = None) -> np.ndarray:
    """One payload's pixels: ``decode_many`` of one payload, its error raised."""
    out = decode_many(net, [payload], tile_batch, device, batch_pixels)[0]
    if isinstance(out, Exception):
        raise out
    return out


def decode_many(net: M.IntNet, payloads, tile_batch: int = 2, device: str = "cpu",
                batch_pixels: int | None = None) -> list:
    """The pixels of several payloads, same-size tiles of the same payload version sharing network batches (as
    ``encode_many``). Per payload: its (H,W,3) uint8 pixels, or the exception that payload raised (a damaged
    payload costs only itself; its tiles are left out of later batches). A batch that fails is decoded again tile
    by tile, so a damaged tile cannot fail the tiles of other payloads beside it. ``DeviceError`` (the device,
    not a payload) is raised."""
    payloads = list(payloads)
    out: list = [None] * len(payloads)
    grids: list = [[] for _ in payloads]
    streams: list = [None] * len(payloads)
    versions = [0] * len(payloads)
    for n, payload in enumerate(payloads):
        try:
            ver, h, w, tile, nt = parse_head(payload)
            if ver >= 2 and net.p.mixtures > 1:
                raise CorruptStream(f"mspsm payload version {ver} (scale correction) is for K = 1 profiles only")
            off = 21 + 4 * nt
            lens = struct.unpack_from(f"<{nt}I", payload, 21)
            if off + sum(lens) != len(payload):
                raise CorruptStream("mspsm payload length does not match its tile table")
        except Exception as exc:
            out[n] = exc
            continue
        grids[n], versions[n] = tiling.grid(h, w, tile, tile), ver
        starts = np.concatenate([[off], off + np.cumsum(lens)])
        streams[n] = [payload[starts[k]:starts[k + 1]] for k in range(nt)]
        out[n] = np.zeros((h, w, 3), np.uint8)
    keys = net.p.scales * net.p.groups

    def run(shape, batch):
        th, tw, ver = shape
        coders = [_TileDecoder(Decoder(streams[n][k]), ver, keys) for n, k in batch]
        for (n, k), t in zip(batch, run_tiles(net, None, (len(batch), th, tw), coders, device=device)):
            y, x = grids[n][k][:2]
            out[n][y:y + th, x:x + tw] = t

    for shape, batch in _batches(grids, versions, tile_batch, batch_pixels):
        batch = [(n, k) for n, k in batch if not isinstance(out[n], Exception)]
        if not batch:
            continue
        try:
            run(shape, batch)
        except DeviceError:
            raise
        except Exception:  # some tile is damaged: find which, alone, and keep the others
            for nk in batch:
                if not isinstance(out[nk[0]], Exception):
                    try:
                        run(shape, [nk])
                    except DeviceError:
                        raise
                    except Exception as exc:
                        out[nk[0]] = exc
    return out


# Pixels per network batch that small tiles may fill (a batch holds ``tile_batch`` tiles, or more while they total
# no more than this): 1 Mpx, half the memory of the default 2 tiles of 1024 x 1024, 256 tiles of 64 x 64.
BATCH_PIXELS = 1 << 20


def _batches(grids, versions, tile_batch: int, batch_pixels: int | None = None):
    """[((th, tw, version), [(image, tile index), ...]), ...]: the tiles of every image grouped by size and payload
    version (run_tiles codes one kind at a time), in order of first appearance, each group cut into batches of
    max(tile_batch, batch_pixels // tile pixels) tiles. Streams never depend on the batching."""
    limit = BATCH_PIXELS if batch_pixels is None else batch_pixels
    by_kind: dict = {}
    for n, (grid, ver) in enumerate(zip(grids, versions)):
        for k, (_, _, th, tw) in enumerate(grid):
            by_kind.setdefault((th, tw, ver), []).append((n, k))
    out = []
    for (th, tw, ver), ks in by_kind.items():
        size = max(1, tile_batch, limit // (th * tw))
        out += [((th, tw, ver), ks[a:a + size]) for a in range(0, len(ks), size)]
    return out
