"""`pixark verify` on archives made by the real archive job, then damaged on purpose: every kind of damage is reported
precisely (which record, what failed), nothing crashes, and the exit code says whether the archive is sound."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from archive_helpers import odd_source, write_tree
from pixark.jobs.archive import archive
from pixark.pipeline.catalog import ArchiveError
from pixark.pipeline.verify import parse_sample, verify

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def made(ray_session, dev_images, tmp_path_factory):
    """(source folder, pristine archive, files) built once; tests damage copies of the archive."""
    root = tmp_path_factory.mktemp("verify")
    files = odd_source(dev_images)
    write_tree(root / "src", files)
    s = archive(str(root / "src"), str(root / "archive"), shard_size="10kB", workers=2)
    assert s["shards"] >= 3, "the damage tests need several shards"
    return root / "src", root / "archive", files


@pytest.fixture
def arc(made, tmp_path) -> Path:
    copy = tmp_path / "archive"
    shutil.copytree(made[1], copy)
    return copy


def rows_of(arc: Path) -> list[dict]:
    return [r for p in sorted((arc / "manifests").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def report_of(arc: Path) -> dict[str, dict]:
    """image_id -> report row, from the Parquet report verify wrote."""
    rows = pq.read_table(arc / "verify" / "records.parquet").to_pylist()
    out = {}
    for r in rows:
        assert set(r) >= {"image_id", "status", "detail"}
        out.setdefault(r["image_id"], r)
    return out


def bad(summary: dict) -> dict[str, str]:
    return {r["image_id"]: r["status"] for r in summary["mismatched_records"]}


def test_clean_archive_verifies(arc, made):
    files = made[2]
    s = verify(str(arc))
    assert s["ok"] and s["mismatches"] == 0 and s["problems"] == []
    assert s["manifest_rows"] == len(files) and s["records_checked"] == len(files)
    # Sources that failed at archive time (at least the truncated PNG and the damaged JPEG) have their original
    # bytes kept, intact: reported, not mismatches.
    kept = json.loads((arc / "archive.json").read_text())["totals"]["kept_unreadable"]
    assert kept >= 2 and s["counts"] == {"ok": len(files) - kept, "kept_unreadable": kept}
    rep = report_of(arc)
    assert set(rep) == set(files)
    truncated = rep["broken/truncated.png"]
    assert truncated["status"] == "kept_unreadable" and "intact" in truncated["detail"]
    assert json.loads((arc / "verify" / "summary.json").read_text())["ok"] is True
    assert s["report"]["records"].endswith("verify/records.parquet")


def test_one_flipped_byte_reports_exactly_that_record(arc):
    victim = next(r for r in rows_of(arc) if r["image_id"].startswith("photos/"))
    shard = arc / "shards" / victim["shard"]
    data = bytearray(shard.read_bytes())
    data[victim["offset"] + victim["length"] // 2] ^= 0x40
    shard.write_bytes(bytes(data))

    s = verify(str(arc))
    assert not s["ok"]
    assert bad(s) == {victim["image_id"]: "checksum_mismatch"}
    assert s["mismatches"] == 1
    rep = report_of(arc)
    assert rep[victim["image_id"]]["status"] == "checksum_mismatch"
    assert rep[victim["image_id"]]["offset"] == victim["offset"]
    assert all(r["status"] in ("ok", "kept_unreadable") for i, r in rep.items() if i != victim["image_id"])
    assert s["problems"] == [] and s["shards_hashed"] is False  # one read of each shard: the record CRC is the finding
    # With --hash-shards the whole-object hash in archive.json catches it too, for that shard only.
    h = verify(str(arc), hash_shards=True)
    assert bad(h) == bad(s) and h["shards_hashed"] is True
    assert len(h["problems"]) == 1 and victim["shard"] in h["problems"][0] and "sha256" in h["problems"][0]


def test_damage_outside_records_is_found_without_hashing(arc):
    """A full verify reads each shard once; the bytes that are not records (header, index, trailer) are checked by
    the shard task under their own magic/checksum, so damage there is found without --hash-shards."""
    rows = [r for r in rows_of(arc) if r["offset"] is not None]
    names = sorted({r["shard"] for r in rows})[:3]
    for name, where in zip(names, ("header", "index", "trailer")):
        shard = arc / "shards" / name
        data = bytearray(shard.read_bytes())
        end = max(r["offset"] + r["length"] for r in rows if r["shard"] == name)  # the index starts here
        data[{"header": 3, "index": end + 5, "trailer": len(data) - 2}[where]] ^= 0x20
        shard.write_bytes(bytes(data))
    s = verify(str(arc))
    assert not s["ok"] and s["shards_hashed"] is False
    for name in names:
        assert any(name in p and "cannot read its index" in p for p in s["problems"]), (name, s["problems"])


def test_truncated_shard(arc):
    rows = [r for r in rows_of(arc) if r["offset"] is not None]
    name = max({r["shard"] for r in rows}, key=lambda n: sum(r["shard"] == n for r in rows))
    mine = sorted((r for r in rows if r["shard"] == name), key=lambda r: r["offset"])
    assert len(mine) >= 2
    cut = mine[1]["offset"] + mine[1]["length"] // 2  # inside the second record
    shard = arc / "shards" / name
    shard.write_bytes(shard.read_bytes()[:cut])

    s = verify(str(arc))
    assert not s["ok"]
    lost = {r["image_id"] for r in mine[1:]}
    assert bad(s) == {i: "truncated" for i in lost}
    rep = report_of(arc)
    assert rep[mine[0]["image_id"]]["status"] in ("ok", "kept_unreadable")  # before the cut: still fine
    assert any(f"shard {name} is truncated" in p for p in s["problems"])
    assert any("cannot read its index" in p for p in s["problems"])


def test_deleted_manifest_part_and_missing_shard(arc):
    rows = rows_of(arc)
    names = sorted({r["shard"] for r in rows})
    gone_part, gone_shard = names[0], names[1]
    (arc / "manifests" / gone_part.replace(".pxs", ".parquet")).unlink()
    (arc / "shards" / gone_shard).unlink()

    s = verify(str(arc))
    assert not s["ok"]
    orphans = {r["image_id"] for r in rows if r["shard"] == gone_part and r["offset"] is not None}
    missing = {r["image_id"] for r in rows if r["shard"] == gone_shard and r["offset"] is not None}
    assert bad(s) == {**{i: "missing_manifest_row" for i in orphans}, **{i: "shard_missing" for i in missing}}
    assert f"manifest part {gone_part.replace('.pxs', '.parquet')} for shard {gone_part} is missing" in s["problems"]
    assert f"shard {gone_shard} listed in archive.json is missing" in s["problems"]
    assert any("the manifest parts hold" in p for p in s["problems"])


def test_duplicate_rows_and_unlisted_part(arc):
    first = sorted((arc / "manifests").glob("*.parquet"))[0]
    shutil.copy(first, arc / "manifests" / "shard-999999.parquet")
    dupes = {r["image_id"] for r in pq.read_table(first).to_pylist()}

    s = verify(str(arc))
    assert not s["ok"]
    assert bad(s) == {i: "duplicate_row" for i in dupes}
    assert "manifest part shard-999999.parquet is not listed in archive.json" in s["problems"]


def test_row_the_index_contradicts(arc):
    """A manifest row naming the wrong image (an extra row) is caught by the shard's own index, not trusted; the
    record it displaced shows up as a record without a manifest row."""
    import pyarrow as pa

    part = sorted((arc / "manifests").glob("*.parquet"))[0]
    t = pq.read_table(part)
    rows = t.to_pylist()
    victim = next(r for r in rows if r["offset"] is not None)
    real_id = victim["image_id"]
    victim["image_id"] = "made/up.png"
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), part)

    s = verify(str(arc))
    assert bad(s) == {"made/up.png": "not_in_shard_index", real_id: "missing_manifest_row"}


def test_damage_behind_a_matching_checksum_is_still_caught(arc):
    """Record CRCs are not the last line: a damaged record whose manifest CRC matches (damage before it was
    checksummed) fails the container's own checks, and pixels that differ from the manifest's hash are reported."""
    import crc32c
    import pyarrow as pa

    part = sorted((arc / "manifests").glob("*.parquet"))[0]
    t = pq.read_table(part)
    rows = t.to_pylist()
    a, b = [r for r in rows if r["offset"] is not None and r["pixel_sha256"]][:2]
    shard = arc / "shards" / a["shard"]
    data = bytearray(shard.read_bytes())
    data[a["offset"] + a["length"] - 8] ^= 0x10
    shard.write_bytes(bytes(data))
    a["record_crc32c"] = crc32c.crc32c(bytes(data[a["offset"]:a["offset"] + a["length"]]))
    b["pixel_sha256"] = "0" * 64
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), part)

    s = verify(str(arc))
    assert bad(s) == {a["image_id"]: "corrupt_stream", b["image_id"]: "pixel_mismatch"}
    rep = report_of(arc)
    assert "checksum" in rep[a["image_id"]]["detail"] and "manifest" in rep[b["image_id"]]["detail"]


def test_missing_archive_json_and_not_an_archive(arc, tmp_path):
    (arc / "archive.json").unlink()
    s = verify(str(arc))
    assert not s["ok"] and s["mismatches"] == 0
    assert s["problems"] == ["archive.json is missing (the archive job has not finished)"]
    with pytest.raises(ArchiveError, match="no pixark archive"):
        verify(str(tmp_path / "nothing here"))


def test_sample_and_against_source(arc, made):
    src, _, files = made
    s = verify(str(arc), sample=3, seed=7)
    assert s["ok"] and s["records_checked"] == 3 and s["sample"] == {"requested": 3, "checked": 3, "seed": 7}
    assert len(report_of(arc)) == 3
    s = verify(str(arc), sample="0.5")
    assert s["records_checked"] == round(len(files) / 2)
    first = set(report_of(arc))
    verify(str(arc), sample="0.5", seed=s["sample"]["seed"])  # the reported seed reproduces the sample
    assert set(report_of(arc)) == first
    assert parse_sample("10") == 10 and parse_sample("0.25") == 0.25 and parse_sample(None) is None
    for wrong in ("0", "1.5", "-3", "some"):
        with pytest.raises(ValueError, match="sample"):
            parse_sample(wrong)

    # The sources are read only with --against-source; change one and remove another.
    changed_src = src.parent / "src-changed"
    shutil.copytree(src, changed_src)
    s_ok = verify(str(arc), against_source=True)
    assert s_ok["ok"], s_ok["mismatched_records"]
    victim = "gifs/palette.gif"
    (src / victim).write_bytes((src / victim).read_bytes()[:-1] + b"\x00")
    (src / "notes" / "readme.txt").unlink()
    try:
        s = verify(str(arc), against_source=True)
    finally:
        shutil.rmtree(src)
        shutil.copytree(changed_src, src)
    assert bad(s) == {victim: "source_mismatch", "notes/readme.txt": "source_mismatch"}
    rep = report_of(arc)
    assert "source changed" in rep[victim]["detail"] and "no longer exists" in rep["notes/readme.txt"]["detail"]


def test_cli_exit_codes_and_json(arc):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "verify", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    ok = run(arc, "--json", "--sample", "2")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    victim = next(r for r in rows_of(arc) if r["offset"] is not None)
    shard = arc / "shards" / victim["shard"]
    data = bytearray(shard.read_bytes())
    data[victim["offset"] + 20] ^= 1
    shard.write_bytes(bytes(data))
    broken = run(arc)
    assert broken.returncode == 1
    assert "checksum_mismatch" in broken.stdout and victim["image_id"] in broken.stdout  # the report is the result
    hashed = run(arc, "--hash-shards", "--json")
    summary = json.loads(hashed.stdout)
    assert hashed.returncode == 1 and summary["shards_hashed"] is True
    assert any("sha256" in p and victim["shard"] in p for p in summary["problems"])
    wrong = run(arc, "--sample", "lots")
    assert wrong.returncode != 0 and "sample" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.s3
def test_s3_archive_damaged_object_and_changed_source(ray_session, s3, dev_images, tmp_path):
    """S3 to S3 through the local endpoint: Ray workers reach it with the archive's own filesystem options."""
    fs, bucket = s3
    files = odd_source(dev_images)
    for rel, data in files.items():
        fs.pipe_file(f"{bucket}/src/{rel}", data)
    arc = f"s3://{bucket}/archive"
    archive(f"s3://{bucket}/src", arc, shard_size="10kB", workers=2)
    s = verify(arc, against_source=True)
    assert s["ok"] and s["records_checked"] == len(files), s["mismatched_records"]
    assert fs.exists(f"{bucket}/archive/verify/records.parquet") and fs.exists(f"{bucket}/archive/verify/summary.json")

    rows = [r for p in fs.find(f"{bucket}/archive/manifests") for r in pq.read_table(fs.open(p)).to_pylist()]
    victim = next(r for r in rows if r["image_id"] == "gifs/palette.gif")
    key = f"{bucket}/archive/shards/{victim['shard']}"
    data = bytearray(fs.cat_file(key))
    data[victim["offset"] + victim["length"] - 10] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    fs.pipe_file(f"{bucket}/src/notes/readme.txt", b"edited after archiving\n")
    s = verify(arc, against_source=True)
    assert bad(s) == {"gifs/palette.gif": "checksum_mismatch", "notes/readme.txt": "source_mismatch"}


