"""The archive job on real Ray, real images, local folders and a real S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json

import fsspec
import pyarrow.parquet as pq
import pytest

from archive_helpers import check_archive, odd_source, write_tree
from pixark import codec as pc
from pixark.jobs.archive import archive
from pixark.pipeline import manifest, shards
from pixark.pipeline.errors import ArchiveConflict, CorruptShard, PipelineError
from pixark.pipeline.sources import list_sources, matches, parse_size, plan_shards

LOCAL = fsspec.filesystem("file")
# Pipeline behaviour is tested with a classical codec, so that work in progress on learned codecs cannot change
# these results; the default `auto` has its own end-to-end test (test_default_auto_codec_on_real_photos).
CODEC = "jxl-ll"


@pytest.fixture
def source(tmp_path, dev_images):
    files = odd_source(dev_images)
    write_tree(tmp_path / "src", files)
    return tmp_path / "src", files


def s_meta(dest):
    return json.loads((dest / "archive.json").read_text())


# ------------------------------------------------------------------------------------------------ planning
def test_listing_and_plan_are_deterministic_and_filter(source, tmp_path):
    src, files = source
    objs = list_sources(LOCAL, str(src))
    assert [o.image_id for o in objs] == sorted(files)
    a = plan_shards(objs, 20_000)
    b = plan_shards(list_sources(LOCAL, str(src)), 20_000)
    # An archive inside the source folder is not part of the source.
    (src / "arc" / "shards").mkdir(parents=True)
    (src / "arc" / "shards" / "x.pxs").write_bytes(b"x")
    assert [o.image_id for o in list_sources(LOCAL, str(src), skip_prefixes=(str(src / "arc"),))] == sorted(files)
    assert [(s.name, [o.image_id for o in s.items]) for s in a] == [(s.name, [o.image_id for o in s.items]) for s in b]
    assert len(a) > 1 and sum(len(s.items) for s in a) == len(objs)
    for s in a:  # every shard is within the size unless it holds one object
        assert s.source_bytes <= 20_000 or len(s.items) == 1
    assert [s.name for s in plan_shards(objs, 10**9, first_index=7)] == ["shard-000007.pxs"]
    assert matches("a/b/c.png", ["*.png"], []) and not matches("a/b/c.png", [], ["*.png"])
    assert matches("a/b/c.png", ["a/*"], ["*.jpg"]) and not matches("a/b/c.png", ["b/*"], [])
    assert parse_size("256MB") == 256 * 10**6 and parse_size("64MiB") == 64 << 20 and parse_size("1000") == 1000
    with pytest.raises(PipelineError, match="bad size"):
        parse_size("lots")


# ------------------------------------------------------------------------------------------------ local
def test_local_archive_every_object_accounted_and_rerun_is_a_no_op(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "archive"
    s = archive(str(src), str(dest), codec=CODEC, shard_size="20kB", workers=2)
    assert s["status"] == "complete" and s["images"] == len(files) and s["shards"] > 1
    rows = {r["image_id"]: r for r in check_archive(LOCAL, str(dest), files)}
    # Damaged images are kept as their original bytes (restore gives them back byte-exact): kept, not failed.
    assert rows["broken/truncated.png"]["status"] == "kept_unreadable"
    assert "truncated" in rows["broken/truncated.png"]["error"]
    assert rows["broken/damaged.jpg"]["status"] == "kept_unreadable" and rows["broken/damaged.jpg"]["codec"] == "store"
    assert rows["notes/readme.txt"]["status"] == "ok" and rows["notes/readme.txt"]["codec"] == "store"
    assert rows["empty.png"]["status"] == "ok" and rows["empty.png"]["source_bytes"] == 0
    assert rows["photos/a photo ü.jpg"]["status"] == "ok" and rows["photos/a photo ü.jpg"]["format"] == "JPEG"
    recoded = [r for r in rows.values() if r["pixel_sha256"]]
    assert recoded and all(r["codec"] != "store" or r["compressed_bytes"] <= r["source_bytes"] + 400 for r in recoded)
    assert all(r["bpsp"] > 0 for r in recoded)
    assert {r["device"] for r in rows.values()} == {"cpu"} and all(r["worker"] for r in rows.values())
    assert s["kept_unreadable"] == 2 and s["failed"] == 0 and s["ok"] == len(files) - 2
    assert {(f["image_id"], f["status"]) for f in s["failures"]} == {("broken/truncated.png", "kept_unreadable"),
                                                                     ("broken/damaged.jpg", "kept_unreadable")}
    # A manifest part read with plain pyarrow carries the schema version and its shard's facts.
    part = pq.read_table(dest / "manifests" / "shard-000000.parquet")
    assert part.schema.metadata[b"pixark.manifest_version"] == str(manifest.MANIFEST_VERSION).encode()
    assert len(part.schema.metadata[b"pixark.shard_sha256"]) == 64
    meta = json.loads((dest / "archive.json").read_text())
    assert meta["format"] == "pixark-archive" and meta["config"]["codec"] == CODEC and meta["plans"] == 1
    assert set(meta["codecs"]) >= {"store"} and meta["totals"]["kept_unreadable"] == 2
    assert not (dest / ".pixark-tmp").exists()

    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    again = archive(str(src), str(dest), codec=CODEC, shard_size="20kB", workers=2)
    assert again["status"] == "already-complete" and "nothing to do" in again["message"]
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == before

    # Same inputs, same plan: a second archive of the same folder has the same shards with the same records.
    dest2 = tmp_path / "archive2"
    archive(str(src), str(dest2), codec=CODEC, shard_size="20kB", workers=1)
    m2 = json.loads((dest2 / "archive.json").read_text())
    assert [(x["name"], x["rows"], x["sha256"]) for x in m2["shards"]] == [(x["name"], x["rows"], x["sha256"]) for x in meta["shards"]]


def test_extend_adds_only_new_objects_and_overwrite_restarts(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "archive"
    archive(str(src), str(dest), codec=CODEC, shard_size="1MB", include=["*.png"], exclude=["broken/*"])
    kept = {k: v for k, v in files.items() if k.endswith(".png") and not k.startswith("broken/")}
    check_archive(LOCAL, str(dest), kept)
    (src / "new dir").mkdir()
    (src / "new dir" / "late.png").write_bytes(kept[sorted(kept)[0]])
    s = archive(str(src), str(dest), codec=CODEC, shard_size="1MB", include=["*.png"], exclude=["broken/*"])
    assert s["status"] == "already-complete" and "1 new source object" in s["message"]
    s = archive(str(src), str(dest), codec=CODEC, shard_size="1MB", include=["*.png"], exclude=["broken/*"], extend=True)
    assert s["status"] == "extended" and s["images"] == len(kept) + 1 and s["shards_written"] == 1
    kept["new dir/late.png"] = (src / "new dir" / "late.png").read_bytes()
    check_archive(LOCAL, str(dest), kept)
    assert json.loads((dest / "archive.json").read_text())["plans"] == 2
    s = archive(str(src), str(dest), codec=CODEC, shard_size="1MB", include=["*.png"], exclude=["broken/*"], extend=True)
    assert s["status"] == "nothing-new"
    # A different configuration is refused rather than mixed in; --overwrite starts again.
    (dest / "archive.json").unlink()
    with pytest.raises(ArchiveConflict, match="another configuration"):
        archive(str(src), str(dest), codec=CODEC, shard_size="2MB", include=["*.png"], exclude=["broken/*"])
    (dest / "my notes.txt").write_text("the user's, not the archive's")
    s = archive(str(src), str(dest), codec="png", shard_size="2MB", overwrite=True)
    assert s["status"] == "complete" and s["images"] == len(files) + 1
    assert (dest / "my notes.txt").exists()  # --overwrite removes the archive, nothing else
    assert sorted(p.name for p in (dest / "shards").iterdir()) == [x["name"] for x in s_meta(dest)["shards"]]
    files = dict(files, **{"new dir/late.png": kept["new dir/late.png"]})
    rows = check_archive(LOCAL, str(dest), files)
    assert {r["codec"] for r in rows if r["pixel_sha256"]} <= {"png", "store"}


def test_bad_inputs_are_clear_errors(ray_session, source, tmp_path):
    src, _ = source
    with pytest.raises(PipelineError, match="does not exist"):
        archive(str(tmp_path / "nope"), str(tmp_path / "a"))
    with pytest.raises(PipelineError, match="bad --codec"):
        archive(str(src), str(tmp_path / "a"), codec="zip")
    with pytest.raises(PipelineError, match="contains the source"):
        archive(str(src), str(tmp_path))
    with pytest.raises(PipelineError, match="contradict"):
        archive(str(src), str(tmp_path / "a"), overwrite=True, extend=True)


# ------------------------------------------------------------------------------------------------ shards
def test_shard_reader_reports_damage_precisely(ray_session, source, tmp_path):
    src, files = source
    dest = tmp_path / "archive"
    archive(str(src), str(dest), codec=CODEC, shard_size="10MB")
    shard = dest / "shards" / "shard-000000.pxs"
    index = shards.read_index(str(dest), "shard-000000.pxs")
    assert [e.image_id for e in index.entries] == sorted(files)
    victim = index.entries[3]
    blob = bytearray(shard.read_bytes())
    blob[victim.offset + victim.length // 2] ^= 0x10
    shard.write_bytes(bytes(blob))
    with pytest.raises(CorruptShard, match=f"offset {victim.offset}.*CRC32C mismatch"):
        shards.read_record(str(dest), "shard-000000.pxs", victim.offset, victim.length)
    other = index.entries[4]
    assert pc.decode(shards.read_record(str(dest), "shard-000000.pxs", other.offset, other.length)) is not None
    with pytest.raises(CorruptShard, match=repr(victim.image_id)):
        shards.check_shard(bytes(blob))
    shard.write_bytes(bytes(blob[:-40]))
    with pytest.raises(CorruptShard, match="trailer|truncated"):
        shards.read_index(str(dest), "shard-000000.pxs")
    shard.unlink()
    with pytest.raises(CorruptShard, match="missing"):
        shards.read_record(str(dest), "shard-000000.pxs", other.offset, other.length, other.crc32c)


# ------------------------------------------------------------------------------------------------ S3
@pytest.mark.s3
def test_s3_to_s3(ray_session, s3, source):
    fs, bucket = s3
    src, files = source
    fs.put(str(src) + "/", f"{bucket}/datasets/src/", recursive=True)
    s = archive(f"s3://{bucket}/datasets/src", f"s3://{bucket}/archives/one", codec=CODEC, shard_size="20kB")
    assert s["status"] == "complete" and s["images"] == len(files)
    root = f"{bucket}/archives/one"
    rows = check_archive(fs, root, files)
    assert all(r["source_url"].startswith(f"s3://{bucket}/datasets/src/") for r in rows)
    # Ranged record reads straight from the archive URL, as verify and restore do.
    r = next(r for r in rows if r["image_id"].endswith("palette.gif"))
    rec = shards.read_record(f"s3://{bucket}/archives/one", r["shard"], r["offset"], r["length"])
    assert pc.pixel_sha256(pc.decode(rec).pixels) == r["pixel_sha256"]
    assert not [p for p in fs.find(root) if p.endswith(".part")]
    again = archive(f"s3://{bucket}/datasets/src", f"s3://{bucket}/archives/one", codec=CODEC, shard_size="20kB")
    assert again["status"] == "already-complete"


def test_default_auto_codec_on_real_photos(ray_session, dev_images, tmp_path):
    """The default path end to end: `auto` (learned codecs where they are installed) on real photos."""
    from archive_helpers import crop_png

    files = {f"{p.parent.name}/{p.name}": crop_png(p, 96) for p in dev_images}
    write_tree(tmp_path / "src", files)
    s = archive(str(tmp_path / "src"), str(tmp_path / "archive"))
    assert s["failed"] == 0, s["failures"]
    rows = check_archive(LOCAL, str(tmp_path / "archive"), files)
    assert all(r["status"] == "ok" and r["pixel_sha256"] for r in rows)


def test_worker_sizing_asks_for_gpus_only_where_they_exist():
    from pixark.pipeline.workers import plan_workers, storage_env

    assert plan_workers(None, None, {"CPU": 2.0}) == (2, 1.0, 0.0)
    assert plan_workers(None, 1.0, {"CPU": 8.0}) == (8, 1.0, 0.0)  # no GPUs: CPU workers, never a GPU request
    assert plan_workers(5, None, {"CPU": 2.0}) == (5, 0.4, 0.0)  # more workers than CPUs still schedules
    assert plan_workers(None, None, {"CPU": 16.0, "GPU": 4.0}) == (4, 1.0, 1.0)  # one worker per GPU
    assert plan_workers(None, 0.5, {"CPU": 16.0, "GPU": 4.0}) == (8, 1.0, 0.5)
    assert plan_workers(None, 0, {"CPU": 4.0, "GPU": 4.0}) == (4, 1.0, 0.0)  # --gpus-per-worker 0: CPU only
    with pytest.raises(PipelineError, match="more than the cluster"):
        plan_workers(None, 2.0, {"CPU": 4.0, "GPU": 1.0})
    env = storage_env({"AWS_SECRET_ACCESS_KEY": "s", "FSSPEC_S3_ENDPOINT_URL": "http://x", "HOME": "/root",
                       "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials"})
    assert env == {"AWS_SECRET_ACCESS_KEY": "s", "FSSPEC_S3_ENDPOINT_URL": "http://x"}
