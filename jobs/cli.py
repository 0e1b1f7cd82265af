"""The `pixark` command. Each job lives in its own module; this file only wires them up."""

from __future__ import annotations

import inspect

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


def _reflow(text: str) -> str:
    """A docstring's paragraphs as single lines: this typer keeps the source's line breaks after the first
    paragraph, and the terminal wraps again, so sentences broke mid-line. Lists (lines starting with '-') keep
    theirs."""
    paras = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if any(ln.lstrip().startswith("-") for ln in p.splitlines()) else " ".join(p.split())
                       for p in paras)


def _reflow_help(t: typer.Typer) -> None:
    for info in t.registered_commands:
        text = info.help or (info.callback and info.callback.__doc__)
        if text:
            info.help = _reflow(text)
    for group in t.registered_groups:
        _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
