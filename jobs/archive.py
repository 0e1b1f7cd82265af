"""`pixark archive SRC DEST`: the archive job's command line and its Python entry point ``archive(...)``."""

from __future__ import annotations

import time
from typing import List, Optional

import typer

from .console import emit_json, err, fail, results


def _events_base():
    from pixark.pipeline.archive import Events

    return Events


class RichEvents(_events_base()):
    """Draws the driver's progress on stderr: images, images/s, MB/s (source), running compression ratio."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None
        self.task = None

    def start(self, total_images: int, total_bytes: int, done_images: int, done_bytes: int) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.t0 = time.perf_counter()
        self.images = self.in_bytes = self.out_bytes = 0
        self.progress = Progress(TextColumn("archive"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), console=err, transient=False)
        self.task = self.progress.add_task("archive", total=total_images, completed=done_images, rate="")
        self.progress.start()

    def workers_ready(self, pool: list[dict]) -> None:
        if not self.quiet and self.progress is not None:
            devices = sorted({p["device"] for p in pool})
            self.progress.console.print(f"{len(pool)} codec worker(s) ready on {', '.join(devices)}", highlight=False)

    def advance(self, images: int, source_bytes: int, out_bytes: int) -> None:
        if self.progress is None:
            return
        self.images += images
        self.in_bytes += source_bytes
        self.out_bytes += out_bytes
        dt = max(time.perf_counter() - self.t0, 1e-9)
        ratio = self.in_bytes / self.out_bytes if self.out_bytes else 0.0
        self.progress.update(self.task, advance=images,
                             rate=f"{self.images / dt:6.1f} img/s {self.in_bytes / dt / 1e6:6.2f} MB/s ratio {ratio:5.3f}")

    def message(self, text: str) -> None:
        if not self.quiet:
            err.print(text, highlight=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def archive(src: str, dest: str, codec: str = "auto", shard_size: str | int = "256MB", workers: int | None = None,
            gpus_per_worker: float | None = None, include: list[str] | None = None, exclude: list[str] | None = None,
            ray_address: str | None = None, overwrite: bool = False, extend: bool = False, update: bool = False,
            strict: bool = False, verify: bool = True, progress: bool = False, **options) -> dict:
    """Archive every object under ``src`` (any fsspec URL) into ``dest``; returns the summary (see print_summary).
    Rerun after a crash to finish; ``extend`` adds new source objects; ``update`` adds them and archives changed
    ones again as a new generation; ``overwrite`` starts again. ``options`` go to
    ArchiveConfig (``src_options``/``dest_options`` for fsspec storage options, batch sizes ...)."""
    from pixark.pipeline.archive import ArchiveConfig, run_archive
    from pixark.pipeline.sources import parse_size

    cfg = ArchiveConfig(src=src, dest=dest, codec=codec, shard_size=parse_size(shard_size), workers=workers,
                        gpus_per_worker=gpus_per_worker, include=tuple(include or ()), exclude=tuple(exclude or ()),
                        ray_address=ray_address, overwrite=overwrite, extend=extend, update=update, strict=strict,
                        verify=verify, **options)
    return run_archive(cfg, RichEvents() if progress else None)


def _kept(s: dict) -> int:
    """Rows whose original bytes were kept because they did not decode or code (archive.json before these
    counts said "failed" for them: what is not ok and not failed)."""
    if "kept_unreadable" in s:
        return s["kept_unreadable"] + s.get("kept_uncoded", 0)
    return 0


def print_summary(s: dict, con=None) -> None:
    """The archive summary, on ``con`` (default: stdout)."""
    con = con or results(False)
    if s.get("message"):
        con.print(s["message"], highlight=False)
    ratio = f"{s['ratio']:.3f}" if s.get("ratio") else "-"
    bpsp = f"{s['bpsp']:.3f}" if s.get("bpsp") else "-"
    con.print(
        f"[bold]{s['status']}[/bold]: {s['images']} objects ({s['ok']} ok, {_kept(s)} kept as original bytes, "
        f"{s['failed']} failed) in {s['shards']} shard{'' if s['shards'] == 1 else 's'}; "
        f"{s['source_bytes']:,} -> {s['compressed_bytes']:,} bytes, ratio {ratio}, {bpsp} bits/subpixel over "
        f"{s.get('recoded', 0)} recoded images; {s['seconds']:.1f}s", highlight=False)
    ex = s.get("restore_exact")
    if ex:
        inferred = s.get("restore_exact_inferred") or 0
        con.print(f"restore gives back {ex['bytes']} file(s) byte-exact (their own bytes, sha256 checked) and "
                  f"{ex['pixels']} pixel-exact only (same pixels and metadata, a file pixark writes)"
                  + (f"; {inferred} of these counted by codec (rows written before pixark recorded restore_exact)"
                     if inferred else ""), highlight=False)
    for f in s.get("failures", [])[:10]:
        state = f.get("status", "failed")
        colour = "red" if state == "failed" else "yellow"
        con.print(f"  [{colour}]{state}[/{colour}] {f['image_id']}: {f['error']}", highlight=False, soft_wrap=True)
    not_ok = s["images"] - s["ok"]
    if not_ok > 10:
        con.print(f"  ... and {not_ok - 10} more (rows whose status is not ok in the manifests)", highlight=False)
    con.print(f"archive: {s['dest']}  (summary in {s['archive_json']})", highlight=False)


def archive_cmd(
    src: str = typer.Argument(..., help="source folder or prefix: any fsspec URL (path, s3://bucket/prefix, ...)"),
    dest: str = typer.Argument(..., help="archive destination: any fsspec URL"),
    codec: str = typer.Option("auto", "--codec", "-c", help="auto (best per image) or a codec spec, e.g. jxl-ll:effort=9"),
    shard_size: str = typer.Option("256MB", "--shard-size", help="source bytes per shard, e.g. 256MB, 64MiB"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="codec workers (default: one per GPU, else per CPU)"),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="GPUs per worker where the cluster has GPUs"),
    include: Optional[List[str]] = typer.Option(None, "--include", help="glob on the relative path (repeatable)"),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="glob on the relative path (repeatable)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS", help="Ray cluster; default: local Ray"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete what DEST holds and start again"),
    extend: bool = typer.Option(False, "--extend", help="add source objects that the archive does not hold yet"),
    update: bool = typer.Option(False, "--update",
                                help="add new source objects and archive changed ones again (a new generation)"),
    strict: bool = typer.Option(False, "--strict",
                                help="exit 2 when any object did not code (kept as original bytes, or failed) or was not archived (skipped)"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="decode each record and compare pixels before trusting it"),
    no_follow: bool = typer.Option(False, "--no-follow", help="do not archive symlinks to files (they are reported as skipped)"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON document on stdout"),
) -> None:
    """Archive an image dataset: sharded, compressed, with Parquet manifests. Rerun to resume after a crash."""
    from pixark.pipeline.errors import PipelineError

    try:
        s = archive(src, dest, codec=codec, shard_size=shard_size, workers=workers, gpus_per_worker=gpus_per_worker,
                    include=include, exclude=exclude, ray_address=ray_address, overwrite=overwrite, extend=extend,
                    update=update, strict=strict, verify=verify, progress=True, follow_links=not no_follow)
    except PipelineError as exc:
        raise fail(str(exc))
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        raise fail(f"cannot write the archive: {type(exc).__name__}: {exc}; fix the destination (a file where a "
                   "folder is needed, or permissions), then rerun: completed shards are kept")
    except (OSError, ValueError) as exc:  # storage errors: the archive is not recorded (rerun resumes)
        raise fail(f"{type(exc).__name__}: {exc}; completed shards are kept, rerun the same command to finish")
    if json_out:
        emit_json(s)
    print_summary(s, results(json_out))
    if strict and s["images"] != s["ok"]:
        raise fail(f"{s['images'] - s['ok']} object(s) did not code: {_kept(s)} kept as original bytes, "
                   f"{s['failed']} failed (--strict)", code=2)
    if strict and s.get("skipped"):  # found by the listing, not archived: as much a loss as a failed row
        raise fail(f"{len(s['skipped'])} entries under the source were not archived (listed above: FIFOs, symlinks "
                   "not followed, names with characters U+F780..U+F7FF ...) (--strict)", code=2)


def register(app: typer.Typer) -> None:
    app.command("archive")(archive_cmd)
