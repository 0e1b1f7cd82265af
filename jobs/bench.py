"""`pixark bench`: bits per subpixel and single-process speed of codecs on image folders, side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from .console import emit_json, err, fail

BASELINES = ["png", "webp-ll", "jxl-ll:effort=7", "jxl-ll:effort=9"]
IMAGE_SUFFIXES = {".png", ".bmp", ".ppm", ".pgm", ".gif", ".tga"}


@dataclass
class Tally:
    images: int = 0
    subpixels: int = 0
    pixels: int = 0
    bits: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    mismatches: list = field(default_factory=list)

    def row(self) -> dict:
        return {
            "images": self.images,
            "megapixels": round(self.pixels / 1e6, 3),
            "bpsp": round(self.bits / self.subpixels, 4) if self.subpixels else None,
            "encode_mps": round(self.pixels / 1e6 / self.encode_s, 3) if self.encode_s else None,
            "decode_mps": round(self.pixels / 1e6 / self.decode_s, 3) if self.decode_s else None,
            "round_trip": "ok" if not self.mismatches else f"FAILED on {len(self.mismatches)}",
            "failed": self.mismatches,
        }


def default_codecs() -> list[str]:
    """Every learned codec with weights, then the classical baselines."""
    from pixark import codec as pc

    learned = [c.name for c in pc.all_codecs() if c.learned and c.available()]
    return learned + BASELINES


def collect(dirs: list[str], limit: int | None) -> dict[str, list[Path]]:
    """Images grouped by set: each DIR's immediate subfolders are sets (dev/cid22, dev/gb82), else DIR itself."""
    groups: dict[str, list[Path]] = {}
    for d in dirs:
        root = Path(d)
        if root.is_file():
            groups.setdefault(root.parent.name, []).append(root)
            continue
        if not root.is_dir():
            raise fail(f"{d} is not a folder or file")
        for f in sorted(root.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                rel = f.relative_to(root)
                key = f"{root.name}/{rel.parts[0]}" if len(rel.parts) > 1 else root.name
                groups.setdefault(key, []).append(f)
    if limit:
        groups = {k: v[:limit] for k, v in groups.items()}
    return {k: v for k, v in groups.items() if v}


def run(dirs: list[str], codecs: list[str] | None = None, limit: int | None = None, progress=None) -> dict:
    from pixark import codec as pc

    codecs = codecs or default_codecs()
    groups = collect(dirs, limit)
    images = {f: pc.load(f.read_bytes()) for files in groups.values() for f in files}
    images = {f: img for f, img in images.items() if img.pixels is not None}
    results: dict[str, dict[str, Tally]] = {}
    for spec in codecs:
        name, params = pc.parse_spec(spec)
        codec = pc.get(name)
        if not codec.available():
            raise fail(f"codec {name} has no weights installed")
        warm = next(iter(images.values()))
        pc.decode(pc.encode(warm, spec))  # load models once, outside the timings
        for group, files in groups.items():
            tally = results.setdefault(group, {}).setdefault(spec, Tally())
            for f in files:
                img = images.get(f)
                if img is None or codec.supports(img):
                    continue
                t0 = time.perf_counter()
                data = pc.encode(img, spec)
                t1 = time.perf_counter()
                try:
                    back = pc.decode(data)
                    ok = np.array_equal(back.pixels, img.pixels)
                except pc.CodecError:
                    ok = False
                t2 = time.perf_counter()
                tally.images += 1
                tally.pixels += img.height * img.width
                tally.subpixels += img.height * img.width * img.channels
                tally.bits += 8 * len(data)
                tally.encode_s += t1 - t0
                tally.decode_s += t2 - t1
                if not ok:
                    tally.mismatches.append(str(f))
                if progress:
                    progress()
    if len(results) > 1:  # one more set: everything together
        overall = results["all"] = {}
        for per in list(results.values())[:-1]:
            for spec, t in per.items():
                o = overall.setdefault(spec, Tally())
                for key in ("images", "subpixels", "pixels", "bits", "encode_s", "decode_s"):
                    setattr(o, key, getattr(o, key) + getattr(t, key))
                o.mismatches += t.mismatches
    return {
        "sets": {g: {spec: t.row() for spec, t in per.items()} for g, per in results.items()},
        "codecs": codecs,
        "note": "bpsp counts whole pixark streams (container header included); speeds are single-process wall clock",
    }


def bench(
    dirs: List[str] = typer.Argument(..., help="image folders (subfolders are reported as separate sets)"),
    codec: Optional[List[str]] = typer.Option(None, "--codec", "-c", help="codec spec; repeat; default: learned + baselines"),
    limit: Optional[int] = typer.Option(None, help="at most this many images per set"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Bits per subpixel, encode/decode MP/s and a round-trip check per codec, beside png, webp-ll and jxl-ll."""
    from rich.progress import Progress
    from rich.table import Table

    from pixark import codec as pc

    codecs = list(codec) if codec else None
    try:
        with Progress(console=err, transient=True) as bar:
            total = sum(len(v) for v in collect(dirs, limit).values()) * len(codecs or default_codecs())
            task = bar.add_task("benchmarking", total=total)
            report = run(dirs, codecs, limit, progress=lambda: bar.advance(task))
    except (pc.CodecError, ValueError) as exc:
        raise fail(str(exc))
    if json_out:
        emit_json(report)
    for group, per in report["sets"].items():
        table = Table(title=f"{group}")
        for col in ("codec", "images", "Mpx", "bpsp", "enc MP/s", "dec MP/s", "round trip"):
            table.add_column(col)
        for spec, row in per.items():
            table.add_row(spec, str(row["images"]), str(row["megapixels"]), f"{row['bpsp']:.3f}" if row["bpsp"] else "-",
                          str(row["encode_mps"]), str(row["decode_mps"]), row["round_trip"])
        err.print(table)
    if any(row["failed"] for per in report["sets"].values() for row in per.values()):
        raise fail("round trip failed for some images")


def register(app: typer.Typer) -> None:
    app.command()(bench)
