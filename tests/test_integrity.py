"""What keeps an archive true to its sources over time: identical content stored once (duplicates share one
record and restore to every path), sources edited after archiving named by a rerun and archived again by
`--update` as a new generation, and archives written before those manifest columns still verifying and restoring."""

from __future__ import annotations

import io
import json
import os
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from archive_helpers import crop_png, write_tree
from pixark import codec as pc
from pixark.jobs.archive import archive
from pixark.pipeline import manifest
from pixark.pipeline.restore import restore
from pixark.pipeline.verify import verify

pytestmark = pytest.mark.ray
CODEC = "jxl-ll"  # a classical codec: these results do not move with learned-codec work


@pytest.fixture
def dup_source(tmp_path, dev_images):
    import imagecodecs

    from test_pngexact import _recompressed

    a, b = crop_png(dev_images[0]), crop_png(dev_images[1])
    # Files with the same pixels but other bytes share a record only when neither carries a PNG recipe (a recipe
    # gives back its own file): two deflate streams stdlib zlib does not reproduce (zlib-ng at two levels).
    b, other_b = (_recompressed(b, lambda raw, lv=lv: imagecodecs.zlibng_encode(raw, lv)) for lv in (6, 1))
    files = {"a.png": a, "copy/a.png": a, "b.png": b, "same-pixels/b.png": other_b,
             "notes/x.txt": b"kept as bytes\n", "notes/y.txt": b"kept as bytes\n"}
    assert files["same-pixels/b.png"] != b
    write_tree(tmp_path / "src", files)
    return tmp_path / "src", files


