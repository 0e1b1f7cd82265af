"""The `pixark` command. Each job lives in its own module; this file only wires them up."""

from __future__ import annotations

import typer

from . import bench, cluster_jobs, codec_cmds, submit
from . import archive, bench_pipeline, demo
from . import audit, bench_jpeg, bench_read, restore, selfcheck, verify

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Lossless archiving of image datasets with learned and classical codecs.",
)

codec_cmds.register(app)
# --- job modules register their commands below (one line each; keep this block sorted) ---
archive.register(app)
audit.register(app)
bench.register(app)
bench_jpeg.register(app)
bench_pipeline.register(app)
bench_read.register(app)
cluster_jobs.register(app)
demo.register(app)
restore.register(app)
selfcheck.register(app)
submit.register(app)
verify.register(app)
# --- end of job registrations ---


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Train a learned codec (see `pixark train --help`): --codec mspsm --profile P --data DIR --out RUN_DIR ..."""
    from .train import main as train_main  # imports torch: only when training

    raise typer.Exit(train_main(ctx.args))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
