"""TIFF files (issue #22): real photos written as TIFF decode to pixels, code like PNGs of the same pixels, and come
back as TIFFs with the same pixels and tags (byte-exact where pixark's rewrite reproduced the file); TIFFs it
does not rewrite (several pages, CMYK, float, JPEG, EXIF sub-IFDs, damage) stay bytes with a reason."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import tifffile
from PIL import Image, TiffImagePlugin

import pixark.codec as pc
from images import photo_array
from pixark.codec import NoPixels

# tags of the files below that must survive a rewrite (the layout tags are the writer's)
KEPT_TAGS = (270, 274, 282, 283, 296, 305, 315, 33432, 34675)


def _tiff(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    kw.setdefault("photometric", "rgb" if arr.ndim == 3 and arr.shape[-1] >= 3 and kw.get("planarconfig") != "separate"
                  else "minisblack")
    tifffile.imwrite(buf, arr, metadata=None, **kw)
    return buf.getvalue()


def _pillow_tiff(arr: np.ndarray, **save) -> bytes:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[270] = "a photo, described"
    tags[274] = 6  # Orientation: rotate 90 degrees when shown
    tags[305] = "GIMP 2.10"
    tags[315] = "an artist"
    tags[33432] = "(c) someone"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF", tiffinfo=tags, dpi=(300, 300), icc_profile=_icc(), **save)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _tags(data: bytes) -> dict:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return {c: tif.pages[0].tags[c].value for c in KEPT_TAGS if c in tif.pages[0].tags}


def _kinds() -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (TIFF bytes, the pixels it holds), all from a real photo."""
    rgb = photo_array(96)
    grey = rgb[:, :, 1].copy()
    deep = rgb.astype(np.uint16) * 251 + 7
    rgba = np.dstack([rgb, grey[:, :, None] // 2 + 60])
    res = {"resolution": (300, 300), "resolutionunit": "INCH", "description": "scan 12", "iccprofile": _icc()}
    return {
        "rgb8-none": (_tiff(rgb, **res), rgb),
        "rgb8-lzw": (_tiff(rgb, compression="lzw", predictor=True, **res), rgb),
        "rgb8-deflate": (_tiff(rgb, compression="zlib", rowsperstrip=16, **res), rgb),
        "rgb8-packbits-bigtiff": (_tiff(rgb, compression="packbits", bigtiff=True), rgb),
        "grey8": (_tiff(grey, compression="lzw"), grey[:, :, None]),
        "rgba8": (_tiff(rgba, extrasamples=["unassalpha"]), rgba),
        "rgb16-big-endian": (_tiff(deep, byteorder=">", compression="zlib", predictor=True), deep),
        "grey16": (_tiff(deep[:, :, 0]), deep[:, :, :1]),
        "rgb8-tiled": (_tiff(rgb, tile=(32, 48), compression="zlib"), rgb),
        "rgb8-planar": (_tiff(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"), rgb),
        "pillow-rgb-lzw": (_pillow_tiff(rgb, compression="tiff_lzw"), rgb),
        "pillow-rgb": (_pillow_tiff(rgb), rgb),
        "pillow-grey16": (_pillow_tiff(deep[:, :, 0].astype(np.uint16)), deep[:, :, :1]),
    }


KINDS = _kinds()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tiff_round_trips_pixel_exact_with_its_tags(kind):
    data, pixels = KINDS[kind]
    img = pc.load(data)
    assert img.pixels is not None, img.reason
    assert img.format == "TIFF" and np.array_equal(img.pixels, pixels)
    # `auto` on one 8-bit RGB file (its learned codec is slow on a CPU); jxl-ll, auto's choice for the others
    stream = pc.encode(data, "auto" if kind in ("rgb8-none", "grey8", "rgb16-big-endian") else "jxl-ll", verify=True)
    assert pc.info(stream)["codec"] != "store"
    back = pc.decode(stream)
    assert np.array_equal(back.pixels, pixels) and back.mode == img.mode
    restored = back.to_file()
    again = pc.load(restored)
    assert again.format == "TIFF" and np.array_equal(again.pixels, pixels)
    assert _tags(restored) == _tags(data)
    # byte-exact exactly when the rewrite at read time reproduced the file, and the record says so too
    assert back.tiff_exact == img.tiff_exact == back.restores_exact == (restored == data)
    assert pc.info(stream)["restores"] == ("bytes" if restored == data else "pixels")
    if kind.startswith(("rgb8", "grey", "rgba", "rgb16")):  # written by tifffile: pixark's rewrite is the file
        assert img.tiff_exact


def test_pillow_tiff_tags_come_back_where_bytes_do_not():
    data, pixels = KINDS["pillow-rgb-lzw"]
    img = pc.load(data)
    assert not img.tiff_exact  # libtiff's LZW and IFD placement differ from tifffile's
    back = pc.decode(pc.encode(data, "jxl-ll"))
    with Image.open(io.BytesIO(back.to_file())) as im:
        assert im.info["dpi"] == (300.0, 300.0) and im.info["icc_profile"] == _icc()
        assert im.tag_v2[274] == 6 and im.tag_v2[270] == "a photo, described" and im.tag_v2[315] == "an artist"
        with Image.open(io.BytesIO(data)) as src:  # Pillow turns the picture as its Orientation tag says
            assert np.array_equal(np.asarray(im), np.asarray(src))
    with Image.open(io.BytesIO(back.to_file("png"))) as im:  # restore --format png: pixels and ICC profile
        assert im.format == "PNG" and im.info["icc_profile"] == _icc() and np.array_equal(np.asarray(im), pixels)


def test_uncompressed_tiff_photo_codes_like_a_png_of_its_pixels():
    data, pixels = KINDS["rgb8-none"]
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    from_tiff, from_png = pc.encode(data, "jxl-ll"), pc.encode(png.getvalue(), "jxl-ll")
    assert len(from_tiff) < len(data) / 2
    assert len(from_tiff) - len(from_png) < len(from_png) // 50 + 2500  # the recipe and the ICC profile


def _multipage() -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for n in range(3):
            tw.write(photo_array(64) // (n + 1), photometric="rgb", metadata=None)
    return buf.getvalue()


def _exif_tiff() -> bytes:
    """A TIFF with an EXIF IFD (a pointer pixark does not rewrite): tifffile's file, the IFD appended at its end."""
    import struct

    # tifffile will not write tag 34665 itself: it writes 34664 and the entry's code is changed after
    size = len(_tiff(photo_array(64), extratags=[(34664, 4, 1, 0, False)]))
    size += size % 2
    head = _tiff(photo_array(64), extratags=[(34664, 4, 1, size, False)])
    entry = struct.pack("<HHI", 34664, 4, 1)
    assert head.count(entry) == 1
    head = head.replace(entry, struct.pack("<HHI", 34665, 4, 1))
    date = b"2024:01:02 03:04:05\x00"
    ifd = struct.pack("<HHHII", 1, 0x9003, 2, len(date), size + 18) + struct.pack("<I", 0) + date
    return head + b"\x00" * (size - len(head)) + ifd


STORED = {
    "multi-page": (_multipage, NoPixels.ANIMATED, "multi-page TIFF (3 pages)"),
    "cmyk": (lambda: _tiff(np.dstack([photo_array(64), photo_array(64)[:, :, :1]]), photometric="separated"),
             NoPixels.MODE, "photometric SEPARATED"),
    "float": (lambda: _tiff(photo_array(64).astype(np.float32)), NoPixels.MODE, "32-bit ieeefp samples"),
    "jpeg": (lambda: _tiff(photo_array(64), compression="jpeg"), NoPixels.FORMAT, "compressed with JPEG"),
    "exif-ifd": (_exif_tiff, NoPixels.FORMAT, "EXIF IFD"),
}


@pytest.mark.parametrize("kind", sorted(STORED))
def test_tiffs_pixark_does_not_rewrite_stay_bytes_with_a_reason(kind):
    make, why, words = STORED[kind]
    data = make()
    img = pc.load(data)
    assert img.pixels is None and img.why is why and words in img.reason, img.reason
    assert "kept as original bytes" in img.reason and not img.tiff_exact
    stream = pc.encode(data, "auto", verify=True)
    assert pc.info(stream)["codec"] == "store"
    assert pc.decode(stream).to_file() == data


def test_damaged_tiffs_are_kept_as_bytes_and_never_crash():
    rng = np.random.default_rng(22)
    sources = [KINDS["rgb8-lzw"][0], KINDS["pillow-rgb-lzw"][0], KINDS["rgb16-big-endian"][0], KINDS["rgb8-none"][0]]
    seen = set()
    for data in sources:
        damaged = [data[:n] for n in (8, 16, 100, len(data) // 3, len(data) - 1)]
        for _ in range(40):
            b = bytearray(data)
            b[int(rng.integers(4, len(b)))] ^= 1 << int(rng.integers(0, 8))
            damaged.append(bytes(b))
        for bad in damaged:
            img = pc.load(bad)
            if img.pixels is None:
                assert img.reason and img.why is not None
                seen.add(img.why)
                assert pc.decode(pc.encode(bad, "auto")).to_file() == bad  # the bytes, unchanged
            else:  # a flip the file survives (a tag value, a sample): the rewrite keeps what it decodes to
                assert np.array_equal(pc.load(img.to_file()).pixels, img.pixels)
    assert NoPixels.DAMAGED in seen
    cut = pc.load(KINDS["rgb8-none"][0][:-1000])
    assert cut.why is NoPixels.DAMAGED and "truncated TIFF" in cut.reason


@pytest.mark.ray
def test_tiffs_archive_and_restore(ray_session, tmp_path):
    from pixark.jobs.archive import archive
    from pixark.pipeline import manifest
    from pixark.pipeline.restore import restore

    files = {"photos/scan.tif": KINDS["rgb8-none"][0], "photos/gimp.tiff": KINDS["pillow-rgb-lzw"][0],
             "photos/deep.tif": KINDS["rgb16-big-endian"][0], "pages.tif": _multipage(),
             "print/cmyk.tif": STORED["cmyk"][0](), "broken/cut.tif": KINDS["rgb8-lzw"][0][:-500]}
    for rel, data in files.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_bytes(data)
    s = archive(str(tmp_path / "src"), str(tmp_path / "arc"), workers=1)
    assert s["images"] == len(files)
    from fsspec.implementations.local import LocalFileSystem

    rows = {r["image_id"]: r for r in manifest.read_manifests(LocalFileSystem(), str(tmp_path / "arc")).to_pylist()}
    for rel in ("photos/scan.tif", "photos/gimp.tiff", "photos/deep.tif"):
        assert rows[rel]["status"] == "ok" and rows[rel]["codec"] != "store" and rows[rel]["pixel_sha256"], rel
        assert rows[rel]["compressed_bytes"] < len(files[rel]) * 0.8, rel
    assert rows["pages.tif"]["codec"] == "store" and "multi-page" in rows["pages.tif"]["note"]
    assert rows["print/cmyk.tif"]["codec"] == "store" and "SEPARATED" in rows["print/cmyk.tif"]["note"]
    assert rows["broken/cut.tif"]["status"] == "kept_unreadable" and "truncated TIFF" in rows["broken/cut.tif"]["error"]

    summary = restore(str(tmp_path / "arc"), str(tmp_path / "out"))
    assert summary["ok"] and summary["written"] == len(files), summary
    out = {rel: (tmp_path / "out" / rel).read_bytes() for rel in files}
    for rel in ("pages.tif", "print/cmyk.tif", "broken/cut.tif", "photos/scan.tif", "photos/deep.tif"):
        assert out[rel] == files[rel], rel  # stored bytes, or a rewrite that reproduced the file
    gimp = pc.load(out["photos/gimp.tiff"])
    assert np.array_equal(gimp.pixels, KINDS["pillow-rgb-lzw"][1]) and _tags(out["photos/gimp.tiff"]) == _tags(
        files["photos/gimp.tiff"])
