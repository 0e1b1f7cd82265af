"""A real two-node Ray cluster on this machine, driven only through the Jobs API and the `pixark` CLI.

The cluster is two `ray start --block` processes (head with the dashboard, and a worker joining it over loopback),
each with its own temp dir, ports and custom resource (`node_head`, `node_worker`), so it shares nothing with the
`ray.init()` other tests make in this pytest process. This process never calls ray.init: everything goes through
`pixark submit` / `pixark jobs` subprocesses. Teardown ends exactly the processes the fixture started (the two
`ray start` processes and their descendants, by pid), never `ray stop`, which would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from pixark.jobs import submit as sub

pytestmark = pytest.mark.ray

# `ray` as this interpreter's module, not whatever `ray` is first on PATH (a pyenv shim, another venv).
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
START_TIMEOUT = 120  # bounded wait for GCS, dashboard and both nodes; a 2-core box under load needs a while
JOB_TIMEOUT = 150


# ---------------------------------------------------------------------------------------------------------------
# Pure parts of `pixark submit`: no cluster needed


def test_pass_through_env_takes_values_not_local_paths():
    environ = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_PROFILE": "dev",
               "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials", "FSSPEC_S3_ENDPOINT_URL": "http://s3:9000",
               "PIXARK_LOG": "debug", "AWS_SESSION_TOKEN": "", "HOME": "/root"}
    assert sub.pass_through_env(environ) == {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                                             "FSSPEC_S3_ENDPOINT_URL": "http://s3:9000", "PIXARK_LOG": "debug"}


def test_runtime_env_merge_order_and_shipping(tmp_path):
    base = {"env_vars": {"A": "from-file", "B": 2}, "py_modules": ["s3://bucket/extra.zip"], "pip": ["tqdm"]}
    shipped = sub.package_tree(tmp_path)
    renv = sub.build_runtime_env(base, working_dir=str(tmp_path), ship_package=shipped,
                                 env={"A": "passed", "C": "passed"})
    assert renv["env_vars"] == {"A": "from-file", "B": "2", "C": "passed"}
    assert renv["py_modules"] == ["s3://bucket/extra.zip", str(shipped)]
    assert renv["pip"] == ["tqdm"] and renv["working_dir"] == str(tmp_path.resolve())
    # The shipped tree is one importable package with every subpackage inside it, whatever the install layout.
    for name in ("codec", "pipeline", "jobs"):
        assert (shipped / name / "__init__.py").is_file(), name
    assert not list(shipped.rglob("__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import pixark.jobs.submit, pixark.codec; print(pixark.__file__)"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == str(shipped / "__init__.py")


def test_redact_hides_secret_values_only():
    renv = {"env_vars": {"AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "y", "AWS_REGION": "eu-west-1"}}
    assert sub.redact(renv)["env_vars"] == {"AWS_SECRET_ACCESS_KEY": "***", "AWS_SESSION_TOKEN": "***",
                                            "AWS_REGION": "eu-west-1"}
    assert renv["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "x"  # the caller's dict is untouched


def test_entrypoint_quotes_arguments():
    assert sub.entrypoint_for("archive", ["s3://b/my photos", "out dir", "--codec", "auto"]) == \
        "python -m pixark.jobs.cli archive 's3://b/my photos' 'out dir' --codec auto"
    assert sub.entrypoint_for("exec", ["python", "-c", "print('hi')"]) == "python -c 'print('\"'\"'hi'\"'\"')'"


def test_bad_input_gives_one_line_errors():
    port = _free_port()
    cases = [
        (["submit", "exec", "--", "true"], "no cluster address"),
        (["submit", "nonsense", "--address", "http://127.0.0.1:1"], "unknown job 'nonsense'"),
        (["submit", "exec", "--address", "ray://head:10001", "--", "true"], "must be the Ray dashboard URL"),
        (["submit", "exec", "--address", f"http://127.0.0.1:{port}", "--", "true"], "cannot reach the Ray Jobs API"),
        (["jobs", "list", "--address", f"127.0.0.1:{port}"], "cannot reach the Ray Jobs API"),
        (["submit", "exec", "--env", "NOEQUALS", "--address", "http://127.0.0.1:1", "--", "true"], "KEY=VALUE"),
        # Job arguments are parsed by this build's own command before anything is sent.
        (["submit", "archive", "s3://a/src", "s3://a/dst", "--codek", "png", "-a", "http://127.0.0.1:1"],
         "No such option: --codek"),
        (["submit", "verify", "-a", "http://127.0.0.1:1"], "Missing argument"),
        (["submit", "archive", "photos", "/abs/out", "-a", "http://127.0.0.1:1"], "'photos' is a relative local path"),
        (["submit", "archive", "-a", "http://127.0.0.1:1", "--", "--help"], "see `pixark archive --help`"),
    ]
    # In-process (typer's runner): these fail before any cluster work, and a subprocess each would cost seconds.
    from typer.testing import CliRunner

    from pixark.jobs.cli import app

    for args, expected in cases:
        res = CliRunner().invoke(app, args, env={"RAY_API_SERVER_ADDRESS": None, "RAY_ADDRESS": None})
        assert res.exit_code != 0, args
        assert expected in res.stderr, (args, res.stderr)
        assert res.exception is None or isinstance(res.exception, SystemExit), (args, res.exception)


# ---------------------------------------------------------------------------------------------------------------
# The cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLUSTER_ENV: dict[str, str] = {}  # the test cluster's auth settings, once the fixture has made them


def _clean_env(**extra) -> dict:
    """This process's environment without anything that would point Ray or the CLI at another cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.update(CLUSTER_ENV)
    env.update(extra)
    return env


