"""Codec API: round trips of every classical codec and of `auto` on real and odd images, metadata kept."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import pixark.codec as pc
from images import photo_array, photos, png_bytes

CLASSICAL = ["store", "png", "webp-ll", "jxl-ll", "jxl-ll:effort=9"]


@pytest.mark.parametrize("codec", CLASSICAL)
def test_classical_round_trip_on_real_photos(codec):
    for name, data in photos(2):
        src = pc.load(data)
        stream = pc.encode(data, codec)
        back = pc.decode(stream)
        assert back.pixels.dtype == src.pixels.dtype
        assert np.array_equal(back.pixels, src.pixels), name
        assert pc.info(stream)["codec"] == codec.split(":")[0]


def test_auto_is_never_larger_than_storing_the_file():
    for name, data in photos(3):
        stored = pc.encode(data, "store")
        auto = pc.encode(data, "auto")
        assert len(auto) <= len(stored), name
        assert np.array_equal(pc.decode(auto).pixels, pc.load(data).pixels)



def _odd_images() -> dict[str, bytes]:
    rgb = photo_array(64)
    grey = rgb[:, :, 1].copy()
    rgba = np.dstack([rgb, (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)])
    deep_grey = (grey.astype(np.uint16) * 257 + 3)
    deep_rgb = (rgb.astype(np.uint16) * 251 + 7)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=90)
    gif = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(gif, format="GIF")
    return {
        "grey": png_bytes(grey),
        "rgba": png_bytes(rgba),
        "la": Image_to_png(Image.fromarray(rgba).convert("LA")),
        "grey16": imagecodecs.png_encode(deep_grey),
        "rgb16": imagecodecs.png_encode(deep_rgb),
        "rgba16": imagecodecs.png_encode(np.dstack([deep_rgb, deep_grey])),
        "palette": Image_to_png(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=37)),
        "bilevel": Image_to_png(Image.fromarray(grey).convert("1")),
        "gif": gif.getvalue(),
        "jpeg": jpeg.getvalue(),
        "bmp": Image_to_bytes(Image.fromarray(rgb), "BMP"),
    }


def Image_to_png(im: Image.Image, **save) -> bytes:
    return Image_to_bytes(im, "PNG", **save)


def Image_to_bytes(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


EXPECTED_MODE = {"grey": "L", "rgba": "RGBA", "la": "LA", "grey16": "I;16", "rgb16": "RGB;16", "rgba16": "RGBA;16",
                 "palette": "P", "bilevel": "1", "gif": "P", "bmp": "RGB"}


@pytest.mark.parametrize("kind", sorted(EXPECTED_MODE) + ["jpeg"])
def test_auto_handles_every_kind_of_input(kind):
    from pixark.codec import api

    data = _odd_images()[kind]
    src = pc.load(data)
    stream = pc.encode(data, "auto")
    back = pc.decode(stream)
    meta = pc.info(stream)
    assert len(stream) <= len(pc.encode(data, "store"))
    if kind == "jpeg":  # lossy originals are kept byte for byte: Lepton recompresses JPEG files exactly
        assert src.pixels is None and meta["codec"] == "lepton"
        assert back.to_file() == data and back.pixels is None
        return
    assert src.mode == EXPECTED_MODE[kind]
    assert meta["codec"] in ("jxl-ll", "png", "store") + api.AUTO_LEARNED
    assert np.array_equal(back.pixels, src.pixels)
    # written back in its original format, the file decodes to the same pixels and mode
    again = pc.load(back.to_file())
    assert again.mode == src.mode and again.format == src.format
    assert np.array_equal(again.pixels, src.pixels)


def test_sixteen_bit_colour_keeps_the_low_byte():
    data = _odd_images()["rgb16"]
    img = pc.load(data)
    assert img.pixels.dtype == np.uint16 and img.bit_depth == 16
    assert np.array_equal(img.pixels, imagecodecs.png_decode(data))
    for codec in ("png", "jxl-ll"):
        assert np.array_equal(pc.decode(pc.encode(data, codec)).pixels, img.pixels)


def test_webp_refuses_sixteen_bit_and_codes_grey():
    with pytest.raises(pc.UnsupportedImage, match="8 bits"):
        pc.encode(_odd_images()["grey16"], "webp-ll")
    for kind in ("grey", "la", "rgba"):
        data = _odd_images()[kind]
        assert np.array_equal(pc.decode(pc.encode(data, "webp-ll")).pixels, pc.load(data).pixels)


def test_metadata_survives_recoding():
    rgb = photo_array(48)
    icc = _srgb_icc()
    exif = Image.Exif()
    exif[0x010F] = "pixark test camera"  # Make
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "a test photo")
    info.add_itxt("Comment", "ünïcödé text")
    data = Image_to_png(Image.fromarray(rgb), icc_profile=icc, exif=exif.tobytes(), pnginfo=info, dpi=(300, 300))
    stream = pc.encode(data, "jxl-ll")
    back = pc.decode(stream)
    assert back.metadata.icc_profile == icc
    restored = Image.open(io.BytesIO(back.to_file()))
    assert restored.info.get("icc_profile") == icc
    assert restored.getexif()[0x010F] == "pixark test camera"
    assert restored.text["Title"] == "a test photo"
    assert restored.text["Comment"] == "ünïcödé text"
    assert tuple(round(v) for v in restored.info["dpi"]) == (300, 300)
    assert np.array_equal(np.asarray(restored), rgb)


def test_metadata_on_sixteen_bit_colour_png():
    deep = (photo_array(32).astype(np.uint16) * 257)
    img = pc.DecodedImage.from_array(deep)
    img.metadata.icc_profile = _srgb_icc()
    img.metadata.info = {"text": {"Author": "pixark"}}
    back = pc.decode(pc.encode(img, "png"))
    written = back.to_file("png")
    again = Image.open(io.BytesIO(written))
    assert again.info.get("icc_profile") == _srgb_icc()
    assert again.text["Author"] == "pixark"
    assert np.array_equal(imagecodecs.png_decode(written), deep)


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_arrays_round_trip_and_store_raw():
    arr = photo_array(40)
    for codec in ("store", "png", "jxl-ll", "auto"):
        back = pc.decode(pc.encode(arr, codec))
        assert np.array_equal(back.pixels, arr) and back.mode == "RGB"
    assert pc.info(pc.encode(arr, "store"))["params"] == {"raw": 1}


def test_files_that_cannot_be_recoded_are_stored_byte_for_byte():
    blobs = {
        "empty": b"",
        "text": b"not an image at all\n" * 10,
        "truncated png": png_bytes(photo_array(64))[:300],
    }
    for name, data in blobs.items():
        img = pc.load(data)
        assert img.pixels is None and img.reason, name
        stream = pc.encode(data)
        assert pc.info(stream)["codec"] == "store"
        assert pc.decode(stream).to_file() == data


def test_files_kept_as_bytes_say_why_with_a_type_the_pipeline_decides_by():
    """Each kind of file without recodable pixels carries a ``NoPixels`` member; the archive's decision (damaged
    image -> failed row, or kept on purpose -> ok) follows that type, not the wording of ``reason``."""
    import dataclasses

    from pixark.pipeline.coding import damage_reason

    def pil(fmt, arr=None, **kw):
        buf = io.BytesIO()
        Image.fromarray(photo_array(32) if arr is None else arr).save(buf, format=fmt, **kw)
        return buf.getvalue()

    frames = [Image.fromarray(photo_array(16)), Image.fromarray(255 - photo_array(16))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    jpeg = pil("JPEG", photo_array(96))
    cases = {  # name: (bytes, why, damaged)
        "empty": (b"", pc.NoPixels.EMPTY, False),
        "text": (b"not an image at all\n" * 10, pc.NoPixels.NOT_AN_IMAGE, False),
        "png magic then junk": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, pc.NoPixels.NOT_AN_IMAGE, True),
        "truncated png": (png_bytes(photo_array(64))[:300], pc.NoPixels.DAMAGED, True),
        "jpeg": (jpeg, pc.NoPixels.FORMAT, False),
        "truncated jpeg": (jpeg[:len(jpeg) * 3 // 4], pc.NoPixels.FORMAT, True),
        "animated gif": (gif.getvalue(), pc.NoPixels.ANIMATED, False),
        "zero-width bmp": (pil("BMP")[:18] + (0).to_bytes(4, "little") + pil("BMP")[22:], None, None),
    }
    for name, (data, why, damaged) in cases.items():
        img = pc.load(data)
        assert img.pixels is None and img.reason, name
        if why is None:  # whatever Pillow makes of it, the decision follows the type
            why, damaged = img.why, bool(damage_reason(img, data))
        assert img.why is why, (name, img.why)
        for reason in (img.reason, "reworded for people"):
            assert bool(damage_reason(dataclasses.replace(img, reason=reason), data)) == damaged, (name, reason)
    assert pc.NoPixels.FORMAT.on_purpose and not pc.NoPixels.DAMAGED.on_purpose


def test_unknown_codec_and_bad_parameters_are_clear_errors():
    arr = photo_array(8)
    with pytest.raises(pc.UnsupportedStream, match="unknown codec 'nope'"):
        pc.encode(arr, "nope")
    with pytest.raises(ValueError, match="no parameter"):
        pc.encode(arr, "png:quality=3")
    with pytest.raises(pc.UnsupportedImage, match="cannot code"):
        pc.encode(b"hello", "png")


def test_verify_option_decodes_before_returning():
    arr = photo_array(16)
    assert np.array_equal(pc.decode(pc.encode(arr, "png", verify=True)).pixels, arr)


def test_every_registered_codec_describes_itself():
    rows = {c.name: c.describe() for c in pc.all_codecs()}
    assert {"store", "png", "webp-ll", "jxl-ll"} <= set(rows)
    for row in rows.values():
        assert row["summary"] and isinstance(row["params"], dict)


def test_auto_learned_all_picks_the_smallest_learned_or_classical_stream():
    """auto:learned=all tries every learned codec with shipped weights beside jxl-ll and keeps the smallest;
    learned=none tries jxl-ll alone; a bad choice is an error."""
    from pixark.codec import api, registry

    img = pc.load(photo_array(48))
    learned = [c.name for c in registry.all_codecs() if c.learned and c.available()]
    if not learned:
        pytest.skip("no learned codec has shipped weights")
    names = [n for n, _ in api.candidates(img, learned="all")]
    assert set(names) == set(learned) | {"jxl-ll"}
    assert [n for n, _ in api.candidates(img, learned="none")] == ["jxl-ll"]
    sizes = {n: len(pc.encode(img, n)) for n in names}
    data = pc.encode(img, "auto:learned=all")
    assert len(data) == min(sizes.values()) and pc.info(data)["codec"] == min(sizes, key=sizes.get)
    assert np.array_equal(pc.decode(data).pixels, img.pixels)
    with pytest.raises(ValueError, match="learned="):
        pc.encode(img, "auto:learned=maybe")


def test_auto_tries_mspsm_for_8_bit_rgb_only():
    """The default `auto` tries the proven learned codec (mspsm, when its weights ship) beside jxl-ll for 8-bit RGB,
    and jxl-ll alone for other images; its stream is the smaller of the two and decodes exactly."""
    from pixark.codec import api, registry

    if not registry.get("mspsm").available():
        pytest.skip("mspsm has no shipped weights")
    rgb = pc.load(photo_array(40))
    assert [n for n, _ in api.candidates(rgb)] == ["mspsm", "jxl-ll"]
    assert [n for n, _ in api.candidates(pc.load(photo_array(40)[:, :, 0]))] == ["jxl-ll"]
    data = pc.encode(rgb, "auto")
    sizes = [len(pc.encode(rgb, n)) for n in ("mspsm", "jxl-ll")]
    assert len(data) == min(sizes) and np.array_equal(pc.decode(data).pixels, rgb.pixels)


def test_auto_keeps_the_smallest_candidate(monkeypatch):
    """With a learned codec in auto's list, auto still returns whichever candidate is smallest."""
    from pixark.codec import api

    img = pc.load(png_bytes(photo_array(32)))
    monkeypatch.setattr(api, "AUTO_LEARNED", ("png",))  # any registered codec stands in for a learned one here
    names = [n for n, _ in api.candidates(img)]
    assert names[0] == "png" and "jxl-ll" in names
    sizes = {n: len(pc.encode(img, n)) for n in names}
    assert len(pc.encode(img, "auto")) == min(min(sizes.values()), len(pc.encode(img, "store")))


def test_sizing_decode_tasks_by_codec_does_not_import_torch():
    """A driver that only asks which records are learned (to size decode tasks) stays light: learned codecs are
    known by name without importing them (they import torch)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from pixark.pipeline import catalog, restore, verify\n"
            "rows = [{'codec': c, 'offset': i, 'width': 64, 'height': 64} for i, c in enumerate(['mspsm', 'png', 'msr'])]\n"
            "assert [catalog.is_learned(r['codec']) for r in rows] == [True, False, True]\n"
            "assert catalog.is_learned('no-such-codec') is False and catalog.is_learned(None) is False\n"
            "catalog.batches(rows, 8)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
