"""Per-image scale correction for learned codecs whose tables are indexed by a scale index: causal (mspsm payload
versions 2 and 3, msr payload version 2) and transmitted (mspsm payload version 4).

A trained network's scale is right on average over the training set but often too wide or too narrow for one
image: its receptive field cannot see the image's overall noise level. Both sides therefore keep, per channel and
per bucket of 8 scale indices, the exact code length (integer, 1/256 bit, ``entropy.cost``) that each correction
delta in -6..6 would have spent on everything coded so far, and shift the scale index of the next coding step by
the delta with the smallest total. Nothing is transmitted; the decoder updates the same integer sums after
decoding each step. Measured: 4.6% fewer bits for mspsm on 12 dev images (an oracle that picks the best deltas
after the fact: 5.0%); msr in docs/MSR.md.
"""

from __future__ import annotations

import numba
import numpy as np

from .entropy import cost, normalize

DELTAS = np.array([0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6], np.int64)  # ties go to the smaller shift
BUCKET = 8  # scale indices per bucket
# a transmitted delta is coded as its difference from the one sent before it in the same step and channel (the best
# deltas change slowly from one bucket to the next): symbol = difference + 12
_STEP = np.abs(np.arange(-12, 13))
SHIFT_FREQ = normalize(np.where(_STEP == 0, 256, np.where(_STEP == 1, 64, np.where(_STEP == 2, 16, np.where(
    _STEP == 3, 6, 2)))).astype(np.int64))
SHIFT_COST = cost(SHIFT_FREQ).astype(np.int64)  # 1/256 bit, the unit of the cost sums
SHIFT_BUCKET = 4  # scale indices per transmitted cell (12 dev images, against payload 3: 8 -0.31, 4 -0.33, 2 -0.28 %)


class CostBank:
    """Integer code lengths of a table bank whose tables are ordered scale index first: ``rows`` (n_scales, rest),
    rest indexing (the other table coordinates, symbol) inside one scale index. Stored once more as int32 with the
    first and last rows repeated max |delta| times on either side, so a shifted lookup needs no clipping."""

    def __init__(self, freq: np.ndarray, n_scales: int) -> None:
        self.rows = cost(freq).reshape(n_scales, -1)
        self.n_scales, self.row = self.rows.shape
        self.pad = pad = int(np.abs(DELTAS).max())
        self.padded = np.concatenate([np.repeat(self.rows[:1], pad, 0), self.rows,
                                      np.repeat(self.rows[-1:], pad, 0)]).astype(np.int32).reshape(-1)


