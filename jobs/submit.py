"""`pixark submit`: run a pixark job on a running Ray cluster through Ray's Jobs API.

The job's entrypoint is `python -m pixark.jobs.cli <job> ARGS...`, run by the cluster's job supervisor on the head
node; inside it `ray.init()` finds the cluster through the RAY_ADDRESS the supervisor sets, so the job's workers
spread over every node. By default the locally installed pixark code is shipped with the job (runtime_env
`py_modules`), so the cluster runs exactly the codec and pipeline you tested here; the cluster image only needs the
dependencies (infra/docker/Dockerfile). Storage credentials and endpoints set in the local environment are passed
through as runtime_env `env_vars` (see `pass_through_env`).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from .console import emit_json, err, fail

# Jobs that make sense on a cluster; `exec` runs any command with the same runtime environment (smoke tests,
# probes: `pixark submit exec -- python -c "import ray; ray.init(); print(ray.cluster_resources())"`).
PIXARK_JOBS = ("archive", "verify", "restore", "audit")
JOB_CHOICES = PIXARK_JOBS + ("exec",)

# Passed to the job when set locally: the storage settings workers get too (pipeline.store.STORAGE_ENV: values,
# never paths to local files or AWS_PROFILE), and PIXARK_* settings of the project's own.
PASS_THROUGH_PREFIX = "PIXARK_"

# Words that mark a value we must not print back (job listings show runtime_env, and so does the dashboard).
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "PRIVATE")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# ---------------------------------------------------------------------------------------------------------------
# Cluster connection


def normalize_address(address: Optional[str]) -> str:
    """The dashboard URL the Jobs API listens on, from --address / RAY_API_SERVER_ADDRESS / RAY_ADDRESS."""
    if not address:
        raise fail("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard) "
                   "or set RAY_API_SERVER_ADDRESS")
    address = address.strip().rstrip("/")
    if address.startswith("ray://") or address == "auto":
        raise fail(f"--address must be the Ray dashboard URL (http://HEAD:8265), not {address!r}: "
                   "jobs are submitted over HTTP")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise fail(f"--address must be an http(s) URL like http://HEAD:8265, got {address!r}")
    return address


def connect(address: Optional[str]):
    """A JobSubmissionClient for the cluster, or a one-line error saying what to check."""
    url = normalize_address(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # ray without the [default] extra has no Jobs client
        raise fail(f"the Ray Jobs client is missing ({exc}); install 'ray[default]'")
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # requests' ConnectionError, version mismatch, TLS ... all mean "cannot use it"
        raise fail(f"cannot reach the Ray Jobs API at {url}: {reason(exc)} "
                   "(is the head node's dashboard running and the port reachable?)")


def reason(exc: BaseException) -> str:
    """One line from a Jobs API error, whose text is often the server's whole traceback."""
    from pixark.pipeline.errors import one_line

    return one_line(exc, limit=1000, bare=True)


def address_option():
    return typer.Option(None, "--address", "-a", envvar="RAY_API_SERVER_ADDRESS",
                        help="Ray dashboard URL of the cluster, e.g. http://HEAD:8265")


# ---------------------------------------------------------------------------------------------------------------
# Runtime environment


def package_tree(dest: Path) -> Path:
    """Copy the installed pixark package into DEST/pixark as one importable tree and return that path.

    An editable install maps pixark.codec/pipeline/jobs to separate folders of the checkout, so the package is
    assembled from each subpackage's own location rather than from one folder.
    """
    import pixark

    root = dest / "pixark"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(Path(pixark.__file__).parent, root, ignore=ignore)
    for name in ("codec", "pipeline", "jobs"):
        module = __import__(f"pixark.{name}", fromlist=["__path__"])
        src = Path(list(module.__path__)[0])
        target = root / name
        if src.resolve() != target.resolve() and not target.exists():
            shutil.copytree(src, target, ignore=ignore)
    return root


def pass_through_env(environ: Dict[str, str]) -> Dict[str, str]:
    from pixark.pipeline.store import storage_env

    return {**storage_env(environ), **{k: v for k, v in environ.items() if v and k.startswith(PASS_THROUGH_PREFIX)}}


