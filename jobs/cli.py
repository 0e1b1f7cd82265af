"""The `pixark` command. Each job lives in its own module; this file only wires them up."""

from __future__ import annotations

import inspect
import typing

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


# Shown for an option without its own metavar: this typer would show the Python type (<str>, <bool>, <list[str]>)
# on every option; a flag takes no value, so it shows none.
_METAVARS = {bool: "", int: "INTEGER", float: "NUMBER", str: "TEXT"}


def _metavar(annotation) -> str | None:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]  # Optional[X], List[X]
    return _METAVARS.get(args[0] if args else annotation)


def _tidy_help(t: typer.Typer) -> None:
    for info in t.registered_commands:
        text = info.help or (info.callback and info.callback.__doc__)
        if text:
            info.help = _reflow(text)
        if info.callback is None:
            continue
        try:
            hints = typing.get_type_hints(info.callback)
        except (NameError, TypeError):  # a hint only a type checker can resolve: keep typer's labels
            continue
        for name, param in inspect.signature(info.callback).parameters.items():
            opt = param.default
            if isinstance(opt, typer.models.OptionInfo) and opt.metavar is None and name in hints:
                opt.metavar = _metavar(hints[name])
    for group in t.registered_groups:
        _tidy_help(group.typer_instance)


_tidy_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