class ScaleAdapter:
    """One coding unit's correction state (an mspsm tile, an msr iteration) over a ``CostBank``."""

    def __init__(self, bank: CostBank, channels: int = 3) -> None:
        self.bank = bank
        self.acc = np.zeros((channels, -(-bank.n_scales // BUCKET), len(DELTAS)), np.int64)

    def shift(self, col: int, s: np.ndarray) -> np.ndarray:
        """Corrected scale indices for channel ``col`` (int64 array of network scale indices)."""
        best = DELTAS[self.acc[col].argmin(axis=1)]  # first minimum: all-zero history -> delta 0
        return np.minimum(np.maximum(s + best[s // BUCKET], 0), self.bank.n_scales - 1)  # np.clip: slower

    def update(self, col: int, s: np.ndarray, rest: np.ndarray) -> None:
        """Add what every delta would have cost on the symbols just coded in channel ``col``: network scale
        indices ``s`` and their ``rest`` index (other table coordinates and the symbol) inside a scale's row."""
        bk = self.bank
        s = np.asarray(s, np.int64)
        _add_costs(self.acc[col][None], np.zeros(len(s), np.int64), bk.padded, bk.row, bk.pad, s,
                   np.asarray(rest, np.int64), DELTAS, BUCKET)


class ShiftTable:
    """Transmitted scale correction: one delta per (coding step ``key``, channel, cell of SHIFT_BUCKET scale
    indices). The encoder sums, over a whole tile, what every delta would cost in each cell (``add``) and picks
    the deltas with the smallest total including their own code length in the stream (``choose``). A step's deltas
    are sent just before its symbols, for the cells it uses (``used_cells``), in cell order, each as the
    difference from the one before (``symbols`` / ``read``). Unlike the causal ``ScaleAdapter`` it pays no learning
    cost and follows how the network's errors change from scale to scale and group to group."""

    def __init__(self, bank: CostBank, keys: int, channels: int = 3) -> None:
        self.bank = bank
        self.delta = np.zeros((keys, channels, -(-bank.n_scales // SHIFT_BUCKET)), np.int64)
        self.acc: np.ndarray | None = None  # encoder: what each of DELTAS would cost in each cell

    def shift(self, key: int, col: int, s: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(s + self.delta[key, col, s // SHIFT_BUCKET], 0), self.bank.n_scales - 1)

    def symbols(self, key: int, col: int, cells: np.ndarray) -> np.ndarray:
        return chain_symbols(self.delta[key, col, cells], 1, 12)

    def read(self, key: int, col: int, cells: np.ndarray, symbols: np.ndarray) -> None:
        self.delta[key, col, cells] = chain_values(symbols, 1, 12)  # any value: shift clips

    def add(self, key, col: int, s: np.ndarray, rest: np.ndarray) -> None:
        """Encoder: add what every delta would cost on these symbols (as ``ScaleAdapter.update``); ``key``: their
        step, or an array of one step per symbol (several steps of a channel at once)."""
        if self.acc is None:
            self.acc = np.zeros(self.delta.shape + (len(DELTAS),), np.int64)
        bk = self.bank
        s = np.asarray(s, np.int64)
        key = np.broadcast_to(np.asarray(key, np.int64), s.shape).copy()
        _add_costs(self.acc[:, col], key, bk.padded, bk.row, bk.pad, s, np.asarray(rest, np.int64), DELTAS,
                   SHIFT_BUCKET)

    def choose(self) -> None:
        """Per (step, channel), the deltas of the used cells that minimise symbol costs plus difference codes."""
        if self.acc is None:
            return
        order = np.argsort(DELTAS)  # acc's columns in delta order -6..6
        vals = DELTAS[order]
        trans = SHIFT_COST[vals[None, :] - vals[:, None] + 12]  # [previous delta, delta]
        acc = self.acc[..., order].reshape((-1,) + self.acc.shape[2:])  # (step x channel, cell, delta)
        got = np.full(acc.shape[:2], -1)
        best_chains(acc, trans, 6, got)  # from delta 0
        self.delta = np.where(got >= 0, vals[got], self.delta.reshape(got.shape)).reshape(self.delta.shape)


def used_cells(s: np.ndarray, bucket: int) -> np.ndarray:
    """The cells of ``bucket`` scale indices that indices ``s`` fall in, ascending: whose values a step sends."""
    return np.flatnonzero(np.bincount(s // bucket))


def chain_symbols(values: np.ndarray, step: int, centre: int) -> np.ndarray:
    """Side information (multiples of ``step``) as symbols: each value's difference from the one before (0 before
    the first) in steps, plus ``centre``. ``chain_values`` inverts it."""
    out = np.empty_like(values)  # np.diff(values, prepend=0), without its overhead (~150 calls per mspsm tile)
    out[:1] = values[:1]
    np.subtract(values[1:], values[:-1], out=out[1:])
    return out // step + centre


def chain_values(symbols: np.ndarray, step: int, centre: int) -> np.ndarray:
    return np.cumsum(step * (np.asarray(symbols, np.int64) - centre))


@numba.njit(cache=True, nogil=True)
def best_chain(acc: np.ndarray, trans: np.ndarray, start: int) -> np.ndarray:
    """Options k_1..k_n minimising sum_i acc[i, k_i] + trans[k_(i-1), k_i], k_0 = ``start``: a shortest path
    (Viterbi), exact for integer costs. For side information sent as differences from the value before. Ties go
    to the first option (numpy's argmin), which the streams depend on. Compiled: an mspsm tile runs it ~160 times."""
    n, k = acc.shape
    best = trans[start] + acc[0]
    back = np.zeros((n, k), np.int64)
    for i in range(1, n):
        nxt = np.empty_like(best)
        for b in range(k):
            arg, low = 0, best[0] + trans[0, b]
            for a in range(1, k):
                v = best[a] + trans[a, b]
                if v < low:
                    arg, low = a, v
            back[i, b] = arg
            nxt[b] = low + acc[i, b]
        best = nxt
    path = np.empty(n, np.int64)
    path[n - 1] = np.argmin(best)
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


@numba.njit(cache=True, nogil=True)
def best_chains(acc: np.ndarray, trans: np.ndarray, start: int, out: np.ndarray) -> None:
    """``best_chain`` over the used cells (any non-zero cost) of each chain acc[r] (chains, cells, options):
    out[r, cell] = the option chosen for each used cell, the others left as they are. One call for all the
    chains of a tile."""
    for r in range(acc.shape[0]):
        used = np.array([c for c in range(acc.shape[1]) if np.any(acc[r, c] != 0)], np.int64)
        if len(used):
            path = best_chain(acc[r][used], trans, start)
            for i in range(len(used)):
                out[r, used[i]] = path[i]


@numba.njit(cache=True, nogil=True)
def _add_costs(acc, key, padded, row, pad, s, rest, deltas, bucket):
    """acc[key, s // bucket, k] += rows[clip(s + deltas[k]), rest] for every coded symbol (integer sums: exact)."""
    for i in range(s.shape[0]):
        at = (s[i] + pad) * row + rest[i]  # the unshifted entry in the padded table
        b = s[i] // bucket
        for k in range(deltas.shape[0]):
            acc[key[i], b, k] += padded[at + deltas[k] * row]
