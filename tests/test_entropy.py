"""The entropy layer: integer tables only, exact round trips on random tables and symbols."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pixark.codec import entropy
from pixark.codec.errors import CorruptStream

counts = st.lists(st.integers(0, 10_000), min_size=1, max_size=300)


@settings(max_examples=100, deadline=None)
@given(counts=counts)
def test_normalize_gives_valid_tables(counts):
    table = entropy.normalize(np.array(counts))
    assert table.sum() == entropy.TOTAL and table.min() >= 1 and table.dtype == np.int64
    # more counts never means a smaller frequency
    order = np.argsort(counts, kind="stable")
    assert np.all(np.diff(table[order]) >= -1)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), alphabet=st.integers(1, 300), n=st.integers(0, 400), shared=st.booleans())
def test_round_trip_on_random_tables(data, alphabet, n, shared):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rows = 1 if shared else n
    tables = entropy.normalize(rng.integers(0, 1000, (rows, alphabet)) ** rng.integers(1, 4))
    symbols = rng.integers(0, alphabet, n)
    enc = entropy.Encoder()
    enc.encode(symbols, tables[0] if shared else tables)
    dec = entropy.Decoder(enc.finish())
    out = dec.decode(tables[0], n) if shared else dec.decode(tables)
    assert np.array_equal(out, symbols)


def test_mixed_calls_decode_in_order():
    rng = np.random.default_rng(1)
    t1 = entropy.normalize(rng.integers(0, 50, 256))
    t2 = entropy.normalize(rng.integers(0, 50, (7, 3)))
    a, b = rng.integers(0, 256, 1000), rng.integers(0, 3, 7)
    enc = entropy.Encoder()
    enc.encode(a, t1)
    enc.encode(b, t2)
    dec = entropy.Decoder(enc.finish())
    assert np.array_equal(dec.decode(t1, 1000), a) and np.array_equal(dec.decode(t2), b)


def test_float_tables_are_refused():
    with pytest.raises(TypeError, match="integer"):
        entropy.Encoder().encode(np.array([0]), np.full(4, 0.25))
    with pytest.raises(TypeError):
        entropy.normalize(np.array([0.5, 0.5]))


def test_invalid_tables_are_refused():
    enc = entropy.Encoder()
    with pytest.raises(ValueError, match="at least 1"):
        enc.encode(np.array([0]), np.array([0, entropy.TOTAL]))
    with pytest.raises(ValueError, match="sum"):
        enc.encode(np.array([0]), np.array([1, 2]))
    with pytest.raises(ValueError, match="alphabet"):
        enc.encode(np.array([5]), entropy.normalize(np.ones(4, np.int64)))


def test_deterministic_bytes():
    """The same integer table gives the same bytes in every run: pinned here against a recorded value."""
    table = entropy.normalize(np.arange(1, 17))
    enc = entropy.Encoder()
    enc.encode(np.arange(16) % 16, table)
    assert enc.finish().hex() == GOLDEN_HEX


def test_damaged_payloads_raise_or_decode_some_symbols_never_crash():
    table = entropy.normalize(np.arange(1, 257))
    with pytest.raises(CorruptStream):
        entropy.Decoder(b"abc")
    rng = np.random.default_rng(3)
    for _ in range(20):
        junk = rng.integers(0, 256, 4 * rng.integers(0, 8), dtype=np.uint8).tobytes()
        try:
            out = entropy.Decoder(junk).decode(table, 100)
        except CorruptStream:
            continue
        assert out.shape == (100,) and out.min() >= 0 and out.max() < 256


GOLDEN_HEX = "7eb50300eb086072b37a196c"


@settings(max_examples=40, deadline=None)
@given(data=st.data(), alphabet=st.integers(1, 300), runs=st.integers(0, 30))
def test_prevalidated_tables_code_the_same_bytes(data, alphabet, runs):
    """entropy.Table (validated once, for fixed table banks) is a speed path only: same bytes, same symbols."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    freqs = entropy.normalize(rng.integers(0, 1000, (4, alphabet)) ** 2)
    bank = entropy.bank(freqs)
    plan = [(int(rng.integers(4)), rng.integers(0, alphabet, int(rng.integers(0, 20)))) for _ in range(runs)]
    plain, fast = entropy.Encoder(), entropy.Encoder()
    for t, sym in plan:
        plain.encode(sym, freqs[t])
        fast.encode(sym, bank[t])
    data_bytes = fast.finish()
    assert data_bytes == plain.finish()
    dec = entropy.Decoder(data_bytes)
    for t, sym in plan:
        assert np.array_equal(dec.decode(bank[t], len(sym)), sym)


def test_prevalidated_tables_refuse_bad_input():
    with pytest.raises(TypeError):
        entropy.Table(np.full(4, entropy.TOTAL / 4))
    with pytest.raises(ValueError):
        entropy.Table(np.array([entropy.TOTAL - 1, 2]))
    t = entropy.Table(entropy.normalize(np.array([1, 1, 1])))
    with pytest.raises(ValueError):
        entropy.Encoder().encode(np.array([3]), t)
    with pytest.raises(ValueError):
        entropy.Encoder().encode(np.array([-1]), t)
    with pytest.raises(ValueError):  # a one-symbol alphabet still checks its symbols
        entropy.Encoder().encode(np.array([1]), entropy.Table(np.array([entropy.TOTAL])))


