"""`pixark bench-jpeg`: bytes of JPEG files stored as they are, recompressed by Lepton (the lepton codec) and
transcoded by JPEG XL's lossless JPEG recompression (libjxl through imagecodecs, where it is built in), with every
result checked to give back the file byte for byte.

Inputs are JPEG files under the given folders, and/or JPEGs made in memory from PNG photos (``--make-from``) with
Pillow at quality 75 and 90, each with 4:2:0 and 4:4:4 chroma subsampling (baseline). Nothing is written to disk.
Sizes: ``store`` and ``lepton`` are whole pixark streams (container header included); ``jxl`` is the bare JPEG XL
file (a codec built on it would add the same container header as lepton, about 300 bytes).
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import List, Optional

import typer

from .console import emit_json, fail, results

JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe"}
PNG_SUFFIXES = {".png"}
VARIANTS = (("q75-420", 75, 2), ("q75-444", 75, 0), ("q90-420", 90, 2), ("q90-444", 90, 0))


def jpeg_files(dirs: list[str]) -> list[tuple[str, bytes]]:
    out = []
    for d in dirs:
        root = Path(d)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES)
        out += [(str(p), p.read_bytes()) for p in files]
    return out


def made_from(png_dir: str, photos: int) -> list[tuple[str, bytes]]:
    """JPEGs of the first ``photos`` PNGs under ``png_dir`` (sorted, spread evenly), in every VARIANT."""
    from PIL import Image

    files = sorted(p for p in Path(png_dir).rglob("*") if p.suffix.lower() in PNG_SUFFIXES)
    if photos and len(files) > photos:
        step = len(files) // photos
        files = files[::step][:photos]
    out = []
    for p in files:
        im = Image.open(p).convert("RGB")
        for name, quality, subsampling in VARIANTS:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
            out.append((f"{p.relative_to(png_dir)}:{name}", buf.getvalue()))
    return out


def _jxl():
    """imagecodecs' JPEG XL JPEG transcoding functions, or None when this build lacks them."""
    try:
        import imagecodecs

        if imagecodecs.JPEGXL.available and hasattr(imagecodecs, "jpegxl_encode_jpeg"):
            return imagecodecs.jpegxl_encode_jpeg, imagecodecs.jpegxl_decode_jpeg
    except (ImportError, AttributeError):
        pass
    return None


def measure(files: list[tuple[str, bytes]]) -> dict:
    from pixark import codec as pc

    jxl = _jxl()
    rows = []
    seconds = {"lepton_encode": 0.0, "lepton_decode": 0.0, "jxl_encode": 0.0, "jxl_decode": 0.0}
    for name, data in files:
        row = {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
               "store": len(pc.encode(data, "store"))}
        t0 = time.perf_counter()
        try:
            stream = pc.encode(data, "lepton")
        except pc.CodecError as exc:
            row.update(lepton=None, lepton_exact=False, lepton_note=str(exc))
        else:
            t1 = time.perf_counter()
            back = pc.decode(stream).original
            seconds["lepton_encode"] += t1 - t0  # includes the encoder's own decode-and-compare
            seconds["lepton_decode"] += time.perf_counter() - t1
            row.update(lepton=len(stream), lepton_exact=back == data)
        if jxl:
            t0 = time.perf_counter()
            try:
                enc = jxl[0](data)
                t1 = time.perf_counter()
                back = jxl[1](enc)
            except Exception as exc:  # libjxl refuses some JPEGs (e.g. CMYK): a finding, not a crash
                row.update(jxl=None, jxl_exact=False, jxl_note=f"{type(exc).__name__}: {exc}")
            else:
                seconds["jxl_encode"] += t1 - t0
                seconds["jxl_decode"] += time.perf_counter() - t1
                row.update(jxl=len(enc), jxl_exact=bytes(back) == data)
        rows.append(row)
    total = sum(r["bytes"] for r in rows)
    mb = total / 1e6

    def summary(key: str) -> dict | None:
        taken = [r for r in rows if r.get(key) is not None]
        if not taken and key != "store":
            return None
        # files a method refuses count at their stored size: that is what an archive would hold
        kept = sum(r[key] if r.get(key) is not None else r["store"] for r in rows)
        out = {"bytes": kept, "ratio": round(kept / total, 4) if total else None, "coded": len(taken),
               "byte_exact": sum(1 for r in taken if r.get(f"{key}_exact", True))}
        if f"{key}_encode" in seconds and seconds[f"{key}_encode"]:
            out.update(encode_mb_s=round(mb / seconds[f"{key}_encode"], 2),
                       decode_mb_s=round(mb / seconds[f"{key}_decode"], 2))
        return out

    return {"files": len(rows), "source_bytes": total, "store": summary("store"), "lepton": summary("lepton"),
            "jxl": summary("jxl") if jxl else None, "jxl_available": bool(jxl), "rows": rows}


def bench_jpeg_cmd(
    dirs: Optional[List[str]] = typer.Argument(None, help="folders (or files) of JPEGs"),
    make_from: Optional[str] = typer.Option(None, "--make-from",
                                            help="folder of PNG photos to make JPEGs from (q75/q90, 4:2:0/4:4:4)"),
    photos: int = typer.Option(5, "--photos", help="with --make-from: how many PNGs (spread over the sorted list)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Bytes of JPEG files: stored, recompressed by Lepton, transcoded to JPEG XL; every one checked byte-exact."""
    from rich.table import Table

    files = jpeg_files(dirs or []) + (made_from(make_from, photos) if make_from else [])
    if not files:
        raise fail("no JPEG files: give folders of JPEGs and/or --make-from PNG_FOLDER")
    doc = measure(files)
    if json_out:
        emit_json(doc)
        return
    table = Table(title=f"{doc['files']} JPEG files, {doc['source_bytes']:,} bytes")
    for col in ("method", "bytes", "of the files", "coded", "byte-exact", "enc MB/s", "dec MB/s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for key in ("store", "lepton", "jxl"):
        s = doc[key]
        if s:
            table.add_row(key, f"{s['bytes']:,}", f"{s['ratio']:.3f}", str(s["coded"]), str(s["byte_exact"]),
                          str(s.get("encode_mb_s", "")), str(s.get("decode_mb_s", "")))
    results(json_out).print(table)
    if not doc["jxl_available"]:
        results(json_out).print("JPEG XL JPEG transcoding is not in this imagecodecs build", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench-jpeg")(bench_jpeg_cmd)
