"""Range coding over integer frequency tables (a thin layer over constriction).

Every table handed to this module is an array of *integers*: each frequency at least 1, each row summing to
exactly ``TOTAL``. Float tables are refused, because two machines can compute a float table differently, and a
range decoder whose table differs by one unit from the encoder's decodes garbage. The integer table is passed to
constriction as float64 holding exact integers whose sum is a power of two, so its rescaling to its own
fixed-point precision is exact and identical everywhere; ``perfect=False`` is always set (constriction 0.5 still
defaults to the very slow ``perfect=True``).
"""

from __future__ import annotations

import numpy as np
import constriction

from .errors import CorruptStream

PRECISION = 16
TOTAL = 1 << PRECISION  # every frequency table sums to exactly this


def _check_table(freqs: np.ndarray) -> np.ndarray:
    """Validate integer frequency table(s) (1-D or 2-D, rows = tables) and return them as exact float64."""
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
    return freqs.astype(np.float64)


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
    """One integer frequency table, validated once, with its constriction model built once: for codecs that
    code many short runs against a fixed bank of tables (checking a table costs ~20x the coding of a few symbols)."""

    __slots__ = ("size", "model")

    def __init__(self, freqs: np.ndarray) -> None:
        table = _check_table(freqs)
        if table.ndim != 1:
            raise ValueError("a Table is one 1-D frequency table")
        self.size = table.shape[0]
        self.model = constriction.stream.model.Categorical(table, perfect=False) if self.size > 1 else None


def bank(freqs: np.ndarray) -> list[Table]:
    """A ``Table`` per row of a 2-D integer table array."""
    return [Table(row) for row in np.asarray(freqs)]


def table_runs(idx: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The order to code symbols in whose tables are rows ``idx`` of a bank, one 1-D table call per distinct
    table: a stable sort by table index (so the given order is kept inside a table) and the (table, start, end)
    runs of that order. The decoder computes the same from the same indices before decoding."""
    idx = np.asarray(idx)
    small = idx.size and idx.max() < 1 << 15  # 16-bit keys: numpy's stable sort is then an O(n) radix sort
    order = np.argsort(idx.astype(np.int16) if small else idx, kind="stable")
    ts = idx[order]
    if not ts.size:
        return order, []
    cuts = np.flatnonzero(ts[1:] != ts[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [ts.size]])
    return order, list(zip(ts[starts].tolist(), starts.tolist(), ends.tolist()))  # tolist: Python ints, fast


class Encoder:
    """Appends symbols to one range-coded stream. Decode with ``Decoder`` in the same order."""

    def __init__(self) -> None:
        self._enc = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, freqs: np.ndarray | Table) -> None:
        """Encode ``symbols`` (1-D ints). ``freqs`` is one table shared by all symbols (1-D or a ``Table``) or one
        row per symbol (2-D)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1)
        if isinstance(freqs, Table):
            if symbols.size:
                self._encode_table(symbols, freqs)
            return
        table = _check_table(freqs)
        n = table.shape[-1]
        if symbols.size and (symbols.min() < 0 or symbols.max() >= n):
            raise ValueError(f"symbol outside the alphabet 0..{n - 1}")
        if table.ndim == 2 and table.shape[0] != symbols.size:
            raise ValueError("one table row per symbol is required")
        if n == 1:  # a one-symbol alphabet carries no information (and constriction cannot model it)
            return
        if table.ndim == 1:
            if symbols.size:
                self._enc.encode(symbols, constriction.stream.model.Categorical(table, perfect=False))
        elif symbols.size:
            self._enc.encode(symbols, constriction.stream.model.Categorical(perfect=False), table)

    def encode_indexed(self, symbols: np.ndarray, idx: np.ndarray, tables: list[Table]) -> None:
        """Encode ``symbols`` (1-D), each with the table ``tables[idx[i]]``: one call per distinct table, in
        ``table_runs`` order (``Decoder.decode_indexed`` reads them back)."""
        order, runs = table_runs(idx)
        ss = np.ascontiguousarray(np.asarray(symbols)[order], dtype=np.int32)  # runs go in without a copy
        for t, a, b in runs:
            self._encode_table(ss[a:b], tables[t])

    def _encode_table(self, symbols: np.ndarray, table: Table) -> None:
        """Non-empty contiguous int32 ``symbols`` with one prevalidated table (no conversions: the per-run path)."""
        if table.model is None:  # a one-symbol alphabet carries nothing, but the symbols are still checked
            if symbols.min() < 0 or symbols.max() >= table.size:
                raise ValueError(f"symbol outside the alphabet 0..{table.size - 1}")
            return
        try:
            self._enc.encode(symbols, table.model)
        except KeyError as exc:  # constriction's error for a symbol outside the alphabet
            raise ValueError(f"symbol outside the alphabet 0..{table.size - 1}") from exc

    def finish(self) -> bytes:
        return np.asarray(self._enc.get_compressed(), dtype="<u4").tobytes()


class Decoder:
    """Reads symbols back from a stream made by ``Encoder``. Corrupt input raises ``CorruptStream``."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptStream("range-coded payload length is not a multiple of 4 bytes")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            self._dec = constriction.stream.queue.RangeDecoder(words)
        except Exception as exc:  # constriction rejects some malformed word sequences outright
            raise CorruptStream(f"range decoder rejected the payload: {exc}") from exc

    def decode(self, freqs: np.ndarray | Table, count: int | None = None) -> np.ndarray:
        """Decode ``count`` symbols with one shared table (1-D ``freqs`` or a ``Table``) or one symbol per row
        (2-D ``freqs``)."""
        if isinstance(freqs, Table):
            if freqs.model is None or not count:
                return np.zeros(count or 0, np.int32)
            try:
                return np.asarray(self._dec.decode(freqs.model, int(count)), dtype=np.int32)
            except Exception as exc:
                raise CorruptStream(f"range decoding failed: {exc}") from exc
        table = _check_table(freqs)
        if table.shape[-1] == 1:
            return np.zeros((count or 0) if table.ndim == 1 else table.shape[0], np.int32)
        try:
            if table.ndim == 1:
                if not count:
                    return np.zeros(0, np.int32)
                model = constriction.stream.model.Categorical(table, perfect=False)
                out = self._dec.decode(model, int(count))
            else:
                if table.shape[0] == 0:
                    return np.zeros(0, np.int32)
                out = self._dec.decode(constriction.stream.model.Categorical(perfect=False), table)
        except Exception as exc:
            raise CorruptStream(f"range decoding failed: {exc}") from exc
        return np.asarray(out, dtype=np.int32).reshape(-1)

    def decode_indexed(self, idx: np.ndarray, tables: list[Table]) -> np.ndarray:
        """The symbols ``Encoder.encode_indexed`` coded with tables ``tables[idx[i]]`` (int64, in idx's order).
        One loop without per-run checks: this runs ~75k times per megapixel for mspsm."""
        order, runs = table_runs(idx)
        sym = np.zeros(len(order), np.int64)  # in coding order; one scatter at the end
        dec = self._dec
        try:
            for t, a, b in runs:
                model = tables[t].model
                if model is not None:
                    sym[a:b] = dec.decode(model, b - a)
        except Exception as exc:
            raise CorruptStream(f"range decoding failed: {exc}") from exc
        out = np.empty_like(sym)
        out[order] = sym
        return out
