"""`pixark verify`: independent bit-exact verification of an archive (a Ray job; see pipeline/verify.py)."""

from __future__ import annotations

from typing import Optional

import typer

from .console import fail, out, report, run_with_progress


def verify(
    archive: str = typer.Argument(..., help="archive URL (local path, s3://bucket/prefix, any fsspec URL)"),
    sample: Optional[str] = typer.Option(None, "--sample", metavar="N|FRACTION",
                                         help="check N records, or a fraction (e.g. 0.05), chosen at random; "
                                              "archive-level checks always cover everything"),
    against_source: bool = typer.Option(False, "--against-source",
                                        help="also read every checked source object and compare hashes and pixels"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed for --sample (reproducible samples)"),
    hash_shards: bool = typer.Option(False, "--hash-shards",
                                     help="also hash each whole shard against archive.json's sha256 (reads every "
                                          "shard a second time; the per-record and index checksums already cover "
                                          "every byte)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="Ray cluster to run on (default: a local Ray)"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON document on stdout"),
) -> None:
    """Prove every record decodes bit-exact; check archive.json, manifests and shards agree.

    A Ray job reading only what the archive holds. Writes ARCHIVE/verify/records.parquet (one row per record:
    image_id, status, detail) and ARCHIVE/verify/summary.json. Exit code 1 on any mismatch.
    """
    from pixark.pipeline.verify import parse_sample, verify as run

    try:
        parse_sample(sample)
    except ValueError as exc:
        raise fail(str(exc))
    summary = run_with_progress(
        "verify", "records",
        lambda progress: run(archive, sample=sample, against_source=against_source, ray_address=ray_address,
                             seed=seed, progress=progress, hash_shards=hash_shards),
        f"cannot verify {archive}")
    report(summary, json_out, show)


def show(summary: dict) -> None:
    from rich.table import Table

    from pixark.pipeline.manifest import KEPT

    checked = summary["records_checked"]
    what = f"{checked} of {summary['records']} records" if summary["sample"] else f"all {checked} records"
    n = summary["shards"]
    out.print(f"verified {what} in {n} shard{'' if n == 1 else 's'} of {summary['archive']} "
              f"({summary['seconds']} s)", highlight=False)
    table = Table(title="records by status")
    table.add_column("status")
    table.add_column("records", justify="right")
    for status, n in summary["counts"].items():
        colour = "green" if status == "ok" else ("yellow" if status in ("archive_failed", *KEPT) else "red")
        table.add_row(f"[{colour}]{status}[/{colour}]", str(n))
    out.print(table)
    for p in summary["problems"]:
        out.print(f"[red]problem:[/red] {p}", highlight=False, soft_wrap=True)
    for r in summary["mismatched_records"][:20]:
        out.print(f"[red]{r['status']}[/red] {r['image_id']} ({r['shard']} @ {r['offset']}): {r['detail']}",
                  highlight=False, soft_wrap=True)
    if summary["mismatches"] > 20:
        out.print(f"... {summary['mismatches'] - 20} more in the report", highlight=False)
    verdict = "[green]OK: every checked record decodes bit-exact[/green]" if summary["ok"] else \
        f"[red]FAILED: {summary['mismatches']} record mismatches, {len(summary['problems'])} archive problems[/red]"
    out.print(verdict)
    out.print(f"report: {summary['report']['records']}  summary: {summary['report']['summary']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(verify)