def table_runs(idx: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The reference for encode_indexed: (table, positions) of each distinct table in ascending order, the
    positions in their given order (a stable sort by table, cut at every new table)."""
    order = np.argsort(idx, kind="stable")
    return [(int(t), order[idx[order] == t]) for t in np.unique(idx)]


@given(st.lists(st.integers(0, 70000), max_size=200))
@settings(max_examples=60, deadline=None)
def test_table_order_is_a_stable_sort_by_table(idx):
    idx = np.array(idx, np.int64)
    order = entropy.table_order(idx, 70001)
    assert np.array_equal(order, np.argsort(idx, kind="stable"))
    if idx.size:
        with pytest.raises(ValueError, match="outside the bank"):
            entropy.table_order(idx, int(idx.max()))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), alphabet=st.integers(1, 40), n=st.integers(0, 300))
def test_indexed_coding_is_runs_by_table(data, alphabet, n):
    """encode_indexed / decode_indexed: each symbol with its own table of a bank, coded as the runs of
    table_runs (the same bytes as coding those runs one call each), decoded back in the given order."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    freqs = entropy.normalize(rng.integers(0, 1000, (5, alphabet)) ** 2)
    bank = entropy.bank(freqs)
    idx = rng.integers(0, 5, n)
    sym = rng.integers(0, alphabet, n)
    enc, runs_enc = entropy.Encoder(), entropy.Encoder()
    enc.encode_indexed(sym, idx, bank)
    for t, at in table_runs(idx):
        runs_enc.encode(sym[at], bank[t])
    stream = enc.finish()
    assert stream == runs_enc.finish()
    assert np.array_equal(entropy.Decoder(stream).decode_indexed(idx, bank), sym)


def test_indexed_decoding_of_damage_raises_or_returns_symbols():
    freqs = entropy.normalize(np.arange(1, 257)[None].repeat(3, 0) ** np.array([[1], [2], [3]]))
    bank = entropy.bank(freqs)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 3, 2000)
    enc = entropy.Encoder()
    enc.encode_indexed(rng.integers(0, 256, 2000), idx, bank)
    good = enc.finish()
    for cut in (0, 4, len(good) // 2):
        try:
            out = entropy.Decoder(good[:cut]).decode_indexed(idx, bank)
        except CorruptStream:
            continue
        assert out.shape == (2000,) and out.min() >= 0 and out.max() < 256


def _constriction_stream(plan) -> bytes:
    """What constriction 0.5 itself writes for ``plan`` [(symbols, 1-D or 2-D integer table)]: the reference
    that the compiled coder must match word for word (every stored payload was written by it)."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    for sym, tab in plan:
        if tab.shape[-1] > 1 and sym.size:
            model = constriction.stream.model.Categorical
            if tab.ndim == 1:
                enc.encode(sym.astype(np.int32), model(tab.astype(np.float64), perfect=False))
            else:
                enc.encode(sym.astype(np.int32), model(perfect=False), tab.astype(np.float64))
    return np.asarray(enc.get_compressed(), dtype="<u4").tobytes()


@settings(max_examples=150, deadline=None)
@given(data=st.data(), calls=st.integers(1, 6))
def test_streams_are_constrictions_word_for_word(data, calls):
    """Shared and per-symbol tables of alphabets 1..300, skewed (long runs of likely symbols: carries) or not,
    and a bank with a table per symbol: the same bytes as constriction, decoded back."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    plan, enc = [], entropy.Encoder()
    for _ in range(calls):
        a, n = int(rng.choice([1, 2, 3, 25, 65, 256, 300])), int(rng.integers(1, 400))
        t = entropy.normalize(rng.integers(0, 1000, (a,) if rng.random() < 0.5 else (n, a)) ** rng.integers(1, 4))
        sym = rng.integers(0, a, n) if rng.random() < 0.5 else np.full(n, int(np.argmax(t.reshape(-1, a)[0])))
        if t.ndim == 2 and rng.random() < 0.5:  # the same symbols with a bank: coded in table order
            idx = rng.integers(0, n, n)
            enc.encode_indexed(sym, idx, entropy.bank(t))
            order = np.argsort(idx, kind="stable")
            plan.append((sym[order], t[idx[order]]))
        else:
            enc.encode(sym, t)
            plan.append((sym, t))
    stream = enc.finish()
    assert stream == _constriction_stream(plan)
    dec = entropy.Decoder(stream)
    for sym, t in plan:
        assert np.array_equal(dec.decode(t, len(sym)) if t.ndim == 1 else dec.decode(t), sym)


def test_stacked_bank_codes_as_its_parts():
    """entropy.stack (a bank and tables of smaller alphabets as rows of one bank) with encode_rows, in the given
    order: the bytes of coding each part with its own table; a symbol beyond its row's alphabet is refused."""
    rng = np.random.default_rng(8)
    freqs = entropy.normalize(rng.integers(0, 1000, (6, 256)) ** 2)
    bank, small = entropy.bank(freqs), entropy.Table(entropy.normalize(rng.integers(1, 9, 25)))
    both = entropy.stack([bank, small])
    assert len(both) == 7 and both.size == 255 + 1
    a, idx, b = rng.integers(0, 256, 300), rng.integers(0, 6, 300), rng.integers(0, 25, 40)
    want = entropy.Encoder()
    want.encode_indexed(a, idx, bank)
    want.encode(b, small)
    order = np.argsort(idx, kind="stable")
    got = entropy.Encoder()
    got.encode_rows(np.concatenate([a[order], b]), np.concatenate([idx[order], np.full(40, 6)]), both)
    assert got.finish() == want.finish()
    with pytest.raises(ValueError, match="alphabet"):
        entropy.Encoder().encode_rows(np.array([25]), np.array([6]), both)