def pixark(*args, env=None, timeout=JOB_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixark.jobs.cli", *args], capture_output=True, text=True,
                          env=env or _clean_env(), timeout=timeout)


def _descendants(root: int) -> list[int]:
    """Every process below ROOT, from /proc (parent links), so teardown can end exactly those."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _end_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` process (it shuts its node down), then SIGKILL whatever of its tree is left."""
    tree = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    for pid in tree:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _get_json(url: str):
    headers = {"Authorization": "Bearer " + CLUSTER_ENV["RAY_AUTH_TOKEN"]} if "RAY_AUTH_TOKEN" in CLUSTER_ENV else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.load(resp)


def _alive_nodes(dashboard: str) -> list[dict]:
    doc = _get_json(f"{dashboard}/api/v0/nodes?limit=100")
    return [n for n in doc["data"]["result"]["result"] if n["state"] == "ALIVE"]


class Cluster:
    def __init__(self, dashboard: str, head_dir: Path, worker_dir: Path, nodes: list[dict]):
        self.dashboard, self.head_dir, self.worker_dir = dashboard, head_dir, worker_dir
        self.node_ids = {("head" if "node_head" in n["resources_total"] else "worker"): n["node_id"] for n in nodes}


def _node_flags(temp_dir: Path) -> list[str]:
    # Every port a node opens is chosen here: defaults such as the agent's 52365 would collide with the second node
    # and with any other Ray on this machine.
    return ["--num-cpus=1", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            "--node-ip-address=127.0.0.1", "--object-store-memory=200000000",
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]


