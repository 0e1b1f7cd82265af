"""`pixark bench`: bits per subpixel and speed of codecs on image folders, side by side.

Speeds are wall clock: in one process by default, or with ``--workers N`` the aggregate throughput of N processes
(one thread each, like archive workers) coding the images of a set at once, between two barriers; like archive
workers they take the next image from a shared counter, so none idles while another still has a queue.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from .console import emit_json, err, fail, results

BASELINES = ["png", "webp-ll", "jxl-ll:effort=7", "jxl-ll:effort=9"]
IMAGE_SUFFIXES = {".png", ".bmp", ".ppm", ".pgm", ".gif", ".tga", ".jxl"}  # lossless sources (dev/clic2025 is .jxl)


@dataclass
class Tally:
    images: int = 0
    subpixels: int = 0
    pixels: int = 0
    bits: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    mismatches: list = field(default_factory=list)
    per_image: dict = field(default_factory=dict)  # file -> bpsp

    def row(self) -> dict:
        return {
            "images": self.images,
            "megapixels": round(self.pixels / 1e6, 3),
            "bpsp": round(self.bits / self.subpixels, 4) if self.subpixels else None,
            "encode_mps": round(self.pixels / 1e6 / self.encode_s, 3) if self.encode_s else None,
            "decode_mps": round(self.pixels / 1e6 / self.decode_s, 3) if self.decode_s else None,
            "round_trip": ("no images" if not self.images else "ok") if not self.mismatches
            else f"FAILED on {len(self.mismatches)}",
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


def _load(f: Path):
    """The image a file holds. The archive keeps JPEG XL files as their bytes (recoding would not give the file
    back), but a lossless .jxl is a set of pixels to measure codecs on, as the training data loader reads it."""
    import pixark.codec as pc

    if f.suffix.lower() != ".jxl":
        return pc.load(f.read_bytes())
    import imagecodecs

    try:
        px = np.asarray(imagecodecs.jpegxl_decode(f.read_bytes()))
    except Exception as e:  # a damaged file is reported as unreadable, like any other
        return pc.DecodedImage(None, reason=f"JPEG XL does not decode: {e}")
    return pc.DecodedImage.from_array(px)


def _code(img, spec: str, pc) -> tuple[bytes, float, bool, float]:
    """(stream, encode seconds, round trip ok, decode seconds) for one image."""
    t0 = time.perf_counter()
    # exact=False: the bench weighs codecs on pixels; a PNG source's recipe (codec/pngexact.py) is the archive's
    data = pc.encode(img, spec, exact=False)
    t1 = time.perf_counter()
    try:
        ok = np.array_equal(pc.decode(data).pixels, img.pixels)
    except pc.CodecError:
        ok = False
    return data, t1 - t0, ok, time.perf_counter() - t1


def _add(tally: Tally, pixels: int, channels: int, nbytes: int, ok: bool, name: str) -> None:
    tally.images += 1
    tally.pixels += pixels
    tally.subpixels += pixels * channels
    tally.bits += 8 * nbytes
    tally.per_image[name] = round(8 * nbytes / (pixels * channels), 4)
    if not ok:
        tally.mismatches.append(name)


def _check_codecs(codecs: list[str], pc) -> None:
    twice = sorted({spec for spec in codecs if codecs.count(spec) > 1})
    if twice:  # results are kept per spec: a second run of one would be merged into the first
        raise fail(f"codec listed more than once: {', '.join(twice)}")
    for spec in codecs:
        name, _ = pc.parse_spec(spec)
        if not pc.get(name).available():
            raise fail(f"codec {name} has no weights installed")


def _smallest(per: dict[str, Tally]) -> dict[str, int]:
    """How many images each codec coded smallest (ties to the first listed), among images every codec coded."""
    files = set.intersection(*(set(t.per_image) for t in per.values())) if per else set()
    wins = dict.fromkeys(per, 0)
    for f in files:
        wins[min(per, key=lambda spec: per[spec].per_image[f])] += 1
    return wins


def run(dirs: list[str], codecs: list[str] | None = None, limit: int | None = None, progress=None,
        workers: int = 1, per_image: bool = False) -> dict:
    from pixark import codec as pc

    codecs = codecs or default_codecs()
    _check_codecs(codecs, pc)
    groups = collect(dirs, limit)
    unreadable, skipped = _skips(groups, codecs, pc)
    if not any(f not in unreadable for files in groups.values() for f in files):
        raise fail(f"no readable images under {', '.join(dirs)}: {len(unreadable)} file(s) do not decode "
                   f"(first: {next(iter(unreadable), '-')})")
    if workers > 1:
        results = _run_parallel(groups, codecs, workers, progress)
    else:
        results = _run_serial(groups, codecs, progress, pc)
    if len(results) > 1:  # one more set: everything together
        overall = results["all"] = {}
        for per in list(results.values())[:-1]:
            for spec, t in per.items():
                o = overall.setdefault(spec, Tally())
                for key in ("images", "subpixels", "pixels", "bits", "encode_s", "decode_s"):
                    setattr(o, key, getattr(o, key) + getattr(t, key))
                o.mismatches += t.mismatches
                o.per_image.update(t.per_image)
    speed = "single-process wall clock" if workers <= 1 else \
        f"wall clock of {workers} one-thread processes coding each set's images at once (aggregate throughput)"
    out = {
        "sets": {g: {spec: {**t.row(), "skipped": _skipped_in(skipped[spec], groups, g)} for spec, t in per.items()}
                 for g, per in results.items()},
        # images a codec cannot take (reason per file): its rows, "all" included, cover fewer images than others'
        "skipped": {spec: {str(f): why for f, why in s.items()} for spec, s in skipped.items() if s},
        "unreadable": {str(f): why for f, why in unreadable.items()},
        "smallest": {g: _smallest(per) for g, per in results.items()},
        "codecs": codecs,
        "workers": max(1, workers),
        "note": f"bpsp counts whole pixark streams (container header included); speeds are {speed}; smallest: "
                "images on which each codec gave the smallest stream",
    }
    if per_image:
        images: dict[str, dict] = {}
        for g, per in results.items():
            if g != "all":
                for spec, t in per.items():
                    for f, v in t.per_image.items():
                        images.setdefault(f, {})[spec] = v
        out["per_image"] = dict(sorted(images.items()))
    return out


def _skips(groups: dict[str, list[Path]], codecs: list[str], pc) -> tuple[dict, dict]:
    """(files that do not decode -> reason, codec spec -> {file: why the codec cannot take it})."""
    unreadable, skipped = {}, {spec: {} for spec in codecs}
    for files in groups.values():
        for f in files:
            img = _load(f)
            if img.pixels is None:
                unreadable[f] = img.reason or "no pixels"
                continue
            for spec in codecs:
                why = pc.get(pc.parse_spec(spec)[0]).supports(img)
                if why:
                    skipped[spec][f] = why
    return unreadable, skipped


def _skipped_in(skipped: dict, groups: dict[str, list[Path]], group: str) -> int:
    files = [f for fs in groups.values() for f in fs] if group == "all" else groups.get(group, [])
    return sum(f in skipped for f in files)


def table(group: str, per: dict, smallest: dict):
    """One set's rows as a rich table. Codec specs are never cut (two jxl-ll rows must stay apart in 80 columns)."""
    from rich.table import Table

    t = Table(title=group)
    t.add_column("codec", no_wrap=True, min_width=max(len(s) for s in per))
    for col in ("images", "skipped", "Mpx", "bpsp", "enc MP/s", "dec MP/s", "smallest on", "round trip"):
        t.add_column(col)
    for spec, row in per.items():
        t.add_row(spec, str(row["images"]), str(row["skipped"]), str(row["megapixels"]),
                  f"{row['bpsp']:.3f}" if row["bpsp"] else "-", _num(row["encode_mps"]), _num(row["decode_mps"]),
                  str(smallest[spec]), row["round_trip"])
    return t


