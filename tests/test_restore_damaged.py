"""Restore of damaged and tampered archives (issue 26): restore checks what it writes. Every row against its shard's
index, every manifest part against archive.json, decoded pixels against the manifest; it restores what is intact,
names everything it did not restore, and reports the archive as not ok (the CLI exits 1).

The fixture tests/archives/v1-small is a 3-shard archive made by the pixark before these checks (container
version 1, no manifest hashes in archive.json): old archives must keep restoring. Tampering is applied to a copy.
Small classical restores run in this process, so these tests need no Ray."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixark import codec as pc
from pixark.pipeline.restore import restore

OLD = Path(__file__).parent / "archives" / "v1-small"
SOURCES = ["baby.png", "caby.png", "cats/grey.png", "cats/palette.gif", "dogs/notes.txt", "dogs/photo.jpg"]


@pytest.fixture
def arc(tmp_path) -> Path:
    out = tmp_path / "archive"
    shutil.copytree(OLD, out)
    return out


def originals() -> dict[str, bytes]:
    """What each image id restores to when intact: restored from the pristine fixture."""
    global _ORIGINALS
    if _ORIGINALS is None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            s = restore(str(OLD), d)
            assert s["ok"] and s["written"] == len(SOURCES), s
            _ORIGINALS = {i: (Path(d) / i).read_bytes() for i in SOURCES}
    return _ORIGINALS


_ORIGINALS = None


def parts(arc: Path) -> list[Path]:
    return sorted((arc / "manifests").glob("*.parquet"))


def part_of(arc: Path, image_id: str) -> Path:
    return next(p for p in parts(arc) if image_id in pq.read_table(p).column("image_id").to_pylist())


def rewrite(path: Path, change) -> None:
    """Rewrite a manifest part as a valid Parquet file with ``change(columns dict)`` applied, metadata kept."""
    t = pq.read_table(path)
    cols = t.to_pydict()
    change(cols)
    pq.write_table(pa.Table.from_pydict(cols, schema=t.schema), path, compression="zstd")


def run(arc: Path, dest: Path, **kw) -> dict:
    s = restore(str(arc), str(dest), **kw)
    written = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    want = originals()
    for name, data in written.items():  # nothing written is wrong: right name, right content
        assert name in want and data == want[name], f"{name} written with another file's content or name"
    named = {e["image_id"] for e in s["errors"]} | {e["image_id"] for e in s["not_archived"]}
    unnamed = set(want) - set(written) - named
    assert not unnamed or s["problems"], f"not restored and not named: {unnamed}"
    s["written_names"] = set(written)
    return s


def test_old_archive_restores_intact(arc, tmp_path):
    s = run(arc, tmp_path / "out")
    assert s["ok"] and s["written_names"] == set(SOURCES) and s["problems"] == []
    from pixark.codec import container

    data = (arc / "shards" / "shard-000000.pxs").read_bytes()[16:]  # from the first record on
    head, start = container.read_header(data)
    first = data[:start + sum(head.blobs.values()) + head.payload_bytes + 4]
    assert pc.info(first)["format_version"] == 1  # old streams


def test_swapped_ids_write_neither(arc, tmp_path):
    """Two rows' image_ids swapped (a valid Parquet file): each would have got the other's pixels."""
    def swap(c):
        i, j = c["image_id"].index("baby.png"), c["image_id"].index("caby.png")
        c["image_id"][i], c["image_id"][j] = c["image_id"][j], c["image_id"][i]
    rewrite(part_of(arc, "baby.png"), swap)
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and {e["image_id"] for e in s["errors"]} == {"baby.png", "caby.png"}
    assert s["written_names"] == set(SOURCES) - {"baby.png", "caby.png"}
    assert all("index" in e["detail"] for e in s["errors"])


def test_renamed_row_cannot_hide_the_file_it_names(arc, tmp_path):
    """One flipped bit renamed baby.png to caby.png: caby.png is still restored from its own row, baby.png is named."""
    rewrite(part_of(arc, "baby.png"), lambda c: c["image_id"].__setitem__(c["image_id"].index("baby.png"), "caby.png"))
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and "caby.png" in s["written_names"] and "baby.png" not in s["written_names"]
    assert any("caby.png" in p for p in s["problems"])


@pytest.mark.parametrize("column,value", [("offset", 16), ("length", 100), ("pixel_sha256", "0" * 64),
                                          ("source_sha256", "0" * 64), ("record_crc32c", 12345)])
def test_changed_row_values_are_errors_not_silent(arc, tmp_path, column, value):
    target = "dogs/photo.jpg" if column == "source_sha256" else "caby.png"
    rewrite(part_of(arc, target), lambda c: c[column].__setitem__(c["image_id"].index(target), value))
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and [e["image_id"] for e in s["errors"]] == [target]
    assert s["written_names"] == set(SOURCES) - {target}


def test_null_crc_is_taken_from_the_index(arc, tmp_path):
    rewrite(part_of(arc, "caby.png"), lambda c: c["record_crc32c"].__setitem__(c["image_id"].index("caby.png"), None))
    s = run(arc, tmp_path / "out")
    assert s["ok"] and s["written_names"] == set(SOURCES)


def test_deleted_part_restores_the_rest_and_names_its_images(arc, tmp_path):
    part = part_of(arc, "cats/grey.png")
    lost = set(pq.read_table(part).column("image_id").to_pylist())
    part.unlink()
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and s["written_names"] == set(SOURCES) - lost
    assert {e["image_id"] for e in s["errors"]} == lost and any("missing" in p for p in s["problems"])


def test_null_image_id_does_not_crash(arc, tmp_path):
    """A flip that made image_id null crashed restore with a TypeError (sources.py)."""
    part = part_of(arc, "cats/grey.png")
    lost = set(pq.read_table(part).column("image_id").to_pylist())
    t = pq.read_table(part)
    ids = t.column("image_id").to_pylist()
    ids[0] = None
    schema = t.schema.set(t.schema.get_field_index("image_id"), pa.field("image_id", pa.string()))
    pq.write_table(t.cast(schema).set_column(1, "image_id", pa.array(ids, pa.string())), part)
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and {e["image_id"] for e in s["errors"]} == lost
    assert s["written_names"] == set(SOURCES) - lost


def test_unreadable_part_blocks_only_its_shard(arc, tmp_path):
    part = part_of(arc, "dogs/photo.jpg")
    lost = set(pq.read_table(part).column("image_id").to_pylist())
    part.write_bytes(b"PAR1" + bytes(64) + b"PAR1")
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and s["written_names"] == set(SOURCES) - lost and any("unreadable" in p for p in s["problems"])


def test_missing_archive_json_restores_from_the_parts(arc, tmp_path):
    (arc / "archive.json").unlink()
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and s["written_names"] == set(SOURCES) and "archive.json is missing" in s["problems"][0]


def test_row_count_against_archive_json(arc, tmp_path):
    part = part_of(arc, "baby.png")
    rewrite(part, lambda c: [v.pop() for v in c.values()])  # a valid part with its last row gone
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and {"baby.png", "caby.png"} <= {e["image_id"] for e in s["errors"]}
    assert any("rows, archive.json says" in p for p in s["problems"])


def test_record_count_against_archive_json(arc, tmp_path):
    """A row that lost its record (offset and length null) is not 'not archived': archive.json counts it."""
    def drop(c):
        i = c["image_id"].index("caby.png")
        c["offset"][i] = c["length"][i] = c["record_crc32c"][i] = None
    rewrite(part_of(arc, "caby.png"), drop)
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and "caby.png" in {e["image_id"] for e in s["errors"]} and s["not_archived"] == []
    assert any("records, archive.json says" in p for p in s["problems"])


def with_manifest_hashes(arc: Path) -> None:
    """archive.json as this pixark writes it: each shard entry records its manifest part's sha256."""
    meta = json.loads((arc / "archive.json").read_text())
    for e in meta["shards"]:
        e["manifest_sha256"] = hashlib.sha256((arc / e["manifest"]).read_bytes()).hexdigest()
    (arc / "archive.json").write_text(json.dumps(meta))


