"""Hostile source trees (issue 26): a name that is not UTF-8 aborted the whole archive job, symlinks and FIFOs were
skipped without a word, and a 254-byte name archived but could not be restored."""

from __future__ import annotations

import io
import os

import fsspec
import numpy as np
import pytest
from PIL import Image

from pixark import codec as pc
from pixark.pipeline import store
from pixark.pipeline.sources import list_sources

LONG = "l" * 250 + ".png"  # 254 bytes: the longest name most filesystems allow is 255
BAD = b"caf\xe9.png"  # Latin-1 bytes: not UTF-8 (Python holds the byte as a surrogate escape)
BAD_ID = "caf\uf7e9.png"  # how pixark carries that name (store.text_name)
RESERVED = "pua\uf7e9.png"  # a valid UTF-8 name that holds a character pixark reserves for such bytes


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def hostile_tree(root) -> None:
    (root / "src" / "sub").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "target.png").write_bytes(_png(1))
    (root / "src" / "plain.png").write_bytes(_png(2))
    (root / "src" / LONG).write_bytes(_png(3))
    with open(os.path.join(os.fsencode(root / "src"), BAD), "wb") as f:
        f.write(_png(4))
    (root / "src" / RESERVED).write_bytes(_png(5))
    os.symlink(root / "elsewhere" / "target.png", root / "src" / "link.png")
    os.symlink(root / "elsewhere", root / "src" / "linked-folder")
    os.symlink(root / "nowhere", root / "src" / "dangling.png")
    os.mkfifo(root / "src" / "sub" / "pipe")


def test_listing_follows_file_symlinks_and_names_what_it_skips(tmp_path):
    hostile_tree(tmp_path)
    skipped: list[dict] = []
    objs = list_sources(fsspec.filesystem("file"), str(tmp_path / "src"), skipped=skipped)
    assert [o.image_id for o in objs] == sorted([LONG, "link.png", "plain.png", BAD_ID])
    assert next(o for o in objs if o.image_id == "link.png").size == len(_png(1))
    bad = next(o for o in objs if o.image_id == BAD_ID)
    assert bad.path.encode() and bad.url.encode()  # text that Parquet and terminals take
    assert store.os_name(fsspec.filesystem("file"), bad.path) == os.fsdecode(os.path.join(os.fsencode(tmp_path / "src"), BAD))
    reasons = {e["image_id"]: e["reason"] for e in skipped}
    assert set(reasons) == {RESERVED, "dangling.png", "linked-folder", "sub/pipe"}
    assert "U+F780..U+F7FF" in reasons[RESERVED] and "FIFO" in reasons["sub/pipe"]
    assert "folder" in reasons["linked-folder"] and "dangling" in reasons["dangling.png"]
    # the globs apply before anything is reported: an excluded FIFO is nobody's business
    skipped.clear()
    list_sources(fsspec.filesystem("file"), str(tmp_path / "src"), exclude=("sub/*",), skipped=skipped)
    assert "sub/pipe" not in {e["image_id"] for e in skipped}


def test_no_follow_reports_file_symlinks_too(tmp_path):
    hostile_tree(tmp_path)
    skipped: list[dict] = []
    objs = list_sources(fsspec.filesystem("file"), str(tmp_path / "src"), skipped=skipped, follow_links=False)
    assert [o.image_id for o in objs] == sorted([LONG, "plain.png", BAD_ID])
    assert {e["image_id"]: e["reason"] for e in skipped}["link.png"] == "symlink to a file: not followed (--no-follow)"


def test_cli_offers_no_follow():
    from typer.testing import CliRunner

    from pixark.jobs.cli import app

    out = CliRunner().invoke(app, ["archive", "--help"])
    assert out.exit_code == 0 and "--no-follow" in out.output


def test_atomic_write_of_a_254_byte_name(tmp_path):
    """The temporary name was '.NAME.<32 hex>.part': over 255 bytes for long names."""
    path = str(tmp_path / LONG)
    store.put_bytes(fsspec.filesystem("file"), path, b"data")
    assert open(path, "rb").read() == b"data" and os.listdir(tmp_path) == [LONG]


@pytest.mark.ray
def test_archive_and_restore_a_hostile_tree(ray_session, tmp_path):
    from pixark.jobs.archive import archive
    from pixark.pipeline.restore import restore

    from pixark.pipeline.verify import verify

    hostile_tree(tmp_path)
    s = archive(str(tmp_path / "src"), str(tmp_path / "archive"), workers=1)
    assert s["images"] == 4 and s["failed"] == 0
    assert {e["image_id"] for e in s["skipped"]} == {RESERVED, "dangling.png", "linked-folder", "sub/pipe"}
    v = verify(str(tmp_path / "archive"), against_source=True)
    assert v["ok"] and v["records"] == 4, v  # the name that is not UTF-8 is read back from its source too
    for attempt in range(2):  # the second restore finds every output intact, the Latin-1 name included
        r = restore(str(tmp_path / "archive"), str(tmp_path / "out"))
        assert r["ok"] and r["written"] == (4 if attempt == 0 else 0), r
    out = os.fsencode(tmp_path / "out")
    assert set(os.listdir(out)) == {os.fsencode(LONG), b"link.png", b"plain.png", BAD}  # the original bytes
    for name, src in ((os.fsencode(LONG), tmp_path / "src" / LONG), (b"link.png", tmp_path / "elsewhere" / "target.png"),
                      (BAD, os.path.join(os.fsencode(tmp_path / "src"), BAD))):
        with open(os.path.join(out, name), "rb") as f, open(src, "rb") as g:
            assert pc.load(f.read()).pixel_sha256() == pc.load(g.read()).pixel_sha256()


@pytest.mark.ray
def test_strict_archive_exits_2_when_the_listing_skipped_entries(tmp_path):
    """A FIFO or a name with reserved characters is reported and left out; a --strict run must not end with exit 0."""
    import subprocess
    import sys

    hostile_tree(tmp_path)
    cmd = [sys.executable, "-m", "pixark.jobs.cli", "archive", str(tmp_path / "src"), str(tmp_path / "arc"),
           "--workers", "1", "--codec", "png"]
    proc = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "4 entries under the source were not archived" in proc.stderr, proc.stderr
    assert RESERVED in proc.stdout + proc.stderr  # named
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == 0  # rerun, not strict
