"""The `pixark` command. Each job lives in its own module; this file only wires them up."""

from __future__ import annotations

import typer

from . import bench, codec_cmds

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Lossless archiving of image datasets with learned and classical codecs.",
)

codec_cmds.register(app)
# --- job modules register their commands below (one line each; keep this block sorted) ---
bench.register(app)
# --- end of job registrations ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
