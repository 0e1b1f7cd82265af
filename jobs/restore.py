"""`pixark restore`: write archived images back, in their original format with their metadata (pipeline/restore.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from .console import fail, out, report, run_with_progress


def restore(
    archive: str = typer.Argument(..., help="archive URL (local path, s3://bucket/prefix, any fsspec URL)"),
    dest: str = typer.Argument(..., help="where to write the images (any fsspec URL); relative paths are kept"),
    include: Optional[List[str]] = typer.Option(
        None, "--include", metavar="GLOB", help="restore only image ids matching GLOB (repeatable; '*' crosses '/')"),
    ids: Optional[str] = typer.Option(
        None, "--ids", metavar="FILE", help="restore only the image ids listed in FILE, one per line"),
    format: str = typer.Option("original", "--format",
                               help="original (source format and metadata) or png (images as PNG; stored JPEG, "
                                    "TIFF ... converted from their decoded pixels)"),
    exact: bool = typer.Option(
        False, "--exact",
        help="write only the source files' own bytes: refuse (exit 1, nothing written) when the selection holds "
             "images that restore pixel-exact only (manifest column restore_exact)"),
    skip_existing: bool = typer.Option(
        False, "--skip-existing",
        help="trust outputs already in DEST without checking them (fast resume; repairs nothing)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="Ray cluster for large restores (default: a local Ray)"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON document on stdout"),
) -> None:
    """Write archived images back under DEST in their original format, with their metadata.

    Ranged reads of just the records needed; large restores run on Ray. Outputs already in DEST are checked
    against the manifest (size, then hash) and rewritten when they differ, so a rerun resumes and repairs.
    Files archived byte-exact (stored, Lepton JPEG, PNG with a recipe) come back as their own bytes, sha256
    checked; other recoded images as the same pixels and metadata in a file pixark writes.
    Exit code 1 when a record could not be restored, a requested id is not in the archive, a file promised
    byte-exact came back as its pixels only, or the archive is damaged (a missing or changed manifest part, no
    archive.json): what is intact is still restored.
    """
    from pixark.pipeline.restore import FORMATS, restore as run

    if format not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    summary = run_with_progress(
        "restore", "images",
        lambda progress: run(archive, dest, include=include or None, ids=ids, format=format,
                             ray_address=ray_address, skip_existing=skip_existing, progress=progress,
                             exact=exact),
        f"cannot restore from {archive}")
    report(summary, json_out, show)


def show(s: dict) -> None:
    out.print(f"{s['archive']} -> {s['dest']}: {s['selected']} selected, {s['written']} written "
              f"({s['bytes_written']:,} bytes; {s.get('repaired', 0)} of them repaired), {s['skipped']} already there, {len(s['not_archived'])} not archived "
              f"(failed at archive time), {len(s['errors'])} errors in {s['seconds']} s", highlight=False)
    ex = s.get("exact") or {}
    if ex.get("bytes") or ex.get("pixels"):
        out.print(f"{ex['bytes']} written as the source's own bytes (sha256 checked), {ex['pixels']} as the same "
                  "pixels and metadata in a file pixark wrote", highlight=False)
    for r in s.get("not_exact", [])[:20]:
        out.print(f"[red]not byte-exact[/red] {r['image_id']}: {r['detail']}", highlight=False, soft_wrap=True)
    for r in s["not_archived"][:10]:
        out.print(f"[yellow]not archived[/yellow] {r['image_id']}: {r['detail']}", highlight=False, soft_wrap=True)
    for r in s["errors"][:20]:
        out.print(f"[red]error[/red] {r['image_id']}: {r['detail']}", highlight=False, soft_wrap=True)
    for p in s.get("problems", []):
        out.print(f"[red]archive damaged[/red] {p}", highlight=False, soft_wrap=True)
    if s["missing_ids"]:
        shown = ", ".join(s["missing_ids"][:10])
        out.print(f"[red]{len(s['missing_ids'])} requested ids are not in the archive:[/red] {shown}"
                  f"{' ...' if len(s['missing_ids']) > 10 else ''}", highlight=False, soft_wrap=True)
    if s["selected"] == 0:
        out.print("[yellow]nothing matched the selection[/yellow]")


def register(app: typer.Typer) -> None:
    app.command()(restore)
