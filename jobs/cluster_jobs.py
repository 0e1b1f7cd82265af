"""`pixark jobs list|status|logs|stop`: follow jobs on a Ray cluster (the ones `pixark submit` started, and others)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .console import emit_json, err, fail, out
from .submit import (TERMINAL, address_option, connect, exit_code_for, follow_logs, job_doc, normalize_address,
                     reason, redact, report_end, wait_terminal)

jobs_app = typer.Typer(no_args_is_help=True, help="Follow jobs on a Ray cluster: list, status, logs, stop.")


def _known(client, job_id: str) -> None:
    """Fail with a clear line for an unknown id instead of the Jobs API's HTTP 404 traceback."""
    try:
        client.get_job_info(job_id)
    except Exception as exc:
        raise fail(f"no job {job_id!r} on this cluster ({reason(exc)})")


@jobs_app.command("list")
def list_jobs(
    address: Optional[str] = address_option(),
    pixark_only: bool = typer.Option(False, "--pixark-only", help="only jobs submitted with `pixark submit`"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """All submitted jobs on the cluster, newest first."""
    client = connect(address)
    rows = []
    for d in client.list_jobs():
        if d.submission_id is None:  # drivers started by hand with ray.init(), not through the Jobs API
            continue
        meta = d.metadata or {}
        if pixark_only and "pixark_job" not in meta:
            continue
        rows.append({"job_id": d.submission_id, "status": str(getattr(d.status, "value", d.status)),
                     "entrypoint": d.entrypoint, "start_time": d.start_time, "end_time": d.end_time,
                     "message": d.message, "metadata": meta, "runtime_env": redact(d.runtime_env),
                     "driver_exit_code": getattr(d, "driver_exit_code", None)})
    rows.sort(key=lambda r: r["start_time"] or 0, reverse=True)
    if json_out:
        emit_json({"address": normalize_address(address), "jobs": rows})
        return
    from rich.table import Table

    table = Table(title=f"jobs on {normalize_address(address)}")
    # Ids are what users copy into `pixark jobs logs/stop`: never cut them; the entrypoint wraps instead.
    table.add_column("job id", no_wrap=True, min_width=max([6] + [len(r["job_id"]) for r in rows]))
    table.add_column("status", no_wrap=True)
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("entrypoint", overflow="fold")
    for r in rows:
        table.add_row(r["job_id"], r["status"], _when(r["start_time"], "%m-%d %H:%M"), r["entrypoint"])
    out.print(table)


@jobs_app.command("status")
def status(
    job_id: str = typer.Argument(..., help="submission id, e.g. pixark-archive-20261122-010203-ab12cd"),
    address: Optional[str] = address_option(),
    wait: bool = typer.Option(False, "--wait", help="wait until the job has ended, then exit with its status"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """One job's status, message, times and (redacted) runtime environment. Exit 0 unless --wait and it failed."""
    client = connect(address)
    _known(client, job_id)
    if wait:
        wait_terminal(client, job_id, None)
    doc = job_doc(client, job_id)
    if json_out:
        emit_json(doc)
    else:
        for key in ("job_id", "status", "message", "entrypoint", "driver_exit_code", "driver_node_id"):
            out.print(f"{key:>17}: {doc[key]}", highlight=False, soft_wrap=True)
        out.print(f"{'started (UTC)':>17}: {_when(doc['start_time'])}", highlight=False)
        out.print(f"{'ended (UTC)':>17}: {_when(doc['end_time'])}", highlight=False)
    if wait and exit_code_for(doc):
        raise typer.Exit(exit_code_for(doc))


@jobs_app.command("logs")
def logs(
    job_id: str = typer.Argument(...),
    address: Optional[str] = address_option(),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
    json_out: bool = typer.Option(False, "--json", help="one JSON document {job_id, status, logs}"),
) -> None:
    """The job's driver log (stdout+stderr of the entrypoint) on stdout."""
    client = connect(address)
    _known(client, job_id)
    if follow and not json_out:
        follow_logs(client, job_id, out=sys.stdout)
        return
    if follow:
        wait_terminal(client, job_id, None)
    text = client.get_job_logs(job_id)
    if json_out:
        emit_json({"job_id": job_id, "status": job_doc(client, job_id)["status"], "logs": text})
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


@jobs_app.command("stop")
def stop(
    job_id: str = typer.Argument(...),
    address: Optional[str] = address_option(),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until the job has stopped"),
    timeout: float = typer.Option(60, "--timeout", help="seconds to wait for it to stop"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Ask the cluster to stop a job (SIGTERM to the driver, then SIGKILL). A stopped archive resumes on rerun."""
    client = connect(address)
    _known(client, job_id)
    requested = client.stop_job(job_id)
    final = wait_terminal(client, job_id, timeout) if wait else None
    doc = job_doc(client, job_id)
    doc["stop_requested"] = bool(requested)
    if json_out:
        emit_json(doc)
    elif not requested:
        err.print(f"job {job_id} had already ended: {doc['status']}", highlight=False)
    else:
        report_end(doc) if final in TERMINAL else err.print(f"stop requested for {job_id}; now {doc['status']}",
                                                             highlight=False)
    if wait and requested and final not in TERMINAL:
        raise fail(f"job {job_id} still {final} after {timeout:g}s")


def _when(ms: Optional[int], fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if not ms:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(fmt)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
