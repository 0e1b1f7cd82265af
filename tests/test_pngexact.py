"""PNG files back byte-exact: a recoded PNG carries the recipe that rewrites its file from its pixels
(codec/pngexact.py), proven at encode time; files no recipe reproduces restore pixel-exact, and say so."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

import pixark.codec as pc
from pixark.codec import pngexact


@pytest.fixture(scope="module")
def photo(dev_images) -> Image.Image:
    im = Image.open(dev_images[0]).convert("RGB")
    return im.crop((0, 0, 96, 80))  # real content, small enough to code fast


def _pil(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(ihdr: bytes, idat: bytes, *extra: bytes) -> bytes:
    return pngexact.SIGNATURE + _chunk(b"IHDR", ihdr) + b"".join(extra) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _interlaced(arr: np.ndarray) -> bytes:
    """An Adam7 RGB PNG (Pillow cannot write one): each pass's rows unfiltered."""
    h, w, _ = arr.shape
    raw = b""
    for y0, x0, dy, dx in ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
                           (1, 0, 2, 1)):
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    return _png(struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1), zlib.compress(raw, 6))


WRITERS = {
    "pillow default": lambda im: _pil(im),
    "pillow optimize": lambda im: _pil(im, optimize=True),
    "pillow level 1": lambda im: _pil(im, compress_level=1),
    "pillow text+dpi": lambda im: _pil(im, dpi=(300, 300), pnginfo=_text()),
    "pillow palette": lambda im: _pil(im.quantize(37)),
    "pillow palette 4-bit": lambda im: _pil(im.quantize(16), bits=4),
    "pillow grey": lambda im: _pil(im.convert("L")),
    "pillow 1-bit odd width": lambda im: _pil(im.convert("1").crop((0, 0, 13, 9))),
    "pillow RGBA": lambda im: _pil(im.convert("RGBA")),
    "pillow LA": lambda im: _pil(im.convert("LA")),
    "pillow grey 16": lambda im: _pil(Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)),
    "libpng (imagecodecs)": lambda im: imagecodecs.png_encode(np.asarray(im)),
    "libpng level 9": lambda im: imagecodecs.png_encode(np.asarray(im), level=9),
    "libpng RGB 16": lambda im: imagecodecs.png_encode(np.asarray(im).astype(np.uint16) * 257 + 3),
    "libspng": lambda im: imagecodecs.spng_encode(np.asarray(im)),
}


