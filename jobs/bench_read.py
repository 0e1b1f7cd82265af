"""`pixark bench-read [DIR]`: images per second into a torch DataLoader (2 worker processes) from an archive,
per codec, from local disk and from S3, beside reading the original files the same way.

For each codec the images are archived once (``pixark archive --codec C``) into a scratch folder, and that archive
is uploaded to a local S3 endpoint (moto's server, started here; ``--no-s3`` skips it). Each measurement is one
epoch of ``pixark.dataset.TorchDataset`` through ``DataLoader(batch_size=None, num_workers=2)``, start-up of the
workers included, repeated ``--repeat`` times (best kept: the machine is shared). The baseline reads the original
files from the same store and decodes them with Pillow in the same DataLoader.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from .bench_pipeline import IMAGE_SUFFIXES, _stage, default_images
from .console import emit_json, err, fail

DEFAULT_CODECS = ("png", "webp-ll", "jxl-ll")


def file_dataset(url: str, names: list[str], storage_options: dict | None = None):
    """The baseline: a torch IterableDataset of the original files, read through fsspec and decoded by Pillow,
    split over DataLoader workers like TorchDataset. (Defined here: torch is imported only when benchmarking.)"""
    import torch

    class Files(torch.utils.data.IterableDataset):
        def __iter__(self):
            import io

            import fsspec
            import numpy as np
            from PIL import Image

            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
            for name in names[worker::workers]:
                with Image.open(io.BytesIO(fs.cat_file(f"{root.rstrip('/')}/{name}"))) as im:
                    im.load()
                    yield {"image_id": name, "pixels": np.array(im)}

    return Files()


def _epoch(dataset) -> tuple[float, int, int]:
    """(seconds, images, pixels) of one pass through a DataLoader with 2 worker processes."""
    import torch

    t = time.perf_counter()
    n = pixels = 0
    for s in torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2):
        n += 1
        pixels += int(s["pixels"].shape[0]) * int(s["pixels"].shape[1])
    return time.perf_counter() - t, n, pixels


def _moto():
    """A local S3 endpoint (moto's server on 127.0.0.1) -> (server, storage options)."""
    import socket

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise fail("the S3 runs need moto's server (pip install 'moto[server]'), or run with --no-s3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's HTTP server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}


def bench_read(directory: str | None = None, codecs: tuple[str, ...] = DEFAULT_CODECS, limit: int | None = None,
               s3: bool = True, repeat: int = 2) -> dict:
    import fsspec

    from pixark.dataset import Archive, TorchDataset
    from pixark.pipeline import workers as W

    from .archive import archive

    src = Path(directory) if directory else default_images()
    if not src.is_dir():
        raise fail(f"{src} is not a folder of images")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise fail(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {src}")
    scratch = Path(tempfile.mkdtemp(prefix="pixark-bench-read-"))
    server = None
    rows: list[dict] = []
    try:
        data_dir = scratch / "src"
        _stage(src, files, data_dir)
        stores = [("local", str(scratch), None)]
        if s3:
            server, opts = _moto()
            fs = fsspec.filesystem("s3", **opts)
            fs.mkdir("bench")
            fs.put(str(data_dir), "bench/src", recursive=True)
            stores.append(("s3", "s3://bench", opts))

        started = W.connect(None)
        archives = {}
        try:
            for codec in codecs:
                dest = scratch / f"archive-{codec.replace(':', '_')}"
                err.print(f"archiving {len(files)} images with --codec {codec} ...", highlight=False)
                s = archive(str(data_dir), str(dest), codec=codec, workers=2)
                archives[codec] = (dest.name, s)
                if s3:
                    fs.put(str(dest), f"bench/{dest.name}", recursive=True)
        finally:
            if started:
                import ray

                ray.shutdown()

        # the baseline reads what the archives hold as images (a file Pillow cannot read is in neither)
        names = Archive(str(scratch / next(iter(archives.values()))[0])).ids(images_only=True)

        def measure(run: str, where: str, make) -> None:
            best = None
            for _ in range(repeat):
                seconds, n, pixels = _epoch(make())
                if best is None or seconds < best[0]:
                    best = (seconds, n, pixels)
            seconds, n, pixels = best
            if n != len(names):
                raise fail(f"{run} from {where} read {n} images, the archives hold {len(names)}")
            rows.append({"run": run, "store": where, "images": n, "seconds": seconds, "images_per_s": n / seconds,
                         "mp_per_s": pixels / seconds / 1e6})
            err.print(f"{run:>12} {where:>5}: {n / seconds:8.1f} images/s", highlight=False)

        for where, base, opts in stores:
            measure("files", where, lambda: file_dataset(f"{base}/src", names, opts))
            for codec, (name, s) in archives.items():
                url = f"{base}/{name}"
                Archive(url, opts)  # index read once here: the measurement is reading, not listing
                measure(codec, where, lambda: TorchDataset(url, storage_options=opts))
        for codec, (name, s) in archives.items():
            arc = Archive(str(scratch / name))
            records = dict(sorted(Counter(arc.row(i)["codec"] for i in arc.ids(images_only=True)).items()))
            for r in rows:
                if r["run"] == codec:
                    r.update(archive_bytes=s["compressed_bytes"], bpsp=s.get("bpsp"), records=records)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"directory": str(src), "images": len(files), "source_bytes": sum(f.stat().st_size for f in files),
            "codecs": list(codecs), "dataloader_workers": 2, "repeat": repeat, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "runs": rows}


def bench_read_cmd(
    directory: Optional[str] = typer.Argument(None, help="folder of images (default: the photos scikit-image ships)"),
    codec: list[str] = typer.Option(list(DEFAULT_CODECS), "--codec", "-c", help="codec to archive with (repeat)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="use only the first N images"),
    s3: bool = typer.Option(True, "--s3/--no-s3", help="also read from a local S3 endpoint (moto's server)"),
    repeat: int = typer.Option(2, "--repeat", help="run each measurement this many times, keep the best"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Images/s into a DataLoader (2 workers) from archives, per codec, local and S3, beside the original files."""
    from rich.table import Table

    if repeat < 1:
        raise fail("--repeat must be at least 1")
    doc = bench_read(directory, tuple(codec), limit, s3, repeat)
    if json_out:
        emit_json(doc)
        return
    table = Table(title=f"reading into a DataLoader (2 workers): {doc['images']} images, "
                        f"{doc['source_bytes'] / 1e6:.1f} MB, {doc['cpus']} CPUs")
    for col in ("read", "store", "images/s", "MP/s", "bytes", "bpsp"):
        table.add_column(col, justify="left" if col in ("read", "store") else "right")
    for r in doc["runs"]:
        table.add_row(r["run"], r["store"], f"{r['images_per_s']:.1f}", f"{r['mp_per_s']:.1f}",
                      f"{r.get('archive_bytes', doc['source_bytes']):,}", f"{r['bpsp']:.3f}" if r.get("bpsp") else "")
    err.print(table)
    err.print(f"load average during the run: {' '.join(f'{x:.1f}' for x in doc['load_average'])} (other processes "
              "on this machine slow every row)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench-read")(bench_read_cmd)