def _num(x) -> str:
    return "-" if x is None else str(x)


def _warm(spec: str, codec, images, pc) -> None:
    """Code one image the codec takes, outside the timings (loads models, builds tables)."""
    img = next((i for i in images if i.pixels is not None and not codec.supports(i)), None)
    if img is not None:
        pc.decode(pc.encode(img, spec, exact=False))


def _run_serial(groups, codecs, progress, pc) -> dict:
    images = {f: _load(f) for files in groups.values() for f in files}
    images = {f: img for f, img in images.items() if img.pixels is not None}
    results: dict[str, dict[str, Tally]] = {}
    for spec in codecs:
        codec = pc.get(pc.parse_spec(spec)[0])
        _warm(spec, codec, images.values(), pc)
        for group, files in groups.items():
            tally = results.setdefault(group, {}).setdefault(spec, Tally())
            for f in files:
                img = images.get(f)
                if img is None or codec.supports(img):
                    continue
                data, te, ok, td = _code(img, spec, pc)
                _add(tally, img.height * img.width, img.channels, len(data), ok, str(f))
                tally.encode_s += te
                tally.decode_s += td
                if progress:
                    progress()
    return results


def _worker(rank: int, groups: dict, codecs: list[str], barrier, queue, counters: dict) -> None:
    """One bench process: encode phase and decode phase of every (codec, set) each timed between barriers so the
    parent sees the wall time of all processes working at once. Encoding takes the next image from the set's
    shared counter; each process then decodes the streams it made."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before anything imports torch (learned codecs import it lazily)
    try:
        from pixark import codec as pc

        loaded = {g: [(str(f), _load(f)) for f in files] for g, files in groups.items()}
        for spec in codecs:
            codec = pc.get(pc.parse_spec(spec)[0])
            _warm(spec, codec, (img for items in loaded.values() for _, img in items), pc)
            for group, items in loaded.items():
                items = [(f, img) for f, img in items if img.pixels is not None and not codec.supports(img)]
                counter = counters[(spec, group)]
                barrier.wait()
                t0 = time.monotonic()
                mine, streams = [], []
                while True:
                    with counter.get_lock():
                        i = counter.value
                        counter.value += 1
                    if i >= len(items):
                        break
                    mine.append(items[i])
                    streams.append(pc.encode(items[i][1], spec, exact=False))
                t1 = time.monotonic()
                barrier.wait()
                t2 = time.monotonic()
                oks = []
                for (_, img), data in zip(mine, streams):
                    try:
                        oks.append(np.array_equal(pc.decode(data).pixels, img.pixels))
                    except pc.CodecError:
                        oks.append(False)
                t3 = time.monotonic()
                rows = [(f, img.height * img.width, img.channels, len(d), ok)
                        for (f, img), d, ok in zip(mine, streams, oks)]
                queue.put(("done", rank, spec, group, rows, (t0, t1, t2, t3)))
        queue.put(("end", rank))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent, which stops the others
        from pixark.codec.errors import CodecError

        barrier.abort()
        expected = isinstance(exc, (CodecError, ValueError))  # one line, as in the one-process bench
        queue.put(("error", rank, str(exc) if expected else f"{type(exc).__name__}: {exc}"))


def _run_parallel(groups, codecs, workers: int, progress) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    counters = {(spec, group): ctx.Value("i", 0) for spec in codecs for group in groups}
    procs = [ctx.Process(target=_worker, args=(r, groups, codecs, barrier, queue, counters), daemon=True)
             for r in range(workers)]
    for p in procs:
        p.start()
    parts: dict = {}
    ended, error = 0, None
    try:
        while ended < workers and error is None:
            try:
                msg = queue.get(timeout=2)
            except queue_mod.Empty:  # a worker killed outside Python (OOM killer, signal) sends nothing
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    error = f"a bench worker died (exit code {dead[0].exitcode}) before finishing"
                continue
            if msg[0] == "error":
                error = f"{msg[2]} (bench worker {msg[1]})"
            elif msg[0] == "end":
                ended += 1
            else:
                _, _, spec, group, rows, times = msg
                parts.setdefault((spec, group), []).append((rows, times))
                if progress:
                    for _ in rows:
                        progress()
    finally:
        if error is not None:
            for p in procs:
                p.terminate()
        for p in procs:
            p.join()
    if error is not None:
        raise fail(error)
    results: dict[str, dict[str, Tally]] = {}
    for group in groups:
        for spec in codecs:
            tally = results.setdefault(group, {}).setdefault(spec, Tally())
            got = parts.get((spec, group), [])
            for rows, _ in got:
                for row in rows:
                    _add(tally, *row[1:], row[0])
            if got:  # phases start together (barrier) and last until the slowest process is done
                tally.encode_s = max(t[1] for _, t in got) - min(t[0] for _, t in got)
                tally.decode_s = max(t[3] for _, t in got) - min(t[2] for _, t in got)
    return results


def bench(
    dirs: List[str] = typer.Argument(..., help="image folders (subfolders are reported as separate sets)"),
    codec: Optional[List[str]] = typer.Option(None, "--codec", "-c", help="codec spec; repeat; default: learned + baselines"),
    limit: Optional[int] = typer.Option(None, help="at most this many images per set"),
    workers: int = typer.Option(1, "--workers", "-w", min=1,
                                help="processes coding at once (one thread each); speeds are their aggregate"),
    per_image: bool = typer.Option(False, "--per-image", help="also give every image's bpsp per codec (JSON)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Bits per subpixel, encode/decode MP/s and a round-trip check per codec, beside png, webp-ll and jxl-ll."""
    from rich.progress import Progress

    from pixark import codec as pc

    codecs = list(codec) if codec else None
    try:
        with Progress(console=err, transient=True) as bar:
            total = sum(len(v) for v in collect(dirs, limit).values()) * len(codecs or default_codecs())
            task = bar.add_task("benchmarking", total=total)
            report = run(dirs, codecs, limit, progress=lambda: bar.advance(task), workers=workers,
                         per_image=per_image)
    except (pc.CodecError, ValueError) as exc:
        raise fail(str(exc))
    if json_out:
        emit_json(report)
    for group, per in report["sets"].items():
        results(json_out).print(table(group, per, report["smallest"][group]))
    for spec, files in report["skipped"].items():
        err.print(f"[yellow]{spec} skipped {len(files)} image(s)[/yellow] it cannot take (first: "
                  f"{next(iter(files.items()))[0]}: {next(iter(files.values()))})", highlight=False, soft_wrap=True)
    if report["unreadable"]:
        err.print(f"[yellow]{len(report['unreadable'])} file(s) do not decode[/yellow] and were left out",
                  highlight=False)
    if any(row["failed"] for per in report["sets"].values() for row in per.values()):
        raise fail("round trip failed for some images")


def register(app: typer.Typer) -> None:
    app.command()(bench)
