"""Where the CLI writes: results on stdout (``out``: tables, summaries, reports), progress, logs and errors on
stderr (``err``); with ``--json`` stdout holds exactly one JSON document and any human summary goes to stderr."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

err = Console(stderr=True)
# Results never wrap mid-line when stdout is a file or a pipe (rich would fold long paths at 80 columns there);
# tables get room to show whole codec names and paths.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def results(json_out: bool) -> Console:
    """Where a command's human-readable result goes: stdout, or stderr when stdout carries the --json document."""
    return err if json_out else out


def emit_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason on stderr and return the Exit to raise (no traceback for expected errors)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_with_progress(label: str, unit: str, job, failure: str):
    """Run ``job(progress)`` under a rich progress bar on stderr; ``progress(done, total)`` moves the bar.
    Expected errors become a one-line failure that starts with ``failure``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pixark.pipeline.errors import PipelineError

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        try:
            return job(lambda done, total: bar.update(task, completed=done, total=total))
        except (PipelineError, OSError, ValueError) as exc:
            raise fail(f"{failure}: {exc}")


def report(summary: dict, json_out: bool, show) -> None:
    """One JSON document on stdout, or the human summary (``show`` prints to ``out``) on stdout; exit code 1
    unless the summary is ok."""
    if json_out:
        emit_json(summary)
    else:
        show(summary)
    if not summary["ok"]:
        raise typer.Exit(1)
