"""`pixark audit` on an archive made by the real archive job: totals that agree with archive.json and with the
manifest, groupings, the bpsp distribution, a classical baseline re-encoded in the same run, and the plot."""

from __future__ import annotations

import json
import posixpath
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

from archive_helpers import odd_source, write_tree
from pixark.jobs.archive import archive
from pixark.pipeline.audit import BASELINE_CODECS, _bpsp, audit, baseline_sample, distribution, quantile, size_bucket
from pixark.pipeline.catalog import ArchiveError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def made(ray_session, dev_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    files = odd_source(dev_images)
    write_tree(root / "src", files)
    archive(str(root / "src"), str(root / "archive"), shard_size="10kB", workers=2)
    rows = [r for p in sorted((root / "archive" / "manifests").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return root / "archive", files, rows


def test_totals_and_groups_agree_with_the_manifest(made):
    arc, files, rows = made
    r = audit(str(arc))
    meta = json.loads((arc / "archive.json").read_text())["totals"]
    t = r["totals"]
    # Every source has a record here (unreadable ones would not); damaged ones are kept as original bytes.
    assert r["images"] == len(files) and r["archived"] == len(files) and r["not_archived"] == 0
    assert r["kept"] == meta["kept_unreadable"] >= 2 and r["failed"] == meta["failed"] == 0
    assert t["source_bytes"] == sum(len(b) for b in files.values()) == meta["source_bytes"]
    assert t["compressed_bytes"] == meta["compressed_bytes"] == sum(x["compressed_bytes"] for x in rows)
    assert t["ratio"] == meta["ratio"] and t["bpsp"] == meta["bpsp"] and t["subpixels"] == meta["subpixels"]
    assert t["savings"] == round(1 - t["compressed_bytes"] / t["source_bytes"], 4)

    for key in ("by_codec", "by_folder", "by_size"):
        groups = r[key]
        assert sum(g["images"] for g in groups.values()) == len(files), key
        assert sum(g["compressed_bytes"] for g in groups.values()) == t["compressed_bytes"], key
        assert sum(g["subpixels"] for g in groups.values()) == t["subpixels"], key
    assert set(r["by_codec"]) == {x["codec"] for x in rows}
    assert r["by_codec"]["store"]["bpsp"] is None or r["by_codec"]["store"]["subpixels"] > 0
    assert set(r["by_folder"]) == {posixpath.dirname(k) or "(top level)" for k in files}
    assert {"(top level)", "deep/nested/dir", "broken"} <= set(r["by_folder"])
    assert r["by_folder"]["notes"]["bpsp"] is None  # a text file has no subpixels
    # 64x64 crops; files kept as bytes by format (a JPEG is not "no pixels"), and files that are not images
    assert set(r["by_size"]) == {"<0.1 MP"} | {f"{x['format']} files, not decoded" if x["format"] else "not images"
                                               for x in rows if not x["width"]}
    assert r["by_size"]["JPEG files, not decoded"]["images"] == 2  # a photo and a damaged one
    assert r["by_size"]["not images"]["images"] == 2  # the text file and the empty file
    assert r["bpsp_distribution_16bit"]["count"] == 0

    d = r["bpsp_distribution"]
    with_pixels = [x for x in rows if x["width"]]
    assert d["count"] == len(with_pixels) == sum(d["histogram"]["counts"])
    q = list(d["quantiles"].values())
    assert q == sorted(q) and q[0] == round(min(x["bpsp"] for x in with_pixels), 4)
    assert q[-1] == round(max(x["bpsp"] for x in with_pixels), 4)
    assert r["baseline"] is None


def test_baseline_sample_and_plot(made, tmp_path):
    arc, files, rows = made
    plot = tmp_path / "audit.png"
    r = audit(str(arc), baseline_sample=2, plot=str(plot))
    b = r["baseline"]
    assert b["requested"] == 2 and b["images"] == 2 and b["skipped"] == []
    assert set(b["codecs"]) == set(BASELINE_CODECS)
    for name, c in b["codecs"].items():
        assert c["images"] == 2 and c["bytes"] > 0 and c["bpsp"] > 0, name
        assert c["savings"] == round(1 - c["archive_bytes"] / c["bytes"], 4)
    # The same archive gives the same sample, and the archive side of the comparison is those records' bytes.
    def picks():
        return baseline_sample([{**x, "subpixels": (x["width"] or 0) * (x["height"] or 0) * (x["channels"] or 0)}
                                for x in rows], 2)

    assert [x["image_id"] for x in picks()] == [x["image_id"] for x in picks()]
    assert all(x["status"] == "ok" and x["width"] for x in picks())
    assert b["codecs"]["png"]["archive_bytes"] == sum(x["compressed_bytes"] for x in picks())

    assert r["plot"] == str(plot)
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 300


def test_helpers():
    assert size_bucket(0, 0) == "not images" and size_bucket(0, 0, "TIFF") == "TIFF files, not decoded"
    assert size_bucket(64, 64) == "<0.1 MP"
    # 16-bit images (about twice the bits) get their own distribution, not a second hump in the 8-bit one
    rows = [{"compressed_bytes": 100, "subpixels": 400, "bit_depth": 8},
            {"compressed_bytes": 500, "subpixels": 400, "bit_depth": 16},
            {"compressed_bytes": 9, "subpixels": 0, "bit_depth": None}]
    assert _bpsp(rows, 8)["count"] == 1 and _bpsp(rows, 8)["mean"] == 2.0
    assert _bpsp(rows, 16)["count"] == 1 and _bpsp(rows, 16)["mean"] == 10.0
    assert size_bucket(1000, 1000) == "1-4 MP" and size_bucket(5000, 5000) == ">=16 MP"
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and quantile([5.0], 0.95) == 5.0
    d = distribution([2.0, 2.0, 2.0])
    assert d["count"] == 3 and d["quantiles"]["p50"] == 2.0 and sum(d["histogram"]["counts"]) == 3
    assert distribution([])["count"] == 0


def test_errors_and_cli(made, tmp_path):
    arc, files, _ = made
    with pytest.raises(ArchiveError, match="no pixark archive"):
        audit(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="baseline_sample"):
        audit(str(arc), baseline_sample=-1)
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "audit", str(arc), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["images"] == len(files)
    # `pixark audit ARC > report.txt` writes the report (it went to stderr only, leaving the file empty).
    report = tmp_path / "report.txt"
    with open(report, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "audit", str(arc)], stdout=f,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    assert "by codec" in text and "by folder" in text and str(len(files)) in text
    assert any(str(arc) in line for line in text.splitlines())  # a long path stays whole on its line
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "audit", str(arc), "--plot", "x.jpg"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and ".png" in proc.stderr and "Traceback" not in proc.stderr
