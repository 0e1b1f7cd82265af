"""Where the CLI writes: human output and progress on stderr (rich), exactly one JSON document on stdout."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

err = Console(stderr=True)


def emit_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason on stderr and return the Exit to raise (no traceback for expected errors)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
