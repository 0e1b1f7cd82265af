"""`pixark demo`: the whole job on an embedded default, on a fresh machine with nothing but pixark installed.

Copies the images scikit-image ships (PNG, JPEG, GIF, TIFF) into OUT/source/<format>/, starts a local Ray (or
joins RAY_ADDRESS), archives OUT/source into OUT/archive, then verifies, restores into OUT/restored and audits
(OUT/audit.png) with the verify/restore/audit jobs when this build has them, and prints where everything is.
Rerunning starts the demo again from scratch.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional

import typer

from .console import emit_json, err, fail

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".tif": "tiff", ".tiff": "tiff"}


def sample_images() -> list[Path]:
    import skimage.data

    folder = Path(os.path.dirname(skimage.data.__file__))
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)


def stage_source(out: Path) -> tuple[Path, int, int]:
    """Copy scikit-image's images into OUT/source/<format>/ (fresh each run). Returns (folder, files, bytes)."""
    src = out / "source"
    if src.exists():
        shutil.rmtree(src)
    files = sample_images()
    if not files:
        raise fail("scikit-image ships no sample images in this installation (is scikit-image installed?)")
    total = 0
    for f in files:
        target = src / FORMATS[f.suffix.lower()] / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        total += f.stat().st_size
    return src, len(files), total


def _optional(step: str):
    """(run function, show function) of verify/restore/audit, or None when this build does not have that job."""
    import importlib

    try:
        run = getattr(importlib.import_module(f"pixark.pipeline.{step}"), step)
        show = getattr(importlib.import_module(f"pixark.jobs.{step}"), "show", None)
    except (ImportError, AttributeError):
        return None
    return run, show


def compare_restored(source: Path, restored: Path) -> dict:
    """How many restored files have the source's pixels, and how many are the same bytes (stored files are)."""
    from pixark import codec as pc

    same_bytes = same_pixels = missing = 0
    for f in sorted(p for p in source.rglob("*") if p.is_file()):
        back = restored / f.relative_to(source)
        if not back.is_file():
            missing += 1
            continue
        a, b = f.read_bytes(), back.read_bytes()
        if a == b:
            same_bytes += 1
            same_pixels += 1
            continue
        ia, ib = pc.load(a), pc.load(b)
        if ia.pixels is not None and ib.pixels is not None and ia.pixel_sha256() == ib.pixel_sha256():
            same_pixels += 1
    return {"same_bytes": same_bytes, "same_pixels": same_pixels, "missing": missing}


def run_demo(out: str, ray_address: str | None = None, quiet: bool = False) -> dict:
    from pixark.jobs.archive import RichEvents, print_summary
    from pixark.pipeline import workers as W
    from pixark.pipeline.archive import ArchiveConfig, run_archive

    t0 = time.perf_counter()
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    say = (lambda *a, **k: None) if quiet else err.print
    src, n_files, n_bytes = stage_source(out_dir)
    say(f"[bold]1/5[/bold] copied {n_files} images scikit-image ships ({n_bytes / 1e6:.1f} MB: PNG, JPEG, GIF, TIFF) "
        f"to {src}", highlight=False)
    archive_dir = out_dir / "archive"
    doc: dict = {"out": str(out_dir), "source": str(src), "archive": str(archive_dir), "steps": {}}
    started = W.connect(ray_address)
    try:
        import ray

        res = ray.cluster_resources()
        say(f"[bold]2/5[/bold] Ray: {'started locally' if started else 'connected'} "
            f"({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)", highlight=False)
        s = run_archive(ArchiveConfig(src=str(src), dest=str(archive_dir), overwrite=True, shard_size=4 * 10**6),
                        RichEvents(quiet=quiet))
        doc["steps"]["archive"] = s
        if not quiet:
            print_summary(s, err)

        for step in ("verify", "restore", "audit"):
            fns = _optional(step)
            if fns is None:
                doc["steps"][step] = {"skipped": f"pixark.jobs.{step} is not part of this build"}
                say(f"{step}: skipped (not part of this build)", highlight=False)
                continue
            run, show = fns
            say(f"[bold]{ {'verify': 3, 'restore': 4, 'audit': 5}[step] }/5[/bold] {step}", highlight=False)
            try:
                if step == "verify":
                    result = run(str(archive_dir))
                elif step == "restore":
                    restored = out_dir / "restored"
                    if restored.exists():
                        shutil.rmtree(restored)
                    result = run(str(archive_dir), str(restored))
                    result["compared_with_source"] = compare_restored(src, restored)
                    doc["restored"] = str(restored)
                else:
                    plot = out_dir / "audit.png"
                    result = run(str(archive_dir), baseline_sample=4, plot=str(plot))
                    doc["audit_plot"] = str(plot)
            except Exception as exc:  # one step failing must not hide the others' results
                doc["steps"][step] = {"error": f"{type(exc).__name__}: {exc}"}
                say(f"[red]{step} failed:[/red] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
                continue
            doc["steps"][step] = result
            if show and not quiet:
                show(result)
            if step == "restore" and not quiet:
                c = result["compared_with_source"]
                say(f"restored files vs sources: {c['same_pixels']}/{n_files} with identical pixels, "
                    f"{c['same_bytes']}/{n_files} byte-identical (files kept as original bytes), {c['missing']} missing",
                    highlight=False)
    finally:
        if started:
            import ray

            ray.shutdown()
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc["ok"] = (doc["steps"]["archive"]["failed"] == 0
                 and all("error" not in v and v.get("ok", True) for v in doc["steps"].values()))
    return doc


def demo_cmd(
    out: str = typer.Option("./pixark-demo", "--out", help="folder for the demo's source, archive and results"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="Ray cluster to use (default: start Ray on this machine)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Run the whole job on scikit-image's sample images: archive, verify, restore, audit; print where results are."""
    from pixark.pipeline.errors import PipelineError

    try:
        doc = run_demo(out, ray_address)
    except PipelineError as exc:
        raise fail(str(exc))
    if json_out:
        emit_json(doc)
    where = [("source images", doc["source"]), ("archive", doc["archive"]),
             ("  shards", f"{doc['archive']}/shards/"), ("  manifests (Parquet)", f"{doc['archive']}/manifests/"),
             ("  summary", f"{doc['archive']}/archive.json")]
    if isinstance(doc["steps"].get("verify"), dict) and "ok" in doc["steps"]["verify"]:
        where.append(("verify report", f"{doc['archive']}/verify/"))
    if doc.get("restored"):
        where.append(("restored images", doc["restored"]))
    if doc.get("audit_plot") and Path(doc["audit_plot"]).exists():
        where.append(("audit plot", doc["audit_plot"]))
    err.print(f"\n[bold]{'demo finished' if doc['ok'] else 'demo finished with problems (see above)'}[/bold] "
              f"in {doc['seconds']} s. Results:", highlight=False)
    for label, path in where:
        err.print(f"  {label:<22} {path}", highlight=False)
    if not doc["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
