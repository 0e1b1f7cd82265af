"""Build the integer frequency-table bank of the msr LSB coder (run once; the output is committed as data).

    python -m pixark.codec.msr.build_tables       # writes codec/msr/lsb_tables.npz

For each LSB width k in ``KS``, ``freq_k[s, m, L]`` is a discretized logistic with scale ``SCALES[s]`` and mean
``(m - 32) / 4`` pixels over the residual window r = L - 2**(k-1), L = 0 .. 2**k - 1, renormalised to the window
(the coder only uses it where the MSB is 0, i.e. where r is inside the window), as integer frequencies (each
>= 1, each table summing to 2**16, via pixark.codec.entropy.normalize). Floats appear only here, at build time;
encoder and decoder read the stored integers, so every machine codes with identical tables.
"""

from __future__ import annotations

import os
import sys

import numpy as np

KS = (4, 5, 6)
N_SCALES = 48
S_MIN = 0.12
S_MAX = 24.0
N_MEANS = 64  # mean index m: mean = (m - 32) / 4 px, i.e. -8 .. 7.75 in quarter pixels
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsb_tables.npz")


def scales() -> np.ndarray:
    return S_MIN * (S_MAX / S_MIN) ** (np.arange(N_SCALES) / (N_SCALES - 1))


def build() -> dict:
    from pixark.codec import entropy

    out = {"scales": scales(), "s_min": np.array(S_MIN), "s_max": np.array(S_MAX)}
    for k in KS:
        half = 1 << (k - 1)
        r = np.arange(-half, half, dtype=np.float64)
        freq = np.zeros((N_SCALES, N_MEANS, 2 * half), np.int64)
        for si, sc in enumerate(scales()):
            for m in range(N_MEANS):
                mu = (m - 32) / 4.0
                p = 1.0 / (1.0 + np.exp(-(r + 0.5 - mu) / sc)) - 1.0 / (1.0 + np.exp(-(r - 0.5 - mu) / sc))
                p = np.maximum(p, 0.0)
                counts = np.floor(p / max(p.sum(), 1e-300) * float(1 << 40) + 0.5).astype(np.int64)
                freq[si, m] = entropy.normalize(counts)
        assert (freq.sum(-1) == entropy.TOTAL).all() and freq.min() >= 1
        out[f"freq{k}"] = freq.astype(np.uint16)
    return out


if __name__ == "__main__":
    np.savez_compressed(PATH, **build())
    print("wrote", PATH, os.path.getsize(PATH), "bytes", file=sys.stderr)
