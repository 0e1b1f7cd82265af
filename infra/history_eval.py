"""Real coded size of mspsm weights on the dev sets as they are and after one pass through JPEG (docs/MSPSM.md).

    python infra/history_eval.py WEIGHTS.npz [--jxl] [--sets cid22 gb82 ...] [--limit N] [--side S] [--json OUT]

Per dev set: payload bits per subpixel of every image (the codec's tiling), and of the same images after a JPEG
encode and decode with Pillow (quality 75, 85, 90, 95 and chroma 4:2:0 / 4:4:4 in turn by file order: a colour
history the dev photos lack). With --jxl, jxl-ll effort 9 on the same pixels beside it. --limit N: N images a
set, spread over its file order; --side S: centre crops of at most S x S (both for a quicker comparison).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
from PIL import Image

import pixark.codec as pc
from pixark.codec.mspsm import coder
from pixark.codec.mspsm import model as M
from pixark.codec.training.data import list_images, load_rgb

QUALITIES = (75, 85, 90, 95)


def jpeg_pass(px: np.ndarray, i: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", quality=QUALITIES[i % 4], subsampling=(2, 0)[(i // 4) % 2])
    return np.asarray(Image.open(buf).convert("RGB"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--dev", default="../shared/data/dev")
    ap.add_argument("--sets", nargs="*", default=["cid22", "gb82", "wesaturate", "clic2025"])
    ap.add_argument("--jxl", action="store_true")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--side", type=int)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    net, model_id = M.STORE.read(a.weights)  # the file says its profile
    out = {"weights": a.weights, "model_id": model_id, "sets": {}}
    for name in a.sets:
        row = {}
        for variant in ("as is", "jpeg pass"):
            bits = {"mspsm": 0, "jxl-ll e9": 0}
            subpx = 0
            paths = list_images(os.path.join(a.dev, name))
            if a.limit and len(paths) > a.limit:
                paths = [paths[k * len(paths) // a.limit] for k in range(a.limit)]
            for i, path in enumerate(paths):
                px = load_rgb(path)
                if a.side:
                    h, w = px.shape[:2]
                    y, x = max(0, (h - a.side) // 2), max(0, (w - a.side) // 2)
                    px = np.ascontiguousarray(px[y:y + a.side, x:x + a.side])
                if variant == "jpeg pass":
                    px = np.ascontiguousarray(jpeg_pass(px, i))
                bits["mspsm"] += 8 * len(coder.encode(net, px, tile=coder.balanced_tile(*px.shape[:2],
                                                                                         coder.DEFAULT_TILE)))
                if a.jxl:
                    bits["jxl-ll e9"] += 8 * len(pc.encode(px, "jxl-ll:effort=9"))
                subpx += px.size
            row[variant] = {k: round(v / subpx, 4) for k, v in bits.items() if v}
            print(name, variant, row[variant], flush=True)
        out["sets"][name] = row
    for variant in ("as is", "jpeg pass"):
        print(variant, {n: r[variant] for n, r in out["sets"].items()})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
