"""`pixark audit`: what compression saved, from the manifests plus a re-encoded sample (pipeline/audit.py)."""

from __future__ import annotations

from typing import Optional

import typer

from .console import emit_json, err, fail, out


def audit(
    archive: str = typer.Argument(..., help="archive URL (local path, s3://bucket/prefix, any fsspec URL)"),
    baseline_sample: int = typer.Option(0, "--baseline-sample", metavar="N", min=0,
                                        help="re-encode N archived images with png, webp-ll and jxl-ll to compare"),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE.png",
                                       help="draw the bpsp distribution and savings by folder"),
    json_out: bool = typer.Option(False, "--json", help="print the report as one JSON document on stdout"),
) -> None:
    """Report what compression saved: totals, bpsp distribution, savings vs sources and classical codecs.

    Totals (source bytes, compressed bytes, ratio, bits per subpixel) overall, per codec, per folder and per image
    size, from the manifests; with --baseline-sample, N images re-encoded with png, webp-ll and jxl-ll.
    """
    from pixark.pipeline.audit import audit as run
    from pixark.pipeline.errors import PipelineError

    if plot and not plot.lower().endswith(".png"):
        raise fail(f"--plot writes a PNG image; give a name ending in .png, not {plot!r}")
    try:
        what = f" (re-encoding {baseline_sample} images)" if baseline_sample else ""
        with err.status(f"auditing {archive}{what}"):
            report = run(archive, baseline_sample=baseline_sample, plot=plot)
    except (PipelineError, OSError, ValueError) as exc:
        raise fail(f"cannot audit {archive}: {exc}")
    if json_out:
        emit_json(report)
    else:
        show(report)


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def show(r: dict) -> None:
    from rich.table import Table

    def table(title: str, groups: dict, first: str) -> Table:
        t = Table(title=title)
        for col in (first, "images", "source", "archive", "ratio", "saved", "bpsp"):
            t.add_column(col, justify="left" if col == first else "right")
        for name, g in groups.items():
            t.add_row(name, str(g["images"]), _size(g["source_bytes"]), _size(g["compressed_bytes"]),
                      "-" if g["ratio"] is None else f"{g['ratio']:.3f}", _pct(g["savings"]),
                      "-" if g["bpsp"] is None else f"{g['bpsp']:.3f}")
        return t

    out.print(table(f"{r['archive']}: {r['archived']} images archived ({r['kept']} kept as original bytes "
                    f"because they did not decode or code, {r['failed']} failed: unreadable, without a record)",
                    {"all": r["totals"]}, "archive"))
    inferred = r.get("restore_exact_inferred") or 0
    out.print(table("restore gives back" + (f" ({inferred} rows written before pixark recorded restore_exact: "
                                             "counted by their codec)" if inferred else ""),
                    r.get("by_exact", {}), "restores"))
    out.print(table("by codec", r["by_codec"], "codec"))
    out.print(table("by folder", r["by_folder"], "folder"))
    out.print(table("by image size", r["by_size"], "size"))
    for key, what in (("bpsp_distribution", "8-bit"), ("bpsp_distribution_16bit", "deeper than 8-bit")):
        d = r.get(key) or {"count": 0}
        if d["count"]:
            q = "  ".join(f"{k}={v:.3f}" for k, v in d["quantiles"].items())
            out.print(f"bits per subpixel over {d['count']} {what} images: mean {d['mean']:.3f}  {q}",
                      highlight=False)
    base = r.get("baseline")
    if base:
        t = Table(title=f"baseline: {base['images']} sampled images re-encoded")
        for col in ("codec", "images", "codec bpsp", "archive bpsp", "archive saves"):
            t.add_column(col, justify="left" if col == "codec" else "right")
        for name, c in base["codecs"].items():
            t.add_row(name, str(c["images"]), "-" if c["bpsp"] is None else f"{c['bpsp']:.3f}",
                      "-" if c["archive_bpsp"] is None else f"{c['archive_bpsp']:.3f}", _pct(c["savings"]))
        out.print(t)
        for s in base["skipped"]:
            out.print(f"[yellow]baseline skipped[/yellow] {s['image_id']}: {s['error']}", highlight=False)
    if r.get("plot"):
        out.print(f"plot: {r['plot']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(audit)