def test_part_hash_rejects_any_change_to_a_part(arc, tmp_path):
    with_manifest_hashes(arc)
    assert run(arc, tmp_path / "ok")["ok"]
    part = part_of(arc, "dogs/notes.txt")
    lost = set(pq.read_table(part).column("image_id").to_pylist())
    rewrite(part, lambda c: c["source_bytes"].__setitem__(0, c["source_bytes"][0] + 1))  # harmless-looking
    s = run(arc, tmp_path / "out")
    assert not s["ok"] and s["written_names"] == set(SOURCES) - lost
    assert {e["image_id"] for e in s["errors"]} == lost and any("sha256" in p for p in s["problems"])


def test_selection_names_only_what_it_selects(arc, tmp_path):
    part_of(arc, "cats/grey.png").unlink()
    s = run(arc, tmp_path / "out", include="baby.png")
    assert s["written_names"] == {"baby.png"} and s["errors"] == [] and not s["ok"]  # the archive is still damaged
    s = run(arc, tmp_path / "out2", ids=["cats/grey.png"])
    assert s["missing_ids"] == [] and [e["image_id"] for e in s["errors"]] == ["cats/grey.png"]


def test_cli_exits_1_and_names_the_damage(arc, tmp_path):
    part_of(arc, "cats/grey.png").unlink()
    out = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", str(arc), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "manifest part" in out.stdout and "missing" in out.stdout and "cats/grey.png" in out.stdout
    assert (tmp_path / "out" / "baby.png").read_bytes() == originals()["baby.png"]
