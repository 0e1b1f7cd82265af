"""Batched coding against one image at a time (issue 27): small crops of dev photos coded with mspsm through the
codec API, ``pixark.codec.encode`` / ``decode`` per image against ``encode_many`` / ``decode_many`` of all of them,
and the archive workers' coding path (``pipeline.coding``: read a PNG, code with ``auto``, self-check) per object
against a whole batch. Every batched result is checked equal to the one-by-one result before its time is printed.

    nice python infra/bench_batched.py [--src ../shared/data/dev/cid22] [--sizes 64,128] [--counts 16,64]
                                       [--threads 1] [--pipeline 64] [--device cpu] [--json out.json]
    nice python infra/bench_batched.py --scaling [--scaling-counts 64,16,4] [--repeat 3] [--json out.json]

``--scaling`` (issue 27's target: small images at >= 70 % of the MP/s of large photos) instead codes 64x64 and
256x256 crops of ``--src`` and whole photos of ``--large-src`` (dev/gb82: 576x576, one tile each) with
``encode_many`` / ``decode_many``, and prints each size's MP/s beside its ratio to the large photos'. The sizes
take turns within each of the ``--repeat`` rounds, and each keeps its best round. Wall-clock and process CPU time
are both shown: on a loaded machine the CPU-time MP/s (one torch thread: one core) are the steadier measure.

Crops: the centre crop of each photo of ``--src`` (sorted by name); for more crops than photos, further crops of
the same photos shifted right by the crop size. Times are the best of ``--repeat`` runs after a warm-up (model
load, numba compile); MP/s counts image pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def crops(src: str, size: int, count: int) -> list[np.ndarray]:
    from pixark.codec.training import list_images, load_rgb

    paths = sorted(list_images(src))
    out = []
    for k in range(count):
        im = load_rgb(paths[k % len(paths)])
        y, x = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2 + size * (k // len(paths))
        x = min(x, im.shape[1] - size)
        out.append(np.ascontiguousarray(im[y:y + size, x:x + size]))
    return out


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def codec_rows(imgs: list[np.ndarray], repeat: int, device: str = "cpu") -> dict:
    import pixark.codec as pc

    mp = sum(i.shape[0] * i.shape[1] for i in imgs) / 1e6
    t_enc1, one = best(lambda: [pc.encode(i, "mspsm", device=device) for i in imgs], repeat)
    t_encn, many = best(lambda: pc.encode_many(imgs, "mspsm", device=device), repeat)
    assert many == one, "encode_many differs from encode"
    t_dec1, back1 = best(lambda: [pc.decode(d, device=device).pixels for d in one], repeat)
    t_decn, backn = best(lambda: [d.pixels for d in pc.decode_many(one, device=device)], repeat)
    assert all(np.array_equal(a, b) and np.array_equal(a, i) for a, b, i in zip(back1, backn, imgs))
    return {"images": len(imgs), "size": imgs[0].shape[0], "megapixels": round(mp, 4),
            "bytes": sum(map(len, one)),
            "encode_one_by_one_s": round(t_enc1, 2), "encode_many_s": round(t_encn, 2),
            "decode_one_by_one_s": round(t_dec1, 2), "decode_many_s": round(t_decn, 2),
            "encode_one_by_one_mps": round(mp / t_enc1, 3), "encode_many_mps": round(mp / t_encn, 3),
            "decode_one_by_one_mps": round(mp / t_dec1, 3), "decode_many_mps": round(mp / t_decn, 3)}


def scaling_rows(groups: dict, repeat: int, device: str = "cpu") -> list[dict]:
    """Batched encode and decode MP/s of each group of images ({name: images}, the last one the reference), the
    groups in turn within each round, each time its best round; ratios against the last group. Wall-clock and
    process CPU time both: with one torch thread the process runs on one core, so its CPU time is its wall time
    on an idle machine and, unlike the wall time, hardly moves when other work shares the cores."""
    import pixark.codec as pc

    best_t = {name: [float("inf")] * 4 for name in groups}  # encode wall, decode wall, encode CPU, decode CPU
    sizes = {}
    for _ in range(repeat):
        for name, imgs in groups.items():
            t0, c0 = time.perf_counter(), time.process_time()
            datas = pc.encode_many(imgs, "mspsm", device=device)
            t1, c1 = time.perf_counter(), time.process_time()
            back = pc.decode_many(datas, device=device)
            t2, c2 = time.perf_counter(), time.process_time()
            assert all(np.array_equal(b.pixels, i) for b, i in zip(back, imgs)), name
            best_t[name] = [min(a, b) for a, b in zip(best_t[name], (t1 - t0, t2 - t1, c1 - c0, c2 - c1))]
            sizes[name] = sum(map(len, datas))
    rows = []
    for name, imgs in groups.items():
        mp = sum(i.shape[0] * i.shape[1] for i in imgs) / 1e6
        te, td, ce, cd = best_t[name]
        rows.append({"group": name, "images": len(imgs), "megapixels": round(mp, 4), "bytes": sizes[name],
                     "bpp": round(8 * sizes[name] / (mp * 1e6), 4),
                     "encode_s": round(te, 3), "decode_s": round(td, 3),
                     "encode_mps": round(mp / te, 4), "decode_mps": round(mp / td, 4),
                     "encode_cpu_mps": round(mp / ce, 4), "decode_cpu_mps": round(mp / cd, 4)})
    ref = rows[-1]
    for r in rows:
        for k in ("encode_mps", "decode_mps", "encode_cpu_mps", "decode_cpu_mps"):
            r[k.replace("_mps", "_ratio")] = round(r[k] / ref[k], 3)
    return rows


def photos(src: str, count: int) -> list[np.ndarray]:
    from pixark.codec.training import list_images, load_rgb

    return [load_rgb(p) for p in sorted(list_images(src))[:count]]


def pipeline_row(imgs: list[np.ndarray], repeat: int, device: str = "cpu") -> dict:
    """The workers' coding path without Ray: ``code_object`` per file against ``code_objects`` of all of them."""
    import fsspec
    from PIL import Image

    from pixark.pipeline import coding

    fs = fsspec.filesystem("file")
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for k, px in enumerate(imgs):
            p = Path(tmp) / f"{k:04d}.png"
            Image.fromarray(px).save(p)
            items.append((f"id{k}", str(p), f"file://{p}", p.stat().st_size))
        t1, one = best(lambda: [coding.code_object(fs, p, i, u, s, "auto", True, device) for i, p, u, s in items],
                       repeat)
        tn, many = best(lambda: coding.code_objects(fs, items, "auto", True, device), repeat)
    strip = [({k: v for k, v in r.items() if k != "encode_seconds"}, rec) for r, rec in one]
    assert strip == [({k: v for k, v in r.items() if k != "encode_seconds"}, rec) for r, rec in many]
    mp = sum(i.shape[0] * i.shape[1] for i in imgs) / 1e6
    return {"images": len(imgs), "size": imgs[0].shape[0], "codecs": sorted({r["codec"] for r, _ in one}),
            "one_by_one_s": round(t1, 2), "batched_s": round(tn, 2),
            "one_by_one_mps": round(mp / t1, 3), "batched_mps": round(mp / tn, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "cid22"))
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--counts", default="16,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--pipeline", type=int, default=64, help="files of 64x64 for the workers' path (0: skip)")
    ap.add_argument("--device", default="cpu", help="where the network runs: cpu, cuda, cuda:N")
    ap.add_argument("--json", default="")
    ap.add_argument("--scaling", action="store_true", help="64x64, 256x256 and large photos side by side (only)")
    ap.add_argument("--scaling-counts", default="64,16,4", help="images of 64x64, of 256x256, large photos")
    ap.add_argument("--large-src", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" /
                                               "gb82"))
    a = ap.parse_args(argv)
    import torch

    import pixark.codec as pc

    torch.set_num_threads(a.threads)
    warm = crops(a.src, 32, 2)
    # model load and numba compile, outside the times
    pc.decode_many(pc.encode_many(warm, "mspsm", device=a.device), device=a.device)
    if a.scaling:
        n64, n256, nbig = map(int, a.scaling_counts.split(","))
        big = photos(a.large_src, nbig)
        groups = {"64x64": crops(a.src, 64, n64), "256x256": crops(a.src, 256, n256),
                  f"{big[0].shape[0]}x{big[0].shape[1]} photos": big}
        rows = scaling_rows(groups, a.repeat, a.device)
        print(f"{'images':>20} {'n':>4} {'MP':>7} | wall: {'enc MP/s':>9} {'ratio':>6} {'dec MP/s':>9} {'ratio':>6} "
              f"| CPU time: {'enc MP/s':>9} {'ratio':>6} {'dec MP/s':>9} {'ratio':>6}", file=sys.stderr)
        for r in rows:
            print(f"{r['group']:>20} {r['images']:>4} {r['megapixels']:>7.3f} |       "
                  + " ".join(f"{r[k + '_mps']:>9.4f} {r[k + '_ratio']:>6.2f}" for k in ("encode", "decode"))
                  + " |           "
                  + " ".join(f"{r[k + '_cpu_mps']:>9.4f} {r[k + '_cpu_ratio']:>6.2f}" for k in ("encode", "decode")),
                  file=sys.stderr)
        result = {"threads": a.threads, "device": a.device, "src": a.src, "large_src": a.large_src,
                  "repeat": a.repeat, "scaling": rows}
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return 0
    rows = []
    for size in map(int, a.sizes.split(",")):
        for count in map(int, a.counts.split(",")):
            rows.append(codec_rows(crops(a.src, size, count), a.repeat, a.device))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"threads": a.threads, "device": a.device, "src": a.src, "codec": rows}
    if a.pipeline:
        result["pipeline"] = pipeline_row(crops(a.src, 64, a.pipeline), a.repeat, a.device)
        print(json.dumps(result["pipeline"]), file=sys.stderr, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
