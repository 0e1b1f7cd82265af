"""Probe: would tables with other tails than the logistic pay on top of payload version 4? (docs/MSPSM.md)

    python infra/tail_probe.py 3     # 3 images a dev set, 512x512 centre crops

Encodes with the default profile, logs every symbol of each tile's kept stream (table index, residual), then prices
the symbols under mixtures (1 - w) logistic(s) + w logistic(k s) of the same scales: every symbol with one family,
and an oracle choosing the family per (step, channel, cell of 8 scale indices) with log2(families) bits a cell.
"""

import glob
import sys

import imagecodecs
import numpy as np
from PIL import Image

from pixark.codec import entropy
from pixark.codec.mspsm import coder as C
from pixark.codec.mspsm import model as M
from pixark.codec.tables import build as B

DEV = "../shared/data/dev"
FAMILIES = [(3, .02), (3, .06), (6, .02), (6, .06), (3, .15)]  # (k, w)
ENCODERS: list = []
_code, _symbols, _init, _finish = C._TileModel.code, C._TileEncoder._symbols, C._TileEncoder.__init__, C._TileEncoder.finish


def code(self, st):
    self.step = (st.key, st.col)
    return _code(self, st)


def symbols(self, x, use, cen):
    self.log.append((self.step, use.copy(), (x - cen) & 255))
    return _symbols(self, x, use, cen)


def init(self, *a, **k):
    _init(self, *a, **k)
    self.log = []
    ENCODERS.append(self)


def finish(self):
    data = _finish(self)
    self.length = len(data)
    return data


C._TileModel.code, C._TileEncoder._symbols, C._TileEncoder.__init__, C._TileEncoder.finish = code, symbols, init, finish


def load(path):
    a = imagecodecs.jpegxl_decode(open(path, "rb").read()) if path.endswith(".jxl") else \
        np.asarray(Image.open(path).convert("RGB"))
    h, w = a.shape[:2]
    y, x = max(0, (h - 512) // 2), max(0, (w - 512) // 2)
    return np.ascontiguousarray(a[y:y + 512, x:x + 512, :3])


def family(k, w):
    d = np.arange(256)
    sg = np.where(d >= 128, d - 256, d).astype(np.float64)
    out = np.zeros((64, 16, 256), np.int64)
    for i, s in enumerate(B.scales()):
        for fi in range(16):
            mu = (fi - 8) / 16

            def logistic(sc):
                p = 1 / (1 + np.exp(-(sg + .5 - mu) / sc)) - 1 / (1 + np.exp(-(sg - .5 - mu) / sc))
                return p / p.sum()

            p = (1 - w) * logistic(s) + w * logistic(k * s)
            out[i, fi] = entropy.normalize(np.floor(p / p.sum() * float(1 << 40) + .5).astype(np.int64))
    return out.reshape(-1, 256)


def main(per_set: int) -> None:
    net, _ = M.STORE.load(M.DEFAULT_PROFILE)
    with np.errstate(over="ignore"):
        costs = [entropy.cost(f).astype(np.int64) for f in
                 [M.tables()["freq"].reshape(-1, 256).astype(np.int64)] + [family(k, w) for k, w in FAMILIES]]
    for name in ("cid22", "gb82", "wesaturate", "clic2025"):
        files = sorted(glob.glob(f"{DEV}/{name}/*.png") + glob.glob(f"{DEV}/{name}/*.jxl"))
        cells: dict = {}
        for path in files[::max(1, len(files) // per_set)][:per_set]:
            ENCODERS.clear()
            C.encode(net, load(path))
            for pair in (ENCODERS[i:i + 2] for i in range(0, len(ENCODERS), 2)):  # modes 0 and 1 of a tile
                kept = min(pair, key=lambda e: e.length)
                for (key, col), use, d in kept.log:
                    m = cells.setdefault((path, id(pair[0]), key, col), np.zeros((len(costs), 8)))
                    for j, c in enumerate(costs):
                        m[j] += np.bincount(use // 128, weights=c[use, d], minlength=8)
        m = np.array(list(cells.values()))  # [step, family, cell]
        base, fixed = m[:, 0].sum(), m.sum(axis=(0, 2))
        side = (m[:, 0] > 0).sum() * 256 * np.log2(len(costs))
        oracle = m.min(axis=1).sum()
        print(f"{name}: oracle {100 * (oracle / base - 1):+.3f} %, with its side information "
              f"{100 * ((oracle + side) / base - 1):+.3f} %; one family for all: "
              + " ".join(f"k={k} w={w} {100 * (f / base - 1):+.3f} %" for (k, w), f in zip(FAMILIES, fixed[1:])),
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
