"""Build the integer frequency-table bank used by the MSPSM codec (run once; output committed as data).

    python codec/tables/build.py        # writes codec/tables/logistic256.npz and codec/tables/mixture.npz

Bank ``freq[s, f, d]``: a discretized logistic with scale ``SCALES[s]`` centred at ``f/16`` (f = -8..7 stored at
index f + 8), over the residual d = (x - c) mod 256 read as a signed value in -128..127, as integer frequencies
(each >= 1, each table summing to 2**16, via pixark.codec.entropy.normalize). Floats appear only here, at build
time; the codec reads the stored integers, so every machine codes with identical tables.

``mixture.npz``: ``exp_weight[i] = round(2**16 * exp(-i / 8))`` (min 1) for i = 0..255, the integer mixture
weight of a component whose logit (in 1/8 nat) is i below the largest one (K > 1 profiles).
"""

from __future__ import annotations

import os
import sys

import numpy as np

N_SCALES = 64
S_MIN = 0.12
S_MAX = 64.0
N_FRAC = 16


def scales() -> np.ndarray:
    return S_MIN * (S_MAX / S_MIN) ** (np.arange(N_SCALES) / (N_SCALES - 1))


def build() -> dict:
    from pixark.codec import entropy

    s = scales()
    d = np.arange(256)
    signed = np.where(d >= 128, d - 256, d).astype(np.float64)
    freq = np.zeros((N_SCALES, N_FRAC, 256), np.int64)
    with np.errstate(over="ignore"):
        _fill(freq, s, signed, entropy)
    assert (freq.sum(-1) == entropy.TOTAL).all() and freq.min() >= 1
    return {"freq": freq.astype(np.uint16 if freq.max() < 65536 else np.int32), "scales": s,
            "s_min": np.array(S_MIN), "s_max": np.array(S_MAX)}


def _fill(freq, s, signed, entropy):
    for i, sc in enumerate(s):
        for fi in range(N_FRAC):
            mu = (fi - 8) / 16.0
            hi = 1.0 / (1.0 + np.exp(-(signed + 0.5 - mu) / sc))
            lo = 1.0 / (1.0 + np.exp(-(signed - 0.5 - mu) / sc))
            p = hi - lo
            counts = np.floor(p / p.sum() * float(1 << 40) + 0.5).astype(np.int64)
            freq[i, fi] = entropy.normalize(counts)


def build_mixture() -> dict:
    w = np.floor(65536.0 * np.exp(-np.arange(256) / 8.0) + 0.5).astype(np.int64)
    return {"exp_weight": np.maximum(w, 1)}


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "logistic256.npz")
    np.savez_compressed(out, **build())
    np.savez_compressed(os.path.join(here, "mixture.npz"), **build_mixture())
    print("wrote", out, "and mixture.npz", file=sys.stderr)
