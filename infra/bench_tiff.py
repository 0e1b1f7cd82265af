"""TIFF photos against PNGs of the same pixels under `auto` (issue #22's target: an uncompressed TIFF photo is
coded like a PNG of its pixels).

    nice python infra/bench_tiff.py [--codec auto] [--limit N] ../shared/data/dev

Writes each photo (dev PNGs, and lossless .jxl via imagecodecs) as TIFF with tifffile (uncompressed, LZW,
Deflate; 8-bit RGB and grey) plus one 16-bit TIFF (2x2 sums of a photo's samples x 64, so ten real bits), codes
the TIFF and a PNG of the same pixels, checks that both decode to those pixels, and prints a Markdown table of
sizes (and whether the TIFF record restores byte-exact).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

import pixark.codec as pc


def photos(root: Path, limit: int) -> list[tuple[str, np.ndarray]]:
    pngs = sorted(root.rglob("*.png"))
    jxls = sorted(root.rglob("*.jxl"))
    step = max(1, len(pngs) // max(1, limit - 1))
    out = [(p.name, imagecodecs.png_decode(p.read_bytes())) for p in pngs[::step][: limit - 1]]
    if jxls:
        out.append((jxls[0].name[:24], imagecodecs.jpegxl_decode(jxls[0].read_bytes())))
    return out


def tiff(arr: np.ndarray, compression: str | None) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack", compression=compression,
                     predictor=compression is not None or None, metadata=None, resolution=(300, 300),
                     resolutionunit="INCH")
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--codec", default="auto")
    ap.add_argument("--limit", type=int, default=4, help="photos (the last a .jxl one when there are any)")
    args = ap.parse_args(argv)
    rows = []
    srcs = photos(args.root, args.limit)
    cases = [(n, "RGB8", a) for n, a in srcs] + [(n, "grey8", a[:, :, 1].copy()) for n, a in srcs[:2]]
    a = srcs[-1][1].astype(np.uint16)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    deep = (a[:h:2, :w:2] + a[1:h:2, :w:2] + a[:h:2, 1:w:2] + a[1:h:2, 1:w:2]) * 64
    cases.append((srcs[-1][0], "RGB16", deep))
    print(f"| image | kind | TIFF kind | TIFF bytes | auto of TIFF | auto of PNG | TIFF/PNG | codec | exact |")
    print("|---|---|---|---:|---:|---:|---:|---|---|")
    for name, kind, arr in cases:
        png = imagecodecs.png_encode(arr, level=6)
        from_png = pc.encode(png, args.codec)
        assert np.array_equal(pc.decode(from_png).pixels[..., 0] if arr.ndim == 2 else pc.decode(from_png).pixels, arr)
        for comp in (None, "lzw", "zlib"):
            data = tiff(arr, comp)
            img = pc.load(data)
            rec = pc.encode(img, args.codec)
            back = pc.decode(rec)
            px = back.pixels[..., 0] if arr.ndim == 2 else back.pixels
            assert np.array_equal(px, arr), (name, kind, comp)
            restored = back.to_file()
            exact = restored == data
            assert exact == img.bytes_exact or pc.info(rec)["codec"] == "store", (name, kind, comp)
            rows.append((name, kind, comp or "none", len(data), len(rec), len(from_png)))
            print(f"| {name} | {kind} | {comp or 'none'} | {len(data)} | {len(rec)} | {len(from_png)} | "
                  f"{len(rec) / len(from_png):.4f} | {pc.info(rec)['codec']} | {exact} |", flush=True)
    t = sum(r[4] for r in rows)
    p = sum(r[5] for r in rows)
    s = sum(r[3] for r in rows if r[2] == "none")
    print(f"\ntotal: TIFF records {t} bytes, PNG-of-same-pixels records {p} bytes ({t / p:.4f}); "
          f"uncompressed TIFFs {s} bytes -> {sum(r[4] for r in rows if r[2] == 'none')} "
          f"(ratio {s / sum(r[4] for r in rows if r[2] == 'none'):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
