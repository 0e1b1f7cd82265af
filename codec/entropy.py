"""Range coding over integer frequency tables: constriction's queue range coder and stream format, compiled here.

Every table handed to this module is an array of *integers*: each frequency at least 1, each row summing to
exactly ``TOTAL``. Float tables are refused, because two machines can compute a float table differently, and a
range decoder whose table differs by one unit from the encoder's decodes garbage.

The streams are those of constriction 0.5's ``stream.queue.RangeEncoder`` (u32 words, u64 state) with
``Categorical(table, perfect=False)`` models, which every payload written so far used: such a model moves an
integer table summing to 2**16 to 24-bit precision exactly (``_cdf``). The coder runs here as numba kernels
(``_encode``, ``_decode``) so that a symbol sequence with a table per symbol (``encode_indexed``) is one compiled
call instead of one constriction call per distinct table: mspsm codes small tiles with many short runs, and the
calls, not the arithmetic, were their cost (issue 27). tests/test_entropy.py checks the bytes against constriction
itself on random tables and symbols.
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import CorruptStream

PRECISION = 16
TOTAL = 1 << PRECISION  # every frequency table sums to exactly this


def _check_table(freqs: np.ndarray) -> np.ndarray:
    """Validate integer frequency table(s) (1-D or 2-D, rows = tables); return their coder form (``_cdf``)."""
    freqs = np.asarray(freqs)
    if not np.issubdtype(freqs.dtype, np.integer):
        raise TypeError(f"frequency tables must be integer arrays, got {freqs.dtype}")
    if freqs.ndim not in (1, 2) or freqs.shape[-1] < 1:
        raise ValueError(f"frequency table must be 1-D or 2-D and non-empty, got shape {freqs.shape}")
    if freqs.size and freqs.min() < 1:
        raise ValueError("every frequency must be at least 1")
    sums = freqs.sum(axis=-1, dtype=np.int64)
    if np.any(sums != TOTAL):
        raise ValueError(f"every frequency table must sum to {TOTAL}")
    return _cdf(freqs)


CODER_PRECISION = 24  # constriction's default categorical models: probabilities in 1/2**24


def _cdf(freqs: np.ndarray) -> np.ndarray:
    """The left cumulatives (last axis n + 1, int64) of valid tables as constriction quantizes them with
    ``perfect=False``: symbol i gets floor(cum_i * (2**24 - n) / TOTAL) + i (one unit reserved per symbol; the
    product is exact in float64 there, so this integer form is the same number), and the last entry is 2**24."""
    n = freqs.shape[-1]
    cum = np.concatenate([np.zeros(freqs.shape[:-1] + (1,), np.int64), np.cumsum(freqs, axis=-1, dtype=np.int64)],
                         axis=-1)
    return ((cum * ((1 << CODER_PRECISION) - n)) >> PRECISION) + np.arange(n + 1, dtype=np.int64)


def normalize(counts: np.ndarray) -> np.ndarray:
    """Turn non-negative integer counts (last axis = alphabet) into frequency tables summing to TOTAL,
    every symbol at least 1, with integer arithmetic only (so every machine gets the same table)."""
    counts = np.asarray(counts)
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(f"counts must be integers, got {counts.dtype}")
    counts = counts.astype(np.int64)
    n = counts.shape[-1]
    if n > TOTAL // 2:
        raise ValueError(f"alphabet of {n} symbols is too large for {PRECISION}-bit tables")
    cum = np.concatenate([np.zeros(counts.shape[:-1] + (1,), np.int64), np.cumsum(counts, axis=-1)], axis=-1)
    total = np.maximum(cum[..., -1:], 1)
    spare = TOTAL - n  # one unit per symbol is reserved so none gets zero
    scaled = (cum * spare) // total + np.arange(n + 1, dtype=np.int64)
    if np.any(cum[..., -1] == 0):  # all-zero counts: uniform
        uniform = (np.arange(n + 1, dtype=np.int64) * TOTAL) // n
        scaled = np.where(cum[..., -1:] == 0, uniform, scaled)
    return np.diff(scaled, axis=-1)


COST_FRAC = 8  # code lengths from ``cost`` are in 1/256 bit


def _log2_fixed(v: np.ndarray) -> np.ndarray:
    """floor-ish log2(v) * 2**COST_FRAC for integers 1..2**16 by integer squaring: deterministic everywhere
    (a float log2 may differ in its last bit between math libraries)."""
    v = np.asarray(v, np.int64)
    n = np.zeros_like(v)
    for k in range(1, 17):
        n += v >= (1 << k)
    m = v << (30 - n)  # mantissa in [2**30, 2**31)
    out = n << COST_FRAC
    for k in range(COST_FRAC - 1, -1, -1):
        m = (m * m) >> 30
        top = m >= (1 << 31)
        out += top.astype(np.int64) << k
        m = np.where(top, m >> 1, m)
    return out


def cost(freqs: np.ndarray) -> np.ndarray:
    """Integer code length of each entry of integer frequency table(s), in 1/256 bit: what coding that symbol
    costs, for deterministic model selection on both sides of a stream."""
    freqs = np.asarray(freqs)
    if not np.issubdtype(freqs.dtype, np.integer) or (freqs.size and (freqs.min() < 1 or freqs.max() > TOTAL)):
        raise ValueError(f"cost needs integer frequencies in 1..{TOTAL}")
    return (PRECISION << COST_FRAC) - _log2_fixed(freqs)


class Table:
    """One integer frequency table, validated once: for codecs that code many short runs against a fixed bank of
    tables (checking a table costs more than coding a few symbols)."""

    __slots__ = ("size", "cdf", "freqs")

    def __init__(self, freqs: np.ndarray) -> None:
        cdf = _check_table(freqs)
        if cdf.ndim != 1:
            raise ValueError("a Table is one 1-D frequency table")
        self.size, self.cdf, self.freqs = cdf.shape[0] - 1, cdf, np.asarray(freqs)


class Bank:
    """A bank of tables of one alphabet (rows of a 2-D integer array), validated once; ``bank[t]`` is row t as a
    ``Table``, and ``encode_indexed`` codes a table per symbol from it in one compiled call."""

    def __init__(self, freqs: np.ndarray) -> None:
        self.cdf, self.freqs = _check_table(freqs), freqs
        if self.cdf.ndim != 2:
            raise ValueError("a Bank is a 2-D array of frequency tables")
        self.size = self.cdf.shape[1] - 1

    def __len__(self) -> int:
        return len(self.cdf)

    def __getitem__(self, t: int) -> Table:
        table = Table.__new__(Table)
        table.size, table.cdf, table.freqs = self.size, self.cdf[t], self.freqs[t]
        return table


def bank(freqs: np.ndarray) -> Bank:
    return Bank(np.asarray(freqs))


def stack(parts: list) -> Bank:
    """One bank of the rows of several banks and tables (``Bank`` or ``Table``), in order, so that symbols of
    different alphabets can go to one ``encode_rows`` call. A row shorter than the longest alphabet gives the
    symbols beyond its own zero probability: the coder refuses them."""
    rows = [p.cdf.reshape(-1, p.cdf.shape[-1]) for p in parts]
    width = max(r.shape[1] for r in rows)
    out = Bank.__new__(Bank)
    out.cdf = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), mode="edge") for r in rows])
    out.freqs, out.size = None, width - 1
    return out


def table_order(idx: np.ndarray, tables: int) -> np.ndarray:
    """The coding order of ``encode_indexed`` for symbols whose tables are rows ``idx`` of a bank of ``tables``:
    a stable sort by table index (a run per distinct table, the given order kept inside it), as a compiled
    counting sort (a small mspsm step sorts ~1000 symbols). The decoder computes the same from the same indices."""
    return _counting_order(np.asarray(idx, np.int64), tables)


@numba.njit(cache=True, nogil=True)
def _counting_order(idx, tables):
    start = np.zeros(tables + 1, np.int64)
    for t in idx:
        if t < 0 or t >= tables:
            raise ValueError("table index outside the bank")
        start[t + 1] += 1
    for t in range(tables):
        start[t + 1] += start[t]
    order = np.empty(idx.shape[0], np.int64)
    for i in range(idx.shape[0]):  # in the given order inside each table: stable
        order[start[idx[i]]] = i
        start[idx[i]] += 1
    return order


# The range coder's state and word constants (constriction's RangeEncoder<u32, u64>), typed for numba: a plain
# Python int would make numba mix int64 with uint64 and fall back to float arithmetic.
_U = np.uint64
_WORD = _U(32)
_PREC = _U(CODER_PRECISION)
_MIN_RANGE = _U(1 << 32)  # the invariant range >= 2**32 (one word of headroom)
_FULL = _U(0xFFFFFFFFFFFFFFFF)  # the range of an encoder that has coded nothing
_WORD_MASK = _U(0xFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def _encode(st, buf, nw, cdf, tbl, sym, order):
    """Range-code symbols ``sym[order[k]]`` with tables ``cdf[tbl[order[k]]]`` (left cumulatives, 24-bit) onto
    ``buf`` from word ``nw``; returns the new word count. ``st`` = (lower, range, words held back while a carry
    may still reach them, the first of those words), updated. Symbols outside the alphabet return -1 - k."""
    lower, rng, ninv, first = st[0], st[1], st[2], st[3]
    n = cdf.shape[1] - 1
    for k in range(order.shape[0]):
        i = order[k]
        s, t = sym[i], tbl[i]
        if s < 0 or s >= n:
            st[0], st[1], st[2], st[3] = lower, rng, ninv, first
            return -1 - k
        if cdf[t, s + 1] == cdf[t, s]:  # beyond its row's alphabet (``stack``)
            st[0], st[1], st[2], st[3] = lower, rng, ninv, first
            return -1 - k
        left = _U(cdf[t, s])
        scale = rng >> _PREC
        rng = scale * (_U(cdf[t, s + 1]) - left)
        new_lower = lower + scale * left  # wraps: the carry
        if ninv > 0 and new_lower + rng > new_lower:  # the held-back words are settled
            if new_lower < lower:
                buf[nw] = (first + _U(1)) & _WORD_MASK
                rest = _U(0)
            else:
                buf[nw] = first
                rest = _WORD_MASK
            nw += 1
            for _ in range(1, int(ninv)):
                buf[nw] = rest
                nw += 1
            ninv = _U(0)
        lower = new_lower
        if rng < _MIN_RANGE:
            rng = rng << _WORD
            word = lower >> _WORD
            lower = lower << _WORD
            if ninv > 0:
                ninv += _U(1)
            elif lower + rng > lower:
                buf[nw] = word
                nw += 1
            else:
                ninv, first = _U(1), word
    st[0], st[1], st[2], st[3] = lower, rng, ninv, first
    return nw


@numba.njit(cache=True, nogil=True)
def _decode(st, words, cdf, tbl, order, out):
    """The inverse of ``_encode``: decodes into ``out[order[k]]`` with tables ``cdf[tbl[order[k]]]``. ``st`` =
    (lower, range, point, next word), updated; past the end of ``words`` zero bits are read (as constriction).
    Returns 0, or -1 where constriction reports invalid data."""
    lower, rng, point, pos = st[0], st[1], st[2], st[3]
    n = cdf.shape[1] - 1
    nwords = _U(words.shape[0])
    for k in range(order.shape[0]):
        i = order[k]
        row = cdf[tbl[i]]
        scale = rng >> _PREC
        q = (point - lower) // scale
        if q >= _U(1) << _PREC:
            return -1
        lo, hi = 0, n  # the symbol s with row[s] <= q < row[s + 1]
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if _U(row[mid]) <= q:
                lo = mid
            else:
                hi = mid
        left = _U(row[lo])
        lower = lower + scale * left
        rng = scale * (_U(row[lo + 1]) - left)
        if rng < _MIN_RANGE:
            lower = lower << _WORD
            rng = rng << _WORD
            point = point << _WORD
            if pos < nwords:
                point = point | _U(words[pos])
                pos += _U(1)
        out[i] = lo
    st[0], st[1], st[2], st[3] = lower, rng, point, pos
    return 0


class Encoder:
    """Appends symbols to one range-coded stream. Decode with ``Decoder`` in the same order."""

    def __init__(self) -> None:
        self._st = np.array([0, int(_FULL), 0, 0], np.uint64)
        self._buf = np.zeros(1024, np.uint32)
        self._n = 0

    def encode(self, symbols: np.ndarray, freqs: np.ndarray | Table) -> None:
        """Encode ``symbols`` (1-D ints). ``freqs`` is one table shared by all symbols (1-D or a ``Table``) or one
        row per symbol (2-D)."""
        symbols = np.asarray(symbols).reshape(-1)
        cdf = freqs.cdf if isinstance(freqs, Table) else _check_table(freqs)
        if cdf.ndim == 2 and cdf.shape[0] != symbols.size:
            raise ValueError("one table row per symbol is required")
        tbl = np.zeros(symbols.size, np.int64) if cdf.ndim == 1 else np.arange(symbols.size)
        self._code(cdf.reshape(-1, cdf.shape[-1]), tbl, symbols, np.arange(symbols.size))

    def encode_indexed(self, symbols: np.ndarray, idx: np.ndarray, tables: Bank) -> None:
        """Encode ``symbols`` (1-D), each with the table ``tables[idx[i]]``, in ``table_order`` (one run per
        distinct table; ``Decoder.decode_indexed`` reads them back)."""
        idx = np.asarray(idx, np.int64)
        self._code(tables.cdf, idx, np.asarray(symbols), table_order(idx, len(tables)))

    def encode_rows(self, symbols: np.ndarray, idx: np.ndarray, tables: Bank) -> None:
        """Encode ``symbols`` (1-D) in the order given, each with the table ``tables[idx[i]]``."""
        self._code(tables.cdf, np.asarray(idx, np.int64), np.asarray(symbols), np.arange(len(symbols)))

    def _code(self, cdf: np.ndarray, tbl: np.ndarray, symbols: np.ndarray, order: np.ndarray) -> None:
        n = cdf.shape[1] - 1
        if not symbols.size:
            return
        if n == 1:  # a one-symbol alphabet carries no information (constriction cannot model it): only checked
            if symbols.min() < 0 or symbols.max() >= n:
                raise ValueError(f"symbol outside the alphabet 0..{n - 1}")
            return
        need = self._n + int(self._st[2]) + symbols.size + 2  # at most a word per symbol, plus the held-back ones
        if need > self._buf.size:
            self._buf = np.concatenate([self._buf, np.zeros(max(need, 2 * self._buf.size), np.uint32)])
        got = _encode(self._st, self._buf, self._n, cdf, tbl.astype(np.int64, copy=False),
                      symbols.astype(np.int64, copy=False), order)
        if got < 0:
            # the symbols before the bad one are coded (as constriction, which fails at the bad one)
            raise ValueError(f"symbol outside the alphabet 0..{n - 1}")
        self._n = got

    def finish(self) -> bytes:
        """The stream: the words so far and those that fix the final range (constriction's ``seal``)."""
        lower, rng, ninv, first = (int(v) for v in self._st)
        tail = []
        if rng != int(_FULL):  # else nothing was coded: an empty stream
            mask = (1 << 64) - 1
            point = (lower + (1 << 32) - 1) & mask
            if ninv:
                tail += [first + 1, *[0] * (ninv - 1)] if point < lower else [first, *[0xFFFFFFFF] * (ninv - 1)]
            tail.append(point >> 32)
            if ((lower + rng) & mask) >> 32 == point >> 32:
                tail.append(0)
        return np.concatenate([self._buf[:self._n], np.array(tail, np.uint32)]).astype("<u4").tobytes()


class Decoder:
    """Reads symbols back from a stream made by ``Encoder``. Corrupt input raises ``CorruptStream``."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptStream("range-coded payload length is not a multiple of 4 bytes")
        self._words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        head = [int(w) for w in self._words[:2]]  # the point: the first two words, zero bits past the end
        point = ((head + [0, 0])[0] << 32 | (head + [0, 0])[1]) if head else 0
        self._st = np.array([0, int(_FULL), point, len(head)], np.uint64)

    def decode(self, freqs: np.ndarray | Table, count: int | None = None) -> np.ndarray:
        """Decode ``count`` symbols with one shared table (1-D ``freqs`` or a ``Table``) or one symbol per row
        (2-D ``freqs``)."""
        cdf = freqs.cdf if isinstance(freqs, Table) else _check_table(freqs)
        n = (count or 0) if cdf.ndim == 1 else cdf.shape[0]
        tbl = np.zeros(n, np.int64) if cdf.ndim == 1 else np.arange(n)
        return self._run(cdf.reshape(-1, cdf.shape[-1]), tbl, np.arange(n)).astype(np.int32)

    def decode_indexed(self, idx: np.ndarray, tables: Bank) -> np.ndarray:
        """The symbols ``Encoder.encode_indexed`` coded with tables ``tables[idx[i]]`` (int64, in idx's order)."""
        idx = np.asarray(idx, np.int64)
        return self._run(tables.cdf, idx, table_order(idx, len(tables)))

    def _run(self, cdf: np.ndarray, tbl: np.ndarray, order: np.ndarray) -> np.ndarray:
        out = np.zeros(len(order), np.int64)
        if cdf.shape[1] > 2 and len(order) and _decode(self._st, self._words, cdf, tbl, order, out) < 0:
            raise CorruptStream("range decoding failed: invalid compressed data")
        return out
