"""The per-image scale correction (codec/adapt.py) shared by the learned codecs' K = 1 table banks."""

from __future__ import annotations

import numpy as np
import pytest

from pixark.codec.adapt import BUCKET, DELTAS, ScaleAdapter
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