@pytest.fixture(scope="module")
def cluster():
    # Short paths under /tmp: Ray's unix sockets live in the temp dir and socket paths are limited to 107 bytes.
    head_dir = Path(tempfile.mkdtemp(prefix="pxh-", dir="/tmp"))
    worker_dir = Path(tempfile.mkdtemp(prefix="pxw-", dir="/tmp"))
    gcs_port, dash_port = _free_port(), _free_port()
    dashboard = f"http://127.0.0.1:{dash_port}"
    # Ray 2.60 turns token authentication on for a head started where ~/.ray/auth_token exists (any local
    # ray.init() creates it) but not for a joining worker: give this cluster its own token, set on every node and
    # handed to the CLI like a user would (RAY_AUTH_TOKEN), so it neither depends on nor touches ~/.ray.
    CLUSTER_ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env = _clean_env()
    procs: list[subprocess.Popen] = []
    try:
        with open(head_dir / "ray-start.log", "w") as log:
            procs.append(subprocess.Popen(
                [*RAY_CLI, "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
                 "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--ray-client-server-port={_free_port()}",
                 '--resources={"node_head": 1}', *_node_flags(head_dir)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait(lambda: _port_open(gcs_port), "the head's GCS", procs)
        with open(worker_dir / "ray-start.log", "w") as log:
            procs.append(subprocess.Popen(
                [*RAY_CLI, "start", f"--address=127.0.0.1:{gcs_port}", '--resources={"node_worker": 1}',
                 *_node_flags(worker_dir)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait(lambda: _get_json(f"{dashboard}/api/version"), "the dashboard", procs)
        _wait(lambda: len(_alive_nodes(dashboard)) == 2, "both nodes", procs)
        yield Cluster(dashboard, head_dir, worker_dir, _alive_nodes(dashboard))
    finally:
        CLUSTER_ENV.clear()
        for proc in reversed(procs):
            _end_tree(proc)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(worker_dir, ignore_errors=True)


def _temp_dir_of(proc: subprocess.Popen) -> str:
    return next(a.split("=", 1)[1] for a in proc.args if a.startswith("--temp-dir="))


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait(check, what: str, procs) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                log = Path(_temp_dir_of(p)) / "ray-start.log"
                raise RuntimeError(f"`ray start` exited with {p.returncode} while waiting for {what}:\n"
                                   + log.read_text()[-3000:])
        try:
            if check():
                return
        except Exception as exc:  # not up yet: connection refused, 503 while the dashboard starts
            last = exc
        time.sleep(1)
    raise RuntimeError(f"{what} not up after {START_TIMEOUT}s (last error: {last})")


# A probe run as a job: one task pinned to each node by its custom resource, each reporting where it ran, which
# pixark it imported and the environment the job passed it.
PROBE = r"""
import json, os, ray
ray.init()

@ray.remote(num_cpus=0)
def where():
    import pixark
    return {"node": ray.get_runtime_context().get_node_id(), "pixark": pixark.__file__,
            "endpoint": os.environ.get("FSSPEC_S3_ENDPOINT_URL"), "probe": os.environ.get("PIXARK_PROBE")}

refs = [where.options(resources={"node_head": 0.01}).remote(), where.options(resources={"node_worker": 0.01}).remote()]
print("PROBE " + json.dumps(ray.get(refs)))
"""


def test_exec_job_runs_on_both_nodes_with_shipped_code_and_env(cluster, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    env = _clean_env(FSSPEC_S3_ENDPOINT_URL="http://127.0.0.1:9", PIXARK_PROBE="passed-through",
                     AWS_SECRET_ACCESS_KEY="not-for-printing")
    res = pixark("submit", "exec", "--address", cluster.dashboard, "--working-dir", str(tmp_path), "--json",
                 "--timeout", str(JOB_TIMEOUT - 20), "--", "python", "probe.py", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["status"] == "SUCCEEDED" and doc["entrypoint"] == "python probe.py"
    assert doc["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "***"
    assert "not-for-printing" not in res.stdout + res.stderr
    assert "PROBE [" in res.stderr  # the job's log was streamed while submit waited

    logs = pixark("jobs", "logs", doc["job_id"], "--address", cluster.dashboard, "--json")
    assert logs.returncode == 0, logs.stderr
    line = next(ln for ln in json.loads(logs.stdout)["logs"].splitlines() if ln.startswith("PROBE "))
    reports = json.loads(line[len("PROBE "):])
    assert [r["node"] for r in reports] == [cluster.node_ids["head"], cluster.node_ids["worker"]]
    for r in reports:
        # The shipped copy (runtime_env py_modules), not the editable checkout this test runs from.
        assert "runtime_resources" in r["pixark"] and "py_modules_files" in r["pixark"], r["pixark"]
        assert r["endpoint"] == "http://127.0.0.1:9" and r["probe"] == "passed-through"


def test_no_wait_then_status_wait_gives_the_drivers_exit_code(cluster):
    res = pixark("submit", "exec", "--address", cluster.dashboard, "--no-ship", "--no-wait", "--",
                 "python", "-c", "import sys; print('about to fail'); sys.exit(3)")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()  # --no-wait prints the id alone on stdout, for scripts
    assert job_id.startswith("pixark-exec-") and "\n" not in job_id

    status = pixark("jobs", "status", job_id, "--wait", "--json", "--address", cluster.dashboard)
    assert status.returncode == 3, status.stderr
    doc = json.loads(status.stdout)
    assert doc["status"] == "FAILED" and doc["driver_exit_code"] == 3
    # Following a finished job prints its whole log and returns.
    logs = pixark("jobs", "logs", job_id, "--follow", "--address", cluster.dashboard)
    assert logs.returncode == 0 and "about to fail" in logs.stdout, logs.stderr


def test_timeout_list_stop(cluster):
    # Waiting is bounded by --timeout: exit 2, and the job still runs.
    res = pixark("submit", "exec", "--address", cluster.dashboard, "--no-ship", "--job-id", "pixark-test-sleeper",
                 "--timeout", "2", "--json", "--", "python", "-c", "import time; time.sleep(300)")
    assert res.returncode == 2 and "keeps running" in res.stderr, res.stderr
    assert json.loads(res.stdout)["status"] in ("PENDING", "RUNNING")

    listed = json.loads(pixark("jobs", "list", "--address", cluster.dashboard, "--pixark-only", "--json").stdout)
    mine = [j for j in listed["jobs"] if j["job_id"] == "pixark-test-sleeper"]
    assert len(mine) == 1 and mine[0]["metadata"]["pixark_job"] == "exec"
    assert mine[0]["status"] in ("PENDING", "RUNNING")

    again = pixark("submit", "exec", "--address", cluster.dashboard, "--no-ship", "--no-wait", "--job-id",
                   "pixark-test-sleeper", "--", "true")
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr

    stopped = pixark("jobs", "stop", "pixark-test-sleeper", "--address", cluster.dashboard, "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "STOPPED"

    missing = pixark("jobs", "status", "no-such-job", "--address", cluster.dashboard)
    assert missing.returncode != 0 and "no job 'no-such-job'" in missing.stderr and "Traceback" not in missing.stderr


def test_client_without_the_cluster_token_gets_a_clear_error(cluster):
    env = _clean_env()
    env.pop("RAY_AUTH_TOKEN")
    env.update(HOME=str(cluster.worker_dir))  # no ~/.ray/auth_token there either
    res = pixark("jobs", "list", "--address", cluster.dashboard, env=env)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "cannot reach the Ray Jobs API" in res.stderr and "token" in res.stderr.lower(), res.stderr


# ---------------------------------------------------------------------------------------------------------------
# archive then verify, S3 to S3, as cluster jobs


def _codec_worker_nodes(dashboard: str) -> dict[int, str]:
    """pid -> node id of every CodecWorker actor the cluster has run (Ray keeps dead actors in its state API)."""
    url = (f"{dashboard}/api/v0/actors?detail=true&limit=10000&filter_keys=class_name&filter_predicates=%3D"
           "&filter_values=CodecWorker")
    return {a["pid"]: a["node_id"] for a in _get_json(url)["data"]["result"]["result"] if a.get("pid")}


def _commands() -> set[str]:
    from pixark.jobs.cli import app

    return {(c.name or c.callback.__name__).replace("_", "-") for c in app.registered_commands}


@pytest.mark.s3
def test_archive_then_verify_on_two_nodes_s3_to_s3(cluster, s3, s3_server):
    missing = {"archive", "verify"} - _commands()
    if missing:
        pytest.skip(f"this build has no `pixark {' / '.join(sorted(missing))}` yet")
    import pyarrow.parquet as pq
    from images import photos, png_bytes
    from PIL import Image
    import io
    import numpy as np

    fs, bucket = s3
    names = []
    for name, data in photos(3):
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for corner, crop in (("tl", arr[:48, :48]), ("br", arr[-48:, -48:])):
            key = f"{bucket}/src/{'nested dir/' if corner == 'br' else ''}{name} {corner}.png"
            fs.pipe(key, png_bytes(np.ascontiguousarray(crop)))
            names.append(key)
    fs.pipe(f"{bucket}/src/notes.txt", b"not an image, kept as bytes")
    src, dest = f"s3://{bucket}/src", f"s3://{bucket}/archive"

    # The moto endpoint and its dummy credentials reach the cluster only through submit's env pass-through.
    env = _clean_env()
    assert env["FSSPEC_S3_ENDPOINT_URL"] == s3_server["endpoint_url"]
    # Tiny shards give one batch per image, so both codec workers (one CPU each, one per node) get work. A classical
    # codec keeps this about the cluster (learned codecs are tested on their own and cost minutes on 2 CPUs).
    res = pixark("submit", "archive", src, dest, "--codec", "png", "--workers", "2", "--shard-size", "1KB", "--address",
                 cluster.dashboard, "--timeout", str(JOB_TIMEOUT - 20), "--json", env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    doc = json.loads(res.stdout)
    assert doc["status"] == "SUCCEEDED" and doc["entrypoint"].startswith("python -m pixark.jobs.cli archive ")
    assert doc["runtime_env"]["env_vars"]["FSSPEC_S3_ENDPOINT_URL"] == s3_server["endpoint_url"]
    assert doc["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "***"

    fs.invalidate_cache()
    table = pq.ParquetDataset(f"{bucket}/archive/manifests", filesystem=fs).read().to_pylist()
    assert sorted(r["source_url"] for r in table) == sorted(f"s3://{k}" for k in names + [f"{bucket}/src/notes.txt"])
    assert all(r["status"] == "ok" for r in table), [r["error"] for r in table if r["status"] != "ok"]
    # Which node coded each row: the manifest's worker is host:pid; Ray's state API knows each actor's pid and node.
    pid_node = _codec_worker_nodes(cluster.dashboard)
    nodes = {pid_node[int(r["worker"].rsplit(":", 1)[1])] for r in table}
    assert nodes == {cluster.node_ids["head"], cluster.node_ids["worker"]}
    assert {r["device"] for r in table} == {"cpu"}

    res = pixark("submit", "verify", dest, "--address", cluster.dashboard, "--timeout", str(JOB_TIMEOUT - 20),
                 "--json", env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads(res.stdout)["status"] == "SUCCEEDED"
    summary = json.loads(fs.cat_file(f"{bucket}/archive/verify/summary.json"))
    assert summary["ok"] is True and summary["mismatches"] == 0 and not summary["problems"]
    assert summary["records_checked"] == len(table) == len(names) + 1


# ---------------------------------------------------------------------------------------------------------------
# The GPU path: runs only where CUDA exists (a GPU worker node, a GPU CI runner); skipped here with the reason.


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


needs_cuda = pytest.mark.skipif(_cuda_devices() == 0, reason="no CUDA device on this machine "
                                "(torch.cuda.is_available() is False): the GPU path is tested where one exists")


@needs_cuda
def test_gpu_archive_runs_one_worker_per_gpu(tmp_path):
    """A local Ray sees every GPU; `pixark archive` with no --workers starts one codec worker per GPU, each holding
    its own device, and every row says which one coded it. (The row's device is the GPU Ray gave the worker; that
    the codec's model then runs on it is the codec API's part, checked for msr by the next test.)"""
    from images import photos, png_bytes
    from PIL import Image
    import io
    import numpy as np
    import pyarrow.parquet as pq

    n_gpus = _cuda_devices()
    src = tmp_path / "src"
    src.mkdir()
    k = 0
    for name, data in photos(3):
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for i in range(2 * n_gpus):  # at least two one-image shards per worker, so every worker gets work
            (src / f"{name}-{i}.png").write_bytes(png_bytes(np.ascontiguousarray(arr[i * 8:i * 8 + 48, :48])))
            k += 1
    env = _clean_env()
    res = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "archive", str(src), str(tmp_path / "arc"),
                          "--shard-size", "1KB", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = pq.ParquetDataset(str(tmp_path / "arc" / "manifests")).read().to_pylist()
    assert len(rows) == k and all(r["status"] == "ok" for r in rows)
    devices = {r["device"] for r in rows}
    assert devices == {f"cuda:{i}" for i in range(n_gpus)}, devices  # one worker per GPU, each on its own
    assert len({r["worker"] for r in rows}) == n_gpus


@needs_cuda
def test_gpu_msr_matches_cpu_bit_for_bit_whatever_precision_the_process_chose():
    """The learned codec's CUDA path is integer arithmetic (int8 products, int64 requantization): a process that
    asked for TF32 and cuDNN autotuning through torch's newer precision API (which the old legacy-flag guard could
    not even read) gets the CPU's bitstream and pixels exactly."""
    import numpy as np
    from images import photo_array
    from precision import reduced_precision

    from pixark.codec.msr import coder, model as M

    if not M.STORE.exists(M.DEFAULT_PROFILE):
        pytest.skip(f"msr profile {M.DEFAULT_PROFILE!r} has no shipped weights in this build")
    net, _ = M.STORE.load(M.DEFAULT_PROFILE)
    pixels = photo_array(64)
    with reduced_precision():
        gpu_net = net.on_device("cuda")
        stream_gpu = coder.encode(pixels, gpu_net, 90, 5, 2, device="cuda")
        back_gpu = coder.decode(stream_gpu, gpu_net, device="cuda")
    stream_cpu = coder.encode(pixels, net, 90, 5, 2)
    assert stream_gpu == stream_cpu
    assert np.array_equal(back_gpu, pixels) and np.array_equal(coder.decode(stream_cpu, net), pixels)


def test_workers_and_submitted_jobs_get_the_same_storage_settings():
    """One list, one rule: what `pixark submit` passes a job and what the archive passes its Ray workers are the
    same storage settings (values, never AWS_PROFILE or credential file paths); a job also gets PIXARK_*."""
    from pixark.pipeline.workers import storage_env

    environ = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_PROFILE": "dev", "AWS_CONFIG_FILE": "/home/me/.aws/config",
               "FSSPEC_S3_KEY": "k", "PIXARK_LOG": "debug", "AWS_REGION": ""}
    workers = storage_env(environ)
    assert workers == {"AWS_ACCESS_KEY_ID": "AKIA", "FSSPEC_S3_KEY": "k"}
    assert sub.pass_through_env(environ) == {**workers, "PIXARK_LOG": "debug"}


def test_one_line_of_an_error():
    """The one helper that turns an exception into a line for messages and manifest rows: a Ray or Jobs API
    traceback gives its last error line, other errors their first line, an empty one its type."""
    from pixark.pipeline.errors import one_line

    ray_text = "ray::CodecWorker.code() (pid=7, ip=10.0.0.2)\nTraceback (most recent call last):\n  File \"x.py\"\n" \
               "OSError: first\nDuring handling...\nValueError: the real cause\n"
    assert one_line(RuntimeError(ray_text)) == "ValueError: the real cause"
    assert one_line(RuntimeError(ray_text), bare=True) == sub.reason(RuntimeError(ray_text)) == "the real cause"
    assert one_line(ValueError("bad tile\nsecond line")) == "bad tile"
    assert one_line(KeyError()) == "KeyError" and len(one_line(ValueError("x" * 999))) == 300