def test_learned_codec_records_verify_and_restore_on_ray_tasks(ray_session, tmp_path):
    """mspsm records take the learned-codec path of verify and restore (one Ray task per record, a GPU share where
    the cluster has GPUs; none here): they verify, and restore to the original pixels."""
    from PIL import Image

    from images import photo_array
    from pixark.codec.mspsm import MspsmCodec
    from pixark.pipeline.restore import restore

    if not MspsmCodec().available():
        pytest.skip("mspsm has no shipped weights in this build")
    px = photo_array(40)
    (tmp_path / "src").mkdir()
    for i, crop in enumerate((px[:40, :32], px[:24, :40])):
        Image.fromarray(crop).save(tmp_path / "src" / f"p{i}.png")
    s = archive(str(tmp_path / "src"), str(tmp_path / "arc"), codec="mspsm", workers=1)
    assert s["status"] == "complete" and s["images"] == 2 and s["failed"] == 0
    v = verify(str(tmp_path / "arc"))
    assert v["ok"] and v["counts"] == {"ok": 2}
    r = restore(str(tmp_path / "arc"), str(tmp_path / "out"), local_limit=0)
    assert r["ok"]
    for i in range(2):
        back = np.asarray(Image.open(tmp_path / "out" / f"p{i}.png"))
        assert np.array_equal(back, np.asarray(Image.open(tmp_path / "src" / f"p{i}.png")))
