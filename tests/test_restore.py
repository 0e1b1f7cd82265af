"""`pixark restore` on archives made by the real archive job: local folders and the local S3 endpoint (moto), every
file back under its relative path in its original format with its metadata, ranged reads only, resumable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image
from fsspec.implementations.local import LocalFileSystem

from archive_helpers import crop_png, odd_source, write_tree
from pixark import codec as pc
from pixark.jobs.archive import archive
from pixark.pipeline import shards
from pixark.pipeline.restore import RestoreError, output_name, output_names, restore, safe_relative

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def made(ray_session, dev_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    files = odd_source(dev_images)
    write_tree(root / "src", files)
    s = archive(str(root / "src"), str(root / "archive"), shard_size="10kB", workers=2)
    assert s["shards"] >= 3
    return root / "archive", files


def assert_restored(out_files: dict[str, bytes], files: dict[str, bytes], format: str = "original") -> None:
    """Each output equals its source: the same bytes for files kept as bytes, else the same pixels, format and
    metadata (PNG when asked for png)."""
    for rel, data in files.items():
        src = pc.load(data)
        name = output_name({"image_id": rel, "pixel_sha256": src.pixel_sha256()}, format)
        assert name in out_files, f"{name} was not restored"
        got = out_files[name]
        if src.pixels is None:
            assert got == data, f"{rel}: stored file not byte-identical"
            continue
        back = pc.load(got)
        assert back.pixel_sha256() == src.pixel_sha256(), rel
        assert back.mode == src.mode, rel
        assert back.format == ("PNG" if format == "png" else src.format), rel
        assert back.metadata == src.metadata, rel


def local_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_restore_everything_locally_then_resume(made, tmp_path):
    arc, files = made
    out = tmp_path / "out"
    s = restore(str(arc), str(out))
    assert s["ok"] and s["selected"] == len(files) and s["written"] == len(files) and s["errors"] == []
    tree = local_tree(out)
    assert set(tree) == set(files)  # nothing else: no temp files left behind
    assert_restored(tree, files)
    # Sources that failed at archive time were kept as their original bytes and come back as they were.
    assert tree["broken/truncated.png"] == files["broken/truncated.png"] and tree["empty.png"] == b""

    # Resume and repair: a deleted output is written again; a truncated and a bit-flipped copy of a file kept as
    # bytes, a truncated and a bit-flipped re-encoded image, and a re-encoded image replaced by other pixels of
    # the same size are found by checking size and hash, and rewritten in place; the others are left alone.
    (out / "gifs" / "palette.gif").unlink()
    jpg = out / "photos" / "a photo ü.jpg"
    jpg.write_bytes(jpg.read_bytes()[:100])
    txt = out / "notes" / "readme.txt"
    txt.write_bytes(_flip(txt.read_bytes(), 5))
    pngs = sorted(k for k in files if k.endswith(".png") and pc.load(files[k]).pixels is not None
                  and not k.startswith("deep/"))
    cut, flip = out / pngs[0], out / pngs[1]
    cut.write_bytes(cut.read_bytes()[:-40])
    flip.write_bytes(_flip(flip.read_bytes(), len(flip.read_bytes()) // 2))
    grey = out / "deep" / "nested" / "dir" / "grey ☃.png"
    other = pc.load(grey.read_bytes())
    flipped = pc.DecodedImage(255 - other.pixels, mode=other.mode, format="PNG", metadata=other.metadata)
    grey.write_bytes(flipped.to_file("png"))
    damaged = {"photos/a photo ü.jpg", "notes/readme.txt", pngs[0], pngs[1], "deep/nested/dir/grey ☃.png"}

    # --skip-existing trusts what is there: only the missing file comes back.
    s = restore(str(arc), str(out), skip_existing=True)
    assert s["ok"] and s["written"] == 1 and s["repaired"] == 0 and s["skipped"] == len(files) - 1
    s = restore(str(arc), str(out))
    assert s["ok"] and s["repaired"] == len(damaged) and s["written"] == len(damaged)
    assert set(s["repaired_ids"]) == damaged and s["skipped"] == len(files) - len(damaged)
    assert_restored(local_tree(out), files)
    s = restore(str(arc), str(out))
    assert s["ok"] and s["written"] == 0 and s["skipped"] == len(files)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def test_select_by_glob_and_ids_and_png_format(made, tmp_path):
    arc, files = made
    s = restore(str(arc), str(tmp_path / "gifs"), include="gifs/*", format="png")
    assert s["ok"] and s["written"] == 1
    assert local_tree(tmp_path / "gifs").keys() == {"gifs/palette.png"}
    assert_restored(local_tree(tmp_path / "gifs"), {"gifs/palette.gif": files["gifs/palette.gif"]}, format="png")

    # A JPEG is kept as its bytes in the archive; --format png converts it (its decoded pixels as PNG). A text
    # file and a JPEG that did not decode at archive time have nothing to convert: they come back as they were.
    ids = tmp_path / "ids.txt"
    ids.write_text("photos/a photo ü.jpg\n# a comment\nnotes/readme.txt\nbroken/damaged.jpg\nnot/there.png\n",
                   encoding="utf-8")
    s = restore(str(arc), str(tmp_path / "some"), ids=str(ids), format="png")
    assert not s["ok"] and s["missing_ids"] == ["not/there.png"] and s["written"] == 3 and s["converted"] == 1
    some = local_tree(tmp_path / "some")
    assert set(some) == {"photos/a photo ü.png", "notes/readme.txt", "broken/damaged.jpg"}
    assert some["notes/readme.txt"] == files["notes/readme.txt"]
    assert some["broken/damaged.jpg"] == files["broken/damaged.jpg"]
    png = Image.open(io.BytesIO(some["photos/a photo ü.png"]))
    assert png.format == "PNG"
    assert np.array_equal(np.asarray(png), np.asarray(Image.open(io.BytesIO(files["photos/a photo ü.jpg"]))))
    assert restore(str(arc), str(tmp_path / "some"), ids=str(ids), format="png")["skipped"] == 3  # rerun: intact

    s = restore(str(arc), str(tmp_path / "both"), include=["deep/*", "*.txt"], ids=["notes/readme.txt"])
    assert s["written"] == 1 and local_tree(tmp_path / "both") == {"notes/readme.txt": files["notes/readme.txt"]}

    assert restore(str(arc), str(tmp_path / "none"), include="nope/*")["selected"] == 0
    with pytest.raises(RestoreError, match="--format"):
        restore(str(arc), str(tmp_path / "x"), format="tiff")
    ids.write_text("\n", encoding="utf-8")
    with pytest.raises(RestoreError, match="names no image ids"):
        restore(str(arc), str(tmp_path / "x"), ids=str(ids))
    rows = [{"image_id": i, "pixel_sha256": h} for i, h in
            (("a.gif", "1"), ("a.png", "2"), ("b.bmp", "3"), ("b.tga", "4"), ("c.bmp", "5"), ("d.jpg", None))]
    assert output_names(rows, "png") == {"a.gif": "a.gif.png", "a.png": "a.png", "b.bmp": "b.bmp.png",
                                         "b.tga": "b.tga.png", "c.bmp": "c.png", "d.jpg": "d.jpg"}
    assert output_names(rows, "original") == {r["image_id"]: r["image_id"] for r in rows}
    assert safe_relative("a/b.png") and not safe_relative("../etc/passwd") and not safe_relative("/abs.png")


class CountingFS(LocalFileSystem):
    """The local filesystem, recording every read of a shard object (to prove restore never downloads a shard)."""

    protocol = ("countfile",)
    reads: list[tuple[str, int | None, int | None]] = []
    _in_cat = False

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return LocalFileSystem._strip_protocol(path[len("countfile://"):] if path.startswith("countfile://") else path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        if "/shards/" in str(path):
            CountingFS.reads.append((str(path), start, end))
        self._in_cat = True  # the local cat_file opens the file itself: that open is this ranged read
        try:
            return super().cat_file(path, start=start, end=end, **kwargs)
        finally:
            self._in_cat = False

    def _open(self, path, mode="rb", **kwargs):
        if "/shards/" in str(path) and not self._in_cat:
            CountingFS.reads.append((str(path), None, None))  # any other open counts as a whole-object read
        return super()._open(path, mode=mode, **kwargs)


def test_restore_reads_only_the_records_it_needs(made, tmp_path):
    arc, files = made
    fsspec.register_implementation("countfile", CountingFS, clobber=True)
    CountingFS.reads.clear()
    s = restore(f"countfile://{arc}", str(tmp_path / "out"), ids=["gifs/palette.gif", "notes/readme.txt"])
    assert s["ok"] and s["written"] == 2
    meta = json.loads((arc / "archive.json").read_text())
    rows = {r["image_id"]: r for r in _manifest_rows(arc)}
    wanted = sum(rows[i]["length"] for i in ("gifs/palette.gif", "notes/readme.txt"))
    touched = {rows[i]["shard"] for i in ("gifs/palette.gif", "notes/readme.txt")}
    # plus each touched shard's header, trailer and index: restore checks every row against its shard's index
    indexes = [shards.read_index(LocalFileSystem(), str(arc / "shards" / name)) for name in touched]
    checks = sum(shards.HEADER_SIZE + shards.TRAILER_SIZE + i.shard_bytes - shards.TRAILER_SIZE - i.index_offset
                 for i in indexes)
    assert CountingFS.reads and all(start is not None and end is not None for _, start, end in CountingFS.reads)
    assert sum(end - start for _, start, end in CountingFS.reads) == wanted + checks
    assert wanted + checks < sum(sh["bytes"] for sh in meta["shards"] if sh["name"] in touched)


def _manifest_rows(arc: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for p in sorted((arc / "manifests").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.mark.s3
def test_s3_archive_restored_to_local_and_to_s3_on_ray(ray_session, s3, dev_images, tmp_path):
    fs, bucket = s3
    files = odd_source(dev_images)
    write_tree(tmp_path / "src", files)
    arc = f"s3://{bucket}/archive"
    s = archive(str(tmp_path / "src"), arc, shard_size="10kB", workers=2)
    assert s["images"] == len(files)

    # To a local folder, on Ray workers (local_limit=0 forces the Ray path; workers get the endpoint from the
    # pickled filesystem, not from their environment).
    r = restore(arc, str(tmp_path / "out"), local_limit=0)
    assert r["ok"] and r["written"] == len(files)
    assert_restored(local_tree(tmp_path / "out"), files)

    # S3 to S3, in this process; then a rerun skips everything (sizes come from one listing).
    dest = f"s3://{bucket}/restored"
    r = restore(arc, dest)
    assert r["ok"] and r["written"] == len(files)
    got = {p[len(f"{bucket}/restored/"):]: fs.cat_file(p) for p in fs.find(f"{bucket}/restored")}
    assert_restored(got, files)
    r = restore(arc, dest, local_limit=0)
    assert r["written"] == 0 and r["skipped"] == len(files)


def test_cli(made, tmp_path):
    arc, files = made
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", str(arc), str(tmp_path / "o"),
                           "--include", "gifs/*", "--include", "*.txt", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["written"] == 2 and doc["ok"]
    assert set(local_tree(tmp_path / "o")) == {"gifs/palette.gif", "notes/readme.txt"}
    ids = tmp_path / "ids"
    ids.write_text("missing/one.png\n")
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", str(arc), str(tmp_path / "o"),
                           "--ids", str(ids)], capture_output=True, text=True, timeout=300)
    # The summary is the command's result (stdout); errors that stop it go to stderr.
    assert proc.returncode == 1 and "missing/one.png" in proc.stdout and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", str(tmp_path / "nothing"),
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no pixark archive" in proc.stderr and "Traceback" not in proc.stderr


def test_reading_manifests_leaves_nothing_running_at_exit(made):
    """pyarrow reading from a Python file object could drop its last reference to Python memory from an I/O thread
    after returning; a process exiting right after a read then aborted ('terminate called without an active
    exception', SIGABRT), e.g. `pixark restore` with nothing selected. Before the fix this script aborted in about
    two runs of three."""
    arc, _ = made
    script = ("import sys, fsspec\nfrom pixark.pipeline import manifest\nfs = fsspec.filesystem('file')\n"
              "for p in sorted(fs.glob(sys.argv[1] + '/manifests/*.parquet')):\n    manifest.read_part(fs, p)\n")
    for _ in range(10):
        proc = subprocess.run([sys.executable, "-c", script, str(arc)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stderr)


def test_archive_json_records_each_manifest_part_hash(made):
    """The archive job records every part's sha256, so restore refuses a part changed after the job (issue 26)."""
    import hashlib

    arc, _ = made
    meta = json.loads((arc / "archive.json").read_text())
    assert meta["shards"] and all(
        e["manifest_sha256"] == hashlib.sha256((arc / e["manifest"]).read_bytes()).hexdigest() for e in meta["shards"])


def test_small_restore_of_learned_records_decodes_in_process(ray_session, dev_images, tmp_path):
    """A few learned-codec records decode faster here than a local Ray starts: the CLI (no Ray at hand) does not
    start one."""
    files = {f"{p.stem}.png": crop_png(p, 48) for p in dev_images[:2]}
    write_tree(tmp_path / "src", files)
    s = archive(str(tmp_path / "src"), str(tmp_path / "arc"), codec="mspsm", workers=1)
    rows = _manifest_rows(tmp_path / "arc")
    assert {r["codec"] for r in rows} == {"mspsm"}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", str(tmp_path / "arc"),
                           str(tmp_path / "out"), "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["written"] == 2 and doc["ran"] == "in-process"
    assert_restored(local_tree(tmp_path / "out"), files)