def _rows(arc) -> list[dict]:
    return [r for p in sorted((arc / "manifests").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_duplicates_share_one_record_and_restore_to_every_path(ray_session, dup_source, tmp_path):
    src, files = dup_source
    arc = tmp_path / "arc"
    s = archive(str(src), str(arc), codec=CODEC, workers=1)
    assert s["images"] == 6 and s["records"] == 3 and s["duplicates"] == 3
    rows = {r["image_id"]: r for r in _rows(arc)}
    for dup, holder in (("copy/a.png", "a.png"), ("same-pixels/b.png", "b.png"), ("notes/y.txt", "notes/x.txt")):
        d, h = rows[dup], rows[holder]
        assert d["duplicate_of"] == holder and h["duplicate_of"] is None
        assert (d["shard"], d["offset"], d["length"]) == (h["shard"], h["offset"], h["length"])
        assert d["compressed_bytes"] == 0 and h["compressed_bytes"] == h["length"]
    assert rows["same-pixels/b.png"]["source_sha256"] != rows["b.png"]["source_sha256"]
    meta = json.loads((arc / "archive.json").read_text())
    shard = arc / "shards" / meta["shards"][0]["name"]
    assert shard.stat().st_size < sum(len(v) for v in files.values())  # each record once
    assert meta["shards"][0]["records"] == 3

    v = verify(str(arc))
    assert v["ok"], (v["problems"], v["mismatched_records"])
    r = restore(str(arc), str(tmp_path / "out"))
    assert r["ok"] and r["written"] == 6, (r["errors"], r.get("problems"))
    out = _tree(tmp_path / "out")
    assert set(out) == set(files)
    for rel, data in files.items():
        if rel.endswith(".txt"):
            assert out[rel] == data
        else:
            assert pc.load(out[rel]).pixel_sha256() == pc.load(data).pixel_sha256()


def test_copies_far_apart_in_the_listing_share_one_record_across_shards(ray_session, dev_images, tmp_path):
    """Shards are runs of the sorted listing; a copy of a file elsewhere in the tree would start another shard's
    record. The planner puts byte-identical files in one shard (same size, same first bytes, same hash), where
    they share one record; a file of the same size with other bytes does not join them."""
    a, b, c = crop_png(dev_images[0], 320), crop_png(dev_images[1]), crop_png(dev_images[2])
    assert len(a) > 1 << 16
    twin = bytearray(a)
    twin[-20] ^= 1  # same size, same first 64 kB: only the whole-file hash tells it apart
    files = {"a.png": a, "b.png": b, "m/c.png": c, "z/copy of a.png": a, "z/twin.png": bytes(twin)}
    write_tree(tmp_path / "src", files)
    arc = tmp_path / "arc"
    s = archive(str(tmp_path / "src"), str(arc), codec=CODEC, workers=1, shard_size=max(map(len, files.values())))
    rows = {r["image_id"]: r for r in _rows(arc)}
    assert rows["z/copy of a.png"]["duplicate_of"] == "a.png"
    assert rows["z/copy of a.png"]["shard"] == rows["a.png"]["shard"]
    assert rows["z/twin.png"]["duplicate_of"] is None
    assert rows["b.png"]["shard"] != rows["a.png"]["shard"]  # the copy came from another shard's run
    assert s["records"] == 4 and s["duplicates"] == 1
    v = verify(str(arc))
    assert v["ok"], (v["problems"], v["mismatched_records"])
    r = restore(str(arc), str(tmp_path / "out"))
    assert r["ok"] and r["written"] == 5
    assert _tree(tmp_path / "out") == files



def test_changed_source_is_named_then_archived_by_update(ray_session, dup_source, tmp_path):
    src, files = dup_source
    arc = tmp_path / "arc"
    archive(str(src), str(arc), codec=CODEC, workers=1)

    # Edit one image in place (other pixels, same size on disk is not required) and one text file (same size).
    edited = Image.open(io.BytesIO(files["b.png"]))
    buf = io.BytesIO()
    Image.fromarray(255 - np.asarray(edited)).save(buf, format="PNG")
    (src / "b.png").write_bytes(buf.getvalue())
    (src / "notes" / "x.txt").write_bytes(b"kept as BYTES\n")
    later = os.stat(src / "notes" / "x.txt").st_mtime + 5
    os.utime(src / "notes" / "x.txt", (later, later))  # a coarse-mtime filesystem must still see the change

    s = archive(str(src), str(arc), codec=CODEC, workers=1)
    assert s["status"] == "already-complete" and s["changed"] == ["b.png", "notes/x.txt"]
    assert "--update" in s["message"] and "b.png" in s["message"]
    s = archive(str(src), str(arc), codec=CODEC, workers=1, extend=True)
    assert s["status"] == "nothing-new" and s["changed"] == ["b.png", "notes/x.txt"]

    s = archive(str(src), str(arc), codec=CODEC, workers=1, update=True)
    assert s["status"] == "updated" and s["updated"] == ["b.png", "notes/x.txt"]
    assert s["images"] == 6 and s["superseded"] == 2
    rows = _rows(arc)
    gens = sorted((r["generation"], r["source_bytes"]) for r in rows if r["image_id"] == "b.png")
    assert [g for g, _ in gens] == [0, 1]
    current = {r["image_id"]: r for r in manifest.current_rows(rows)}
    assert current["b.png"]["generation"] == 1 and current["a.png"]["generation"] == 0
    # The file that was b.png's same-pixel twin keeps its record; b.png's old record stays as history.
    assert current["same-pixels/b.png"]["duplicate_of"] == "b.png" and current["same-pixels/b.png"]["generation"] == 0

    assert archive(str(src), str(arc), codec=CODEC, workers=1)["changed"] == []
    v = verify(str(arc))
    assert v["ok"], (v["problems"], v["mismatched_records"])
    r = restore(str(arc), str(tmp_path / "out"))
    assert r["ok"] and r["written"] == 6, (r["errors"], r.get("problems"))
    out = _tree(tmp_path / "out")
    assert out["notes/x.txt"] == b"kept as BYTES\n" and out["notes/y.txt"] == b"kept as bytes\n"
    assert pc.load(out["b.png"]).pixel_sha256() == pc.load(buf.getvalue()).pixel_sha256()
    assert pc.load(out["same-pixels/b.png"]).pixel_sha256() == pc.load(files["b.png"]).pixel_sha256()


def test_archive_written_before_the_new_columns_still_verifies_and_restores(ray_session, dup_source, tmp_path):
    """Manifest parts of version 1 (no duplicate_of, no generation) and a plan without source_version, as the
    earlier code wrote them: verify, restore and a rerun read them."""
    src, files = dup_source
    for rel in ("copy/a.png", "same-pixels/b.png", "notes/y.txt"):  # no duplicates: the old writer had none
        (src / rel).unlink()
    (src / "broken.png").write_bytes(files["a.png"][:300])  # kept as bytes; version 1 said "failed"
    arc = tmp_path / "arc"
    archive(str(src), str(arc), codec=CODEC, workers=1)
    for part in (arc / "manifests").glob("*.parquet"):
        t = pq.read_table(part)
        meta = dict(t.schema.metadata)
        meta[b"pixark.manifest_version"] = b"1"
        t = t.drop_columns(["duplicate_of", "generation", "restore_exact"])
        t = t.set_column(0, "manifest_version", pa.array([1] * t.num_rows, pa.int16()))
        status = ["failed" if s == "kept_unreadable" else s for s in t.column("status").to_pylist()]
        t = t.set_column(t.column_names.index("status"), "status", pa.array(status, pa.string()))
        pq.write_table(t.replace_schema_metadata(meta), part, compression="zstd")
    doc = json.loads((arc / "archive.json").read_text())
    for e in doc["shards"]:  # the earlier writer recorded no part hashes
        e.pop("manifest_sha256", None)
    (arc / "archive.json").write_text(json.dumps(doc))
    for plan in (arc / "plan").glob("*.parquet"):
        t = pq.read_table(plan)
        pq.write_table(t.drop_columns(["source_version"]).replace_schema_metadata(t.schema.metadata), plan)
    assert "generation" not in pq.read_table(next((arc / "manifests").glob("*.parquet"))).column_names

    assert "failed" in {r["status"] for r in _rows(arc)}
    v = verify(str(arc))
    assert v["ok"], (v["problems"], v["mismatched_records"])
    assert v["counts"] == {"ok": 3, "kept_unreadable": 1}
    r = restore(str(arc), str(tmp_path / "out"))
    assert r["ok"] and r["written"] == 4, (r["errors"], r.get("problems"))
    assert _tree(tmp_path / "out")["notes/x.txt"] == files["notes/x.txt"]
    assert _tree(tmp_path / "out")["broken.png"] == files["a.png"][:300]
    assert archive(str(src), str(arc), codec=CODEC, workers=1)["status"] == "already-complete"
    (src / "notes" / "x.txt").write_bytes(b"longer than it was\n")  # old plans: the size still tells
    s = archive(str(src), str(arc), codec=CODEC, workers=1, update=True)
    assert s["updated"] == ["notes/x.txt"] and s["images"] == 4
    assert (s["ok"], s["kept_unreadable"], s["failed"]) == (3, 1, 0)  # old rows named by what they are
    assert verify(str(arc))["ok"]
    r = restore(str(arc), str(tmp_path / "out"))
    assert r["repaired"] == 1 and (tmp_path / "out" / "notes" / "x.txt").read_bytes() == b"longer than it was\n"
