"""restore_exact: every manifest row says whether restore gives back the source file's bytes or its pixels; the
archive summary and the audit count them; `restore --exact` refuses a selection holding pixel-only records; old
archives without the column still read."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from archive_helpers import write_tree
from pixark import codec as pc
from pixark.jobs.archive import archive
from pixark.pipeline import manifest
from pixark.pipeline.audit import audit
from pixark.pipeline.restore import RestoreError, restore
from test_pngexact import _interlaced, _recompressed

pytestmark = pytest.mark.ray
OLD = Path(__file__).parent / "archives" / "v1-small"
PIXELS = {"odd/interlaced.png", "odd/zlib-ng.png"}


def _pil(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def made(ray_session, dev_images, tmp_path_factory):
    import imagecodecs
    import numpy as np

    root = tmp_path_factory.mktemp("exact")
    im = Image.open(dev_images[1]).convert("RGB").crop((0, 0, 192, 144))
    files = {
        "pillow.png": _pil(im),
        "resaved/pillow-level1.png": _pil(im, compress_level=1),  # same pixels, other bytes: a record of its own
        "libpng/level9.png": imagecodecs.png_encode(np.asarray(im), level=9),
        "photo.jpg": _pil(im, "JPEG", quality=90),
        "notes.txt": b"not an image\n",
        "odd/interlaced.png": _interlaced(np.asarray(im)),
        "odd/zlib-ng.png": _recompressed(_pil(im), lambda raw: imagecodecs.zlibng_encode(raw, 6)),
    }
    write_tree(root / "src", files)
    s = archive(str(root / "src"), str(root / "archive"), workers=1, codec="auto:learned=none")
    return root / "archive", files, s


def _rows(arc: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in manifest.read_manifests(str(arc)).to_pylist()}


def test_manifest_summary_and_audit_say_which(made):
    arc, files, summary = made
    rows = _rows(arc)
    assert {i: r["restore_exact"] for i, r in rows.items()} == {i: "pixels" if i in PIXELS else "bytes" for i in files}
    assert rows["pillow.png"]["codec"] not in ("store", "lepton")  # recoded, yet its bytes come back
    # same pixels: the two files with recipes keep a record each (each gives back its own bytes); the two without
    # share one, as any same-pixel files did before recipes
    assert rows["resaved/pillow-level1.png"]["duplicate_of"] is None
    assert rows["odd/zlib-ng.png"]["duplicate_of"] == "odd/interlaced.png" and summary["duplicates"] == 1
    assert summary["restore_exact"] == {"bytes": 5, "pixels": 2} and summary["restore_exact_inferred"] == 0
    assert json.loads((arc / "archive.json").read_text())["totals"]["restore_exact"] == {"bytes": 5, "pixels": 2}
    rep = audit(str(arc))
    assert rep["restore_exact"] == {"bytes": 5, "pixels": 2} and rep["restore_exact_inferred"] == 0
    assert rep["by_exact"]["pixels"]["images"] == 2


def test_restore_gives_bytes_back_and_pixels_where_promised(made, tmp_path):
    arc, files, _ = made
    s = restore(str(arc), str(tmp_path / "out"))
    assert s["ok"] and s["written"] == 7 and s["exact"] == {"bytes": 5, "pixels": 2} and not s["not_exact"]
    for rel, data in files.items():
        got = (tmp_path / "out" / rel).read_bytes()
        if rel in PIXELS:
            assert got != data and pc.load(got).pixel_sha256() == pc.load(data).pixel_sha256(), rel
        else:
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), rel


def test_restore_exact_refuses_pixel_records_and_writes_nothing(made, tmp_path):
    arc, files, _ = made
    with pytest.raises(RestoreError, match="2 of the 7 selected") as err:
        restore(str(arc), str(tmp_path / "out"), exact=True)
    assert all(p in str(err.value) for p in PIXELS) and "pillow.png" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    s = restore(str(arc), str(tmp_path / "out"), include=["pillow.png", "libpng/*", "*.jpg"], exact=True)
    assert s["ok"] and s["written"] == 3 and s["exact"] == {"bytes": 3, "pixels": 0}
    with pytest.raises(RestoreError, match="--format png"):
        restore(str(arc), str(tmp_path / "png"), include=["pillow.png"], exact=True, format="png")


def test_verify_proves_the_recipes_again(made):
    from pixark.pipeline import verify as v

    arc, files, _ = made
    rep = v.verify(str(arc))
    assert rep["ok"], rep
    data = files["pillow.png"]
    src = pc.load(data)
    row = {"image_id": "pillow.png", "pixel_sha256": src.pixel_sha256(),
           "source_sha256": hashlib.sha256(data).hexdigest()}
    from pixark.codec import pngexact

    recipe = pngexact.Recipe.unpack(pngexact.make(data, src.pixels, src.mode))
    recipe.level = 1  # as a zlib that deflates otherwise would
    src.metadata.png_recipe = recipe.pack()
    src.original = None  # as decoded from the record: pixels and the recipe
    assert v._judge(row, src)["status"] == v.NOT_EXACT


def test_cli_exact_refusal_and_summary(made, tmp_path):
    arc, files, _ = made
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", str(arc), str(tmp_path / "o"),
                           "--exact"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "odd/interlaced.png" in proc.stderr and "pixel-exact only" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "audit", str(arc)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "restore gives back" in proc.stdout


def test_old_archive_without_the_column(tmp_path):
    """tests/archives/v1-small predates restore_exact: stored files count as bytes, recoded ones as pixels, and
    the counts say they were inferred."""
    arc = tmp_path / "archive"
    shutil.copytree(OLD, arc)
    rep = audit(str(arc))
    assert rep["restore_exact"] == {"bytes": 5, "pixels": 1} and rep["restore_exact_inferred"] == 6
    with pytest.raises(RestoreError, match="cats/grey.png"):
        restore(str(arc), str(tmp_path / "out"), exact=True)
    s = restore(str(arc), str(tmp_path / "out"), include=["baby.png", "dogs/*"], exact=True)
    assert s["ok"] and s["exact"] == {"bytes": 3, "pixels": 0}
