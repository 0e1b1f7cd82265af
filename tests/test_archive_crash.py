"""Crash safety: kill -9 of the whole job mid-run then rerun; a worker process killed mid-shard; retries spent.

The runs are slowed with the PIXARK_TEST_SLOW_SECONDS hook (a sleep per object in the workers) so that the kills
land mid-run deterministically: each test waits for a concrete state (a manifest part committed, a worker busy)
before killing, and asserts on what the archive holds afterwards, never on timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import pytest
import ray

from archive_helpers import check_archive, odd_source, write_tree
from pixark.pipeline.archive import ArchiveConfig, Events, run_archive
from pixark.pipeline.errors import WorkerLost

LOCAL = fsspec.filesystem("file")


@pytest.fixture
def source(tmp_path, dev_images):
    files = odd_source(dev_images)
    write_tree(tmp_path / "src", files)
    return tmp_path / "src", files


def _wait_for(cond, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kill9_then_rerun(src_url: str, dest_url: str, fs, dest_root: str, files: dict, extra_env: dict | None = None):
    """Run `pixark archive` as a subprocess, kill -9 its whole process group once the first shard is committed
    (its manifest part is visible), rerun the same command, and check the archive."""
    import pyarrow.parquet as pq

    from pixark.pipeline import store

    def parts():
        return [p for p in store.list_now(fs, f"{dest_root}/manifests") if p.endswith(".parquet")]

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PIXARK_TEST_SLOW_SECONDS="0.25",
               **(extra_env or {}))
    cmd = [sys.executable, "-m", "pixark.jobs.cli", "archive", src_url, dest_url, "--shard-size", "12kB",
           "--workers", "2", "--codec", "png"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: len(parts()) >= 1 or proc.poll() is not None, what="the first manifest part")
        assert proc.poll() is None, f"job ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job: driver and anything it started in its session
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = parts()
    with fs.open(f"{dest_root}/plan/plan-000000.parquet", "rb") as f:
        plan = json.loads(pq.read_schema(f).metadata[b"pixark.plan"])
    assert not store.exists_now(fs, f"{dest_root}/archive.json") and 1 <= len(done_before) < len(plan["shards"])

    env.pop("PIXARK_TEST_SLOW_SECONDS")
    out = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout)
    assert s["status"] == "resumed" and s["shards_resumed"] == len(done_before)
    assert s["shards_written"] == len(plan["shards"]) - len(done_before)
    assert "resuming" in out.stderr
    check_archive(fs, dest_root, files)
    assert not [p for p in store.list_now(fs, dest_root) if p.endswith(".part") or "/.pixark-tmp/" in p]


def test_kill9_of_the_whole_job_then_rerun_finishes_without_duplicates(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "archive"
    _kill9_then_rerun(str(src), str(dest), LOCAL, str(dest), files)


@pytest.mark.s3
def test_kill9_then_rerun_on_s3(ray_session, s3, s3_server, source):
    fs, bucket = s3
    src, files = source
    fs.put(str(src) + "/", f"{bucket}/src/", recursive=True)
    _kill9_then_rerun(f"s3://{bucket}/src", f"s3://{bucket}/archive", fs, f"{bucket}/archive", files,
                      s3_server["env"])


class KillOnce(Events):
    """Kills one worker process (SIGKILL) when the first batch comes back: the other batches are still in flight."""

    def __init__(self):
        self.pool: list[dict] = []
        self.killed: int | None = None

    def workers_ready(self, pool):
        self.pool = pool

    def advance(self, images, source_bytes, out_bytes):
        if self.killed is None:
            self.killed = self.pool[-1]["pid"]
            os.kill(self.killed, signal.SIGKILL)


def test_worker_killed_mid_shard_is_restarted_and_its_batch_retried(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "archive"
    events = KillOnce()
    cfg = ArchiveConfig(src=str(src), dest=str(dest), codec="png", shard_size=12_000, workers=2, slow_seconds=0.2,
                        batch_items=2)
    s = run_archive(cfg, events)
    assert s["status"] == "complete" and events.killed
    rows = check_archive(LOCAL, str(dest), files)
    before = {p["worker"] for p in events.pool}
    # The restarted actor is a new process: rows it coded name a worker that was not in the pool before the kill.
    assert {r["worker"] for r in rows} - before, {r["worker"] for r in rows}


def test_lost_worker_with_no_retries_left_is_a_clear_failure_and_rerun_finishes(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "archive"
    cfg = ArchiveConfig(src=str(src), dest=str(dest), codec="png", shard_size=12_000, workers=1, slow_seconds=0.2,
                        max_restarts=0)
    with pytest.raises(WorkerLost, match="retry budget.*rerun the same command"):
        run_archive(cfg, KillOnce())
    assert not (dest / "archive.json").exists()
    s = run_archive(ArchiveConfig(src=str(src), dest=str(dest), codec="png", shard_size=12_000, workers=2))
    assert s["status"] in ("complete", "resumed")
    check_archive(LOCAL, str(dest), files)
