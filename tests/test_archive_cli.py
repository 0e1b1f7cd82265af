"""`pixark archive` as users run it (subprocess, joining the session's Ray), and the demo's building blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import ray

from archive_helpers import odd_source, write_tree


@pytest.fixture
def source(tmp_path, dev_images):
    files = odd_source(dev_images)
    write_tree(tmp_path / "src", files)
    return tmp_path / "src", files


def _pixark(*args, env=None):
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, **(env or {}))
    out = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", *args], env=env, capture_output=True, text=True,
                         timeout=600)
    out.stderr = " ".join(out.stderr.split())  # rich wraps lines at the terminal width
    return out


def test_cli_json_summary_strict_exit_code_and_one_line_errors(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "arc dir ü"
    out = _pixark("archive", str(src), str(dest), "--shard-size", "30kB", "--json", "--exclude", "broken/*",
                  "--codec", "jxl-ll")
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout)  # exactly one JSON document on stdout
    assert s["status"] == "complete" and s["images"] == len(files) - 2 and s["failed"] == 0
    assert "complete:" in out.stderr and "ratio" in out.stderr  # with --json the human summary goes to stderr
    assert "Token authentication" not in out.stderr  # Ray's warning about its default, on every command

    # Damaged sources are kept as original bytes: named by that state, exit non-zero only with --strict.
    out = _pixark("archive", str(src), str(tmp_path / "b"), "--shard-size", "30kB", "--codec", "jxl-ll")
    assert out.returncode == 0 and "kept_unreadable broken/truncated.png" in out.stdout  # the summary is the result
    assert "2 kept as original bytes, 0 failed" in out.stdout and "failed broken" not in out.stdout
    out = _pixark("archive", str(src), str(tmp_path / "b"), "--strict")
    assert out.returncode != 0 and "already a complete archive" in out.stdout and "--strict" in out.stderr

    for args, reason in ((["archive", str(tmp_path / "missing"), str(tmp_path / "c")], "does not exist"),
                         (["archive", str(src), str(tmp_path / "c"), "--codec", "nope"], "bad --codec"),
                         (["archive", str(src), str(tmp_path / "c"), "--shard-size", "big"], "bad size")):
        out = _pixark(*args)
        assert out.returncode != 0 and reason in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_demo_stages_scikit_image_samples_and_compares_restores(tmp_path):
    from pixark.jobs.demo import compare_restored, sample_images, stage_source

    src, n, nbytes = stage_source(tmp_path)
    kinds = {p.parent.name for p in src.rglob("*") if p.is_file()}
    assert n == len(sample_images()) >= 10 and kinds >= {"png", "jpeg", "gif", "tiff"}
    restored = tmp_path / "restored"
    for f in src.rglob("*"):
        if f.is_file():
            (restored / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (restored / f.relative_to(src)).write_bytes(f.read_bytes())
    victim = next(restored.rglob("*.png"))
    victim.unlink()
    c = compare_restored(src, restored)
    assert c == {"same_bytes": n - 1, "same_pixels": n - 1, "missing": 1}


@pytest.mark.slow
def test_demo_end_to_end(ray_session, tmp_path):
    """`pixark demo`'s job on the session's Ray: every sample image archived, and verify/restore/audit (where this
    build has them) agree."""
    from pixark.jobs.demo import run_demo, sample_images

    doc = run_demo(str(tmp_path / "demo"), quiet=True)
    a = doc["steps"]["archive"]
    assert a["images"] == len(sample_images()) and a["failed"] == 0, a["failures"]
    assert (tmp_path / "demo" / "archive" / "archive.json").exists()
    for step in ("verify", "restore", "audit"):
        assert "error" not in doc["steps"][step], doc["steps"][step]
    if "compared_with_source" in doc["steps"]["restore"]:
        c = doc["steps"]["restore"]["compared_with_source"]
        assert c["same_pixels"] == a["images"] and c["missing"] == 0
    assert doc["ok"]