def parse_env_pairs(pairs: List[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--env takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def load_runtime_env(spec: Optional[str]) -> Dict[str, Any]:
    """--runtime-env: a JSON or YAML file, or inline JSON."""
    if not spec:
        return {}
    text = spec
    if not spec.lstrip().startswith("{"):
        path = Path(spec)
        if not path.is_file():
            raise fail(f"--runtime-env: {spec} is neither inline JSON nor a file")
        text = path.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml

            doc = yaml.safe_load(text)
        except Exception as exc:
            raise fail(f"--runtime-env: cannot parse {spec} as JSON or YAML: {exc}")
    if not isinstance(doc, dict):
        raise fail(f"--runtime-env must hold a mapping (runtime_env fields), got {type(doc).__name__}")
    return doc


def build_runtime_env(base: Dict[str, Any], *, working_dir: Optional[str], ship_package: Optional[Path],
                      env: Dict[str, str]) -> Dict[str, Any]:
    """Merge: pass-through env < --runtime-env's env_vars < --env; shipped package appended to py_modules."""
    runtime_env = dict(base)
    env_vars = dict(env)
    env_vars.update({k: str(v) for k, v in (base.get("env_vars") or {}).items()})
    runtime_env["env_vars"] = env_vars
    if working_dir:
        if not Path(working_dir).is_dir():
            raise fail(f"--working-dir {working_dir} is not a directory")
        runtime_env["working_dir"] = str(Path(working_dir).resolve())
    if ship_package is not None:
        runtime_env["py_modules"] = list(base.get("py_modules") or []) + [str(ship_package)]
    if not runtime_env["env_vars"]:
        del runtime_env["env_vars"]
    return runtime_env


def redact(runtime_env: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The runtime env with secret-looking env values replaced, for printing."""
    if not runtime_env:
        return runtime_env
    out = dict(runtime_env)
    env_vars = out.get("env_vars")
    if isinstance(env_vars, dict):
        out["env_vars"] = {k: ("***" if any(m in k.upper() for m in SECRET_MARKERS) else v)
                           for k, v in env_vars.items()}
    return out


def check_job_args(job: str, args: List[str]) -> None:
    """Parse ARGS with this build's own `pixark JOB` before anything is sent, so a typo fails here in a second and
    not on the cluster; and refuse local relative paths, which the job would resolve on the head node."""
    import typer.main

    from .cli import app as local_app

    # Typer ships its own copy of click, so go by attributes rather than click's classes.
    command = getattr(typer.main.get_command(local_app), "commands", {}).get(job)
    if command is None:
        raise fail(f"this pixark build has no `{job}` command, so a cluster running it would fail")
    try:
        ctx = command.make_context(job, list(args), resilient_parsing=False)
    except Exception as exc:  # click's UsageError family (unknown option, missing argument), or Exit for --help
        if hasattr(exc, "format_message"):
            raise fail(f"pixark {job}: {exc.format_message()}")
        raise fail(f"pixark submit {job}: these arguments do not make a job ({type(exc).__name__}); "
                   f"see `pixark {job} --help`")
    for param in command.params:
        if getattr(param, "param_type_name", "") != "argument":
            continue
        values = ctx.params.get(param.name)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(value, str) and "://" not in value and not value.startswith("/"):
                raise fail(f"{value!r} is a relative local path: on a cluster the job would look for it on the "
                           "head node. Use a URL every node can reach (s3://...) or an absolute shared path")


def empty_working_dir(parent: Path) -> Path:
    """An almost empty working_dir for the job. Without one, Ray puts the driver's current directory first on every
    worker's sys.path, and a pixark checkout there (where a node was started from) would shadow the shipped code."""
    wd = parent / "job-cwd"
    wd.mkdir()
    (wd / "README").write_text("working directory of a `pixark submit` job; the code is in py_modules\n")
    return wd


def entrypoint_for(job: str, args: List[str]) -> str:
    if job == "exec":
        if not args:
            raise fail("pixark submit exec needs a command: pixark submit exec -- python script.py")
        return shlex.join(args)
    return shlex.join(["python", "-m", "pixark.jobs.cli", job, *args])


def default_submission_id(job: str) -> str:
    return f"pixark-{job}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------------------------------------------
# Following a job


def job_doc(client, job_id: str) -> Dict[str, Any]:
    """JobInfo as a plain dict (secrets redacted), the document `--json` prints."""
    info = client.get_job_info(job_id)
    return {
        "job_id": job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "entrypoint": info.entrypoint,
        "message": info.message,
        "driver_exit_code": info.driver_exit_code,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "metadata": info.metadata or {},
        "runtime_env": redact(info.runtime_env),
        "driver_node_id": info.driver_node_id,
    }


async def _tail(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def follow_logs(client, job_id: str, out=None, timeout: Optional[float] = None) -> None:
    """Copy the job's log to OUT (stderr) as it is written, until the job ends or TIMEOUT seconds have passed."""
    out = out or sys.stderr
    try:
        asyncio.run(asyncio.wait_for(_tail(client, job_id, out), timeout))
    except asyncio.TimeoutError:
        return  # the caller's status poll reports that the job is still running
    except Exception as exc:  # the log websocket can drop (proxies, head restart): the status poll still decides
        err.print(f"[yellow]log stream ended early ({exc}); waiting for the job's status[/yellow]", highlight=False)


def wait_terminal(client, job_id: str, timeout: Optional[float], poll: float = 1.0) -> str:
    """Poll the job's status until it is terminal; returns it, or the last status if TIMEOUT passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        raw = client.get_job_status(job_id)
        status = str(getattr(raw, "value", raw))
        if status in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(poll)


def exit_code_for(doc: Dict[str, Any]) -> int:
    """0 for SUCCEEDED; the driver's own exit code when it failed with one (verify's mismatches); else 1."""
    if doc["status"] == "SUCCEEDED":
        return 0
    code = doc.get("driver_exit_code")
    return code if isinstance(code, int) and code > 0 else 1


def report_end(doc: Dict[str, Any]) -> None:
    colour = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow"}.get(doc["status"], "white")
    msg = f" ({doc['message']})" if doc.get("message") and doc["status"] != "SUCCEEDED" else ""
    err.print(f"job {doc['job_id']}: [{colour}]{doc['status']}[/{colour}]{msg}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------------
# The command


def submit(
    ctx: typer.Context,
    job: str = typer.Argument(..., help=f"one of {', '.join(JOB_CHOICES)}"),
    address: Optional[str] = address_option(),
    no_wait: bool = typer.Option(False, "--no-wait", help="print the job id and return at once"),
    working_dir: Optional[str] = typer.Option(None, "--working-dir", help="local folder uploaded as the job's cwd"),
    runtime_env: Optional[str] = typer.Option(None, "--runtime-env",
                                              help="runtime_env as a JSON/YAML file or inline JSON, merged"),
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE set in the job (repeatable)"),
    pass_env: bool = typer.Option(True, "--pass-env/--no-pass-env",
                                  help="pass AWS_*/FSSPEC_*/PIXARK_* values set here to the job"),
    ship: bool = typer.Option(True, "--ship/--no-ship",
                              help="ship this machine's pixark code with the job (else use the cluster image's)"),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="submission id (default pixark-JOB-TIME-RANDOM)"),
    entrypoint_num_cpus: float = typer.Option(0, "--entrypoint-num-cpus", help="CPUs reserved for the driver"),
    entrypoint_num_gpus: float = typer.Option(0, "--entrypoint-num-gpus", help="GPUs reserved for the driver"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop waiting after this many seconds"),
    logs: bool = typer.Option(True, "--logs/--no-logs", help="stream the job's log to stderr while waiting"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Submit an archive/verify/restore/audit job to a Ray cluster and (by default) wait for it.

    Arguments after JOB go to the job: `pixark submit archive s3://src s3://dst --codec auto -a http://head:8265`.
    Put the job's own options after `--` when submit has one of the same name: `... -a URL -- --json`.
    Exit code: 0 when the job succeeded, the job's exit code (or 1) when it failed or was stopped.
    """
    args = list(ctx.args)
    if job not in JOB_CHOICES:
        raise fail(f"unknown job {job!r}: choose one of {', '.join(JOB_CHOICES)}")
    if job in PIXARK_JOBS:
        check_job_args(job, args)
    env_vars = pass_through_env(dict(os.environ)) if pass_env else {}
    env_vars.update(parse_env_pairs(env))
    base = load_runtime_env(runtime_env)
    client = connect(address)
    entrypoint = entrypoint_for(job, args)
    submission_id = job_id or default_submission_id(job)

    import pixark

    with tempfile.TemporaryDirectory(prefix="pixark-ship-") as tmp:
        shipped = package_tree(Path(tmp)) if ship else None
        if shipped is not None and not working_dir and "working_dir" not in base:
            working_dir = str(empty_working_dir(Path(tmp)))
        renv = build_runtime_env(base, working_dir=working_dir, ship_package=shipped, env=env_vars)
        metadata = {"pixark_job": job, "pixark_version": pixark.__version__, "submitted_by": _user(),
                    "shipped_package": str(bool(ship)).lower()}
        try:
            # The upload of py_modules/working_dir happens inside submit_job, so the temp dir must still exist.
            submission_id = client.submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=renv, metadata=metadata,
                entrypoint_num_cpus=entrypoint_num_cpus or None, entrypoint_num_gpus=entrypoint_num_gpus or None,
            )
        except Exception as exc:  # HTTP 4xx with the server's reason (duplicate id, bad runtime_env, ...)
            raise fail(f"job submission failed: {reason(exc)}")

    if no_wait:
        if json_out:
            raw = client.get_job_status(submission_id)
            emit_json({"job_id": submission_id, "status": str(getattr(raw, "value", raw)),
                       "address": normalize_address(address), "entrypoint": entrypoint})
        else:
            err.print(f"submitted {submission_id}; follow it with `pixark jobs logs {submission_id} --follow`",
                      highlight=False)
            sys.stdout.write(submission_id + "\n")
        return

    err.print(f"submitted {submission_id}: {entrypoint}", highlight=False, soft_wrap=True)
    try:
        started = time.monotonic()
        if logs:
            follow_logs(client, submission_id, timeout=timeout)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        status = wait_terminal(client, submission_id, left)
    except KeyboardInterrupt:
        err.print(f"stopped waiting; the job keeps running. `pixark jobs stop {submission_id}` ends it.",
                  highlight=False)
        raise typer.Exit(130)
    doc = job_doc(client, submission_id)
    doc["address"] = normalize_address(address)
    if status not in TERMINAL:
        if json_out:
            emit_json(doc)
        raise fail(f"job {submission_id} still {status} after {timeout:g}s; it keeps running "
                   f"(`pixark jobs stop {submission_id}` ends it)", code=2)
    report_end(doc)
    if json_out:
        emit_json(doc)
    code = exit_code_for(doc)
    if code:
        raise typer.Exit(code)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(submit)
