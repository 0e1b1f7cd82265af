"""The per-image scale correction (codec/adapt.py) shared by the learned codecs' K = 1 table banks."""

from __future__ import annotations

import numpy as np
import pytest

from pixark.codec.adapt import (BUCKET, DELTAS, SHIFT_BUCKET, SHIFT_COST, ScaleAdapter, ShiftTable, best_chain,
                                used_cells)
from pixark.codec.mspsm import model as mspsm_model
from pixark.codec.msr import model as msr_model


def _bank(name):
    """(cost bank, scale index, rest index of the most probable symbol, symbol alphabet size)."""
    if name == "mspsm":  # rows: 64 scale indices x (16 mean fractions x 256 symbols); symbol 0 = the mean
        return mspsm_model.tables()["cost"], 40, 8 * 256, 256
    rows = msr_model.tables(5)["cost"]  # rows: 48 scale indices x (64 means x 32 LSBs); mean 0 is index 32
    return rows, 30, 32 * 32, 32


@pytest.mark.parametrize("name", ["mspsm", "msr"])
def test_scale_correction_follows_what_was_coded(name):
    """Starts neutral and moves toward the delta that would have coded the past symbols shortest: symbols far
    narrower than the network's scale pull the index down, wider ones up; per channel and per bucket."""
    bank, s0, rest0, n_sym = _bank(name)
    rng = np.random.default_rng(0)
    s = np.full(4000, s0, np.int64)
    narrow, wide = ScaleAdapter(bank), ScaleAdapter(bank)
    assert np.array_equal(narrow.shift(0, s), s)  # no history: no correction
    centre = rest0 + (0 if name == "mspsm" else n_sym // 2)  # the symbol at the mean
    narrow.update(0, s, np.full(4000, centre))
    wide.update(0, s, rest0 + rng.integers(0, n_sym, 4000))  # uniform symbols
    assert narrow.shift(0, s)[0] < s0 < wide.shift(0, s)[0]
    assert np.array_equal(narrow.shift(1, s), s)  # per channel
    other = s - BUCKET  # per bucket of scale indices
    assert np.array_equal(narrow.shift(0, other), other)


def test_shift_is_the_cheapest_delta_and_stays_in_range():
    bank = msr_model.tables(5)["cost"]
    rows = bank.rows
    ad = ScaleAdapter(bank)
    s = np.array([0, 1, 47, 46], np.int64)
    rest = np.array([32 * 32 + 16] * 4)  # the LSB at the mean, four times
    ad.update(2, s, rest)
    # what each delta would have cost, summed by hand, for bucket 0 (indices 0 and 1)
    want = [sum(rows[min(max(x + d, 0), 47), r] for x, r in zip(s[:2], rest[:2])) for d in DELTAS]
    assert list(ad.acc[2, 0]) == want
    top = [sum(rows[min(max(x + d, 0), 47), r] for x, r in zip(s[2:], rest[2:])) for d in DELTAS]
    assert list(ad.acc[2, 5]) == top and not ad.acc[2, 1:5].any() and not ad.acc[:2].any()
    out = ad.shift(2, s)
    assert out.min() >= 0 and out.max() <= 47
    assert out[0] == min(max(0 + DELTAS[int(np.argmin(want))], 0), 47)


def test_transmitted_shifts_are_chosen_on_all_the_symbols_with_their_own_cost():
    """Payload version 4's deltas: per (coding step, channel) the deltas of the used cells that minimise the
    symbols' total code length plus the deltas' own (each sent as the difference from the one before, from 0);
    checked against a brute force over every path; cells nothing was coded in are never sent."""
    import itertools

    bank, s0, rest0, _ = _bank("mspsm")
    rows = bank.rows
    tab = ShiftTable(bank, keys=3)
    lo, mid, hi = s0 - SHIFT_BUCKET, s0, s0 + SHIFT_BUCKET
    data = [(lo, rest0 + 2, 40), (mid, rest0, 3000), (hi, rest0 + 40, 300)]  # wide, very narrow, a few very wide
    for s, r, n in data:
        tab.add(1, 2, np.full(n, s), np.full(n, r))
    tab.add(1, 2, np.array([mid]), np.array([rest0]))  # sums accumulate
    tab.choose()
    cells = used_cells(np.array([hi, lo, mid, lo]), SHIFT_BUCKET)
    assert list(cells) == [lo // SHIFT_BUCKET, mid // SHIFT_BUCKET, hi // SHIFT_BUCKET]

    def total(path):
        bits = sum(SHIFT_COST[d - p + 12] for p, d in zip((0,) + path[:-1], path))
        for (s, r, n), d in zip(data, path):
            bits += (n + (s == mid)) * rows[min(max(s + d, 0), 63), r]
        return bits

    best = min(itertools.product(sorted(DELTAS), repeat=3), key=total)
    assert total(tuple(tab.delta[1, 2, cells])) == total(best)
    assert tab.delta[1, 2, mid // SHIFT_BUCKET] < 0  # narrow symbols pull the scale down
    assert np.count_nonzero(tab.delta[0]) == np.count_nonzero(tab.delta[2]) == np.count_nonzero(tab.delta[1, :2]) == 0
    got = tab.shift(1, 2, np.array([mid, 0]))
    assert got[0] == mid + tab.delta[1, 2, mid // SHIFT_BUCKET] and got[1] == 0  # unused cell: unshifted
    # what the decoder reads back from the symbols gives the same deltas
    other = ShiftTable(bank, keys=3)
    other.read(1, 2, cells, tab.symbols(1, 2, cells))
    assert np.array_equal(other.delta, tab.delta)
    few = ShiftTable(bank, keys=1)  # two symbols cannot pay for a delta's code length
    few.add(0, 0, np.full(2, s0), np.full(2, rest0 + 3))
    few.choose()
    gain = [2 * (rows[s0, rest0 + 3] - rows[min(max(s0 + d, 0), 63), rest0 + 3]) for d in DELTAS]
    assert max(gain) > 0 and not few.delta.any()


def test_best_chain_is_the_cheapest_path():
    """The shortest path behind the transmitted side information, against a brute force on random costs."""
    import itertools

    rng = np.random.default_rng(1)
    for _ in range(20):
        n, k = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        acc, trans, start = rng.integers(0, 50, (n, k)), rng.integers(0, 50, (k, k)), int(rng.integers(0, k))

        def total(path):
            return sum(acc[i, p] + trans[q, p] for i, (q, p) in enumerate(zip((start,) + path[:-1], path)))

        got = tuple(int(v) for v in best_chain(acc, trans, start))
        assert len(got) == n and total(got) == min(total(p) for p in itertools.product(range(k), repeat=n))