def _text():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "kept as it was")
    return info


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_png_files_come_back_byte_identical(photo, writer):
    data = WRITERS[writer](photo)
    stream = pc.encode(data, "jxl-ll", verify=True)
    assert pc.info(stream)["restores"] == "bytes", writer
    back = pc.decode(stream)
    assert back.restores_exact and back.to_file(exact=True) == data
    assert hashlib.sha256(back.to_file()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_real_dev_png_comes_back_byte_identical(dev_images):
    data = dev_images[0].read_bytes()  # written by another program (libpng at level 9 for CID22)
    stream = pc.encode(data, "png")
    assert pc.info(stream)["restores"] == "bytes"
    assert pc.decode(stream).to_file() == data


def test_recipe_survives_auto_and_is_small(photo):
    data = _pil(photo, optimize=True)
    stream = pc.encode(data, "auto", learned="none")
    blob = pc.info(stream)["blobs"]
    assert pngexact.BLOB in blob and blob[pngexact.BLOB] < 400  # IHDR, IEND, 80 filter bytes, zlib settings
    assert pc.decode(stream).to_file() == data


def test_odd_idat_split_is_recorded(photo):
    """IDAT chunk sizes are part of the recipe: a file cut into 1000-, 7- and other-byte chunks comes back so."""
    good = _pil(photo)
    chunks, _ = pngexact._chunks(good)
    idat = b"".join(bytes(b) for k, b, _ in chunks if k == b"IDAT")
    pieces = [idat[:1000], idat[1000:1007], idat[1007:1008], idat[1008:]]
    odd = pngexact.SIGNATURE + _chunk(b"IHDR", bytes(chunks[0][1])) + b"".join(_chunk(b"IDAT", p) for p in pieces) \
        + _chunk(b"tEXt", b"after\x00the data") + _chunk(b"IEND", b"") + b"trailing bytes"
    assert pc.decode(pc.encode(odd, "jxl-ll")).to_file() == odd


UNREPRODUCIBLE = {
    "interlaced": lambda im: _interlaced(np.asarray(im)),
    "libdeflate": lambda im: _recompressed(_pil(im), lambda raw: imagecodecs.deflate_encode(raw, 12)),
    "zlib-ng": lambda im: _recompressed(_pil(im), lambda raw: imagecodecs.zlibng_encode(raw, 6)),
    "bytes after the zlib stream": lambda im: _recompressed(_pil(im), lambda raw: zlib.compress(raw) + b"\0\0"),
    "bad IDAT CRC": lambda im: _bad_crc(_pil(im)),
}


def _recompressed(data: bytes, deflate) -> bytes:
    chunks, _ = pngexact._chunks(data)
    raw = zlib.decompress(b"".join(bytes(b) for k, b, _ in chunks if k == b"IDAT"))
    return _png(bytes(chunks[0][1]), deflate(raw))


def _bad_crc(data: bytes) -> bytes:
    at = data.index(b"IEND") - 4  # the last IDAT's CRC, just before IEND's length
    return data[:at - 4] + bytes(4) + data[at:]


@pytest.mark.parametrize("kind", sorted(UNREPRODUCIBLE))
def test_unreproducible_png_is_marked_pixels_and_restores_pixel_exact(photo, kind):
    data = UNREPRODUCIBLE[kind](photo)
    src = pc.load(data)
    assert src.pixels is not None, kind
    with pytest.raises(pngexact.NotReproducible):
        pngexact.make(data, src.pixels, src.mode)
    stream = pc.encode(data, "jxl-ll", verify=True)
    assert pc.info(stream)["restores"] == "pixels" and pngexact.BLOB not in pc.info(stream)["blobs"]
    back = pc.decode(stream)
    assert not back.restores_exact
    assert pc.load(back.to_file()).pixel_sha256() == src.pixel_sha256()
    with pytest.raises(pc.CodecError, match="pixel-exact only"):
        back.to_file(exact=True)


def test_recipe_that_does_not_reproduce_falls_back_to_pixels(photo):
    data = _pil(photo)
    src = pc.load(data)
    blob = pngexact.make(data, src.pixels, src.mode)
    other = src.pixels.copy()
    other[0, 0, 0] ^= 1
    with pytest.raises(pngexact.NotReproducible, match="not the archived file"):
        pngexact.rewrite(other, src.mode, blob)
    r = pngexact.Recipe.unpack(blob)
    r.level = 1 if r.level != 1 else 2  # as if this zlib deflated otherwise
    r.zlib = "0.0-elsewhere"
    img = pc.DecodedImage(src.pixels, mode=src.mode, format="PNG", metadata=pc.Metadata(png_recipe=r.pack()))
    with pytest.raises(pngexact.NotReproducible, match="zlib 0.0-elsewhere"):
        img.to_file(exact=True)
    assert pc.load(img.to_file()).pixel_sha256() == src.pixel_sha256()  # without exact: the pixels


@pytest.mark.parametrize("damage", ["magic", "version", "json", "body", "truncated"])
def test_damaged_recipe_is_refused_clearly(photo, damage):
    data = _pil(photo)
    src = pc.load(data)
    blob = pngexact.make(data, src.pixels, src.mode)
    bad = {"magic": b"XX" + blob[2:], "version": blob[:5] + b"\x09" + blob[6:],
           "json": blob[:10] + b"[" + blob[11:], "body": blob[:-8] + bytes(8), "truncated": blob[:-3]}[damage]
    with pytest.raises(pngexact.NotReproducible):
        pngexact.rewrite(src.pixels, src.mode, bad)


def test_exact_off_gives_no_recipe(photo):
    stream = pc.encode(_pil(photo), "jxl-ll", exact=False)
    assert pc.info(stream)["restores"] == "pixels"
