"""TIFF files as pixels plus a recipe to write them back (tifffile), for ``image.DecodedImage``.

``read`` decodes a single-page TIFF of 8- or 16-bit unsigned grey / grey+alpha / RGB / RGBA samples (strips or
tiles, uncompressed, LZW, Deflate or PackBits) and returns its pixels, its ICC profile and a *recipe*: the layout
(byte order, compression, predictor, strips or tiles, planar configuration, alpha kind) and every other tag of
the file, as its raw value bytes. ``write`` turns pixels + recipe back into a TIFF with tifffile. ``read``
rewrites the file itself before it accepts it: when the rewrite is the source byte for byte the recipe says
``exact`` (the archive restores the very file); otherwise the rewrite must at least decode to the same pixels,
or the file is refused and kept as its bytes. Refusals raise UnsupportedImage with a NoPixels reason.

Tags kept (all of them except the ones the writer derives from the pixels and layout): ICC profile,
resolution and unit, orientation, image description, software, date/time, artist, copyright, make/model, XMP,
IPTC, Photoshop data, page name, document name, subfile type, private tags, ... Refused (kept as bytes): tags
that point into the file (EXIF, GPS and Interoperability sub-IFDs, SubIFDs, FreeOffsets, JPEG interchange),
several pages, float / signed / 1-bit / 12-bit samples, CMYK, YCbCr, palette, Lab and other photometrics,
JPEG and other compressions, FillOrder 2, volumetric tiles, tag values over 4 MiB in all.

The recipe is small JSON (in the container header's ``info["tiff"]``); the ICC profile travels as the ``icc``
blob like a PNG's, so a PNG conversion of the record carries it too.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from .errors import CorruptStream, UnsupportedImage
from .image import MAX_PIXELS, NoPixels

MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

# Compressions whose strips tifffile both decodes and writes losslessly (TIFF compression tag values).
COMPRESSIONS = {1: "none", 5: "lzw", 8: "adobe_deflate", 32946: "deflate", 32773: "packbits"}
# Tags the writer derives from the pixels and the recipe's layout fields (sizes, samples, strip/tile offsets and
# counts, compression, predictor, planar configuration, extra samples, sample format, fill order).
_DERIVED = {256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339}
_RESOLUTION = (282, 283, 296)  # through tifffile's resolution arguments (it always writes these three)
_ICC = 34675
# Tags whose values are offsets into the file (or sub-IFDs): copying the bytes would point at nothing.
_POINTERS = {288: "FreeOffsets", 289: "FreeByteCounts", 330: "SubIFDs", 400: "GlobalParametersIFD",
             513: "JPEGInterchangeFormat", 514: "JPEGInterchangeFormatLength", 34665: "EXIF IFD",
             34853: "GPS IFD", 40965: "Interoperability IFD"}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8}
MAX_TAG_BYTES = 1 << 22  # tag values travel as hex in the JSON header (16 MiB at most): a bound well inside it


def is_tiff(data: bytes) -> bool:
    return data[:4] in MAGICS


def is_exact(info: dict) -> bool:
    """Whether an image's ``info`` (a header's or a DecodedImage's) holds a TIFF recipe whose rewrite was the
    source file byte for byte when it was read."""
    recipe = info.get("tiff")
    return isinstance(recipe, dict) and recipe.get("exact") is True


def read(data: bytes) -> tuple[np.ndarray, str, dict, bytes | None]:
    """(pixels HxWxC in native byte order, Pillow-style mode, recipe, ICC profile or None). Raises
    UnsupportedImage(reason, NoPixels) for TIFFs kept as bytes."""
    import tifffile

    try:
        with _quiet(), tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = len(tif.pages)
            if pages == 0:
                raise UnsupportedImage("TIFF without a readable image directory (truncated?)", NoPixels.DAMAGED)
            if pages != 1:
                raise UnsupportedImage(f"multi-page TIFF ({pages} pages): kept as original bytes", NoPixels.ANIMATED)
            page = tif.pages.first
            recipe, icc = _recipe(page, data, tif.is_bigtiff, tif.byteorder)
            if page.imagelength * page.imagewidth > MAX_PIXELS or 0 in (page.imagelength, page.imagewidth):
                raise UnsupportedImage(f"TIFF of {page.imagewidth}x{page.imagelength} pixels is empty or larger than "
                                       f"{MAX_PIXELS} pixels", NoPixels.SIZE)
            _check_segments(page, data, recipe)
            arr = _samples(page, recipe)
    except UnsupportedImage:
        raise
    except Exception as exc:  # tifffile's and the decoders' errors on damaged files
        raise UnsupportedImage(f"corrupt or truncated TIFF data: {type(exc).__name__}: {exc}"[:400],
                               NoPixels.DAMAGED) from exc
    channels = recipe["channels"]
    if arr.shape != (page.imagelength, page.imagewidth, channels):
        raise UnsupportedImage(f"TIFF decoded to {arr.shape}, its tags say {page.imagewidth}x{page.imagelength}x"
                               f"{channels}", NoPixels.DAMAGED)
    mode = _mode(channels, arr.dtype)
    try:
        again = write(arr, recipe, icc)
    except Exception as exc:  # a layout tifffile will not write (e.g. tiles not a multiple of 16)
        raise UnsupportedImage(f"TIFF layout pixark cannot rewrite ({type(exc).__name__}: {exc}): kept as "
                               "original bytes", NoPixels.FORMAT) from exc
    recipe["exact"] = again == data
    if not recipe["exact"]:
        # restored files are rewrites: they must hold the same pixels, or the file is kept as it is
        try:
            with _quiet(), tifffile.TiffFile(io.BytesIO(again)) as tif:
                back = _samples(tif.pages.first, recipe)
        except Exception as exc:
            raise UnsupportedImage(f"TIFF rewrite does not read back ({exc}): kept as original bytes",
                                   NoPixels.FORMAT) from exc
        if back.shape != arr.shape or back.dtype != arr.dtype or not np.array_equal(back, arr):
            raise UnsupportedImage("TIFF rewrite changes the pixels: kept as original bytes", NoPixels.FORMAT)
    return arr, mode, recipe, icc


def _samples(page, recipe: dict) -> np.ndarray:
    """A page's pixels as H x W x channels in native byte order (planes of a separate-planar TIFF moved last)."""
    arr = page.asarray()
    if recipe["planar"] == "separate" and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))


def _mode(channels: int, dtype: np.dtype) -> str:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    if dtype == np.uint16:
        mode = "I;16" if mode == "L" else mode + ";16"
    return mode


def _recipe(page, data: bytes, bigtiff: bool, byteorder: str) -> tuple[dict, bytes | None]:
    """The layout and tags of ``page``, or UnsupportedImage saying why it is kept as bytes."""
    refuse = lambda what, why=NoPixels.FORMAT: UnsupportedImage(f"{what}: kept as original bytes", why)  # noqa: E731
    tags = {t.code: t for t in page.tags.values()}
    for code, name in _POINTERS.items():
        if code in tags:
            raise refuse(f"TIFF with a {name} tag ({code}), which pixark does not rewrite")
    compression = int(page.compression)
    if compression not in COMPRESSIONS:
        name = getattr(page.compression, "name", str(compression))
        raise refuse(f"TIFF compressed with {name}, which pixark does not recode")
    photometric = int(page.photometric)
    spp = int(page.samplesperpixel)
    base = {1: 1, 2: 3}.get(photometric)  # MINISBLACK, RGB
    if base is None:
        name = getattr(page.photometric, "name", str(photometric))
        raise refuse(f"TIFF with photometric {name}, which pixark does not recode", NoPixels.MODE)
    extrasamples = [int(v) for v in page.extrasamples]
    if spp not in (base, base + 1) or len(extrasamples) != spp - base:
        raise refuse(f"TIFF with {spp} samples per pixel for photometric {page.photometric.name}", NoPixels.MODE)
    bits = page.bitspersample
    if int(page.sampleformat) != 1 or bits not in (8, 16):
        raise refuse(f"TIFF with {bits}-bit {page.sampleformat.name.lower()} samples (pixark recodes 8/16-bit "
                     "unsigned)", NoPixels.MODE)
    if any(int(v) != bits for v in np.atleast_1d(tags[258].value)):
        raise refuse("TIFF whose samples differ in bit depth", NoPixels.MODE)
    if 266 in tags and int(tags[266].value) != 1:
        raise refuse("TIFF with FillOrder 2 (bits reversed)")
    if int(page.imagedepth) != 1 or int(page.tiledepth) != 1:
        raise refuse("volumetric TIFF")
    if int(page.predictor) not in (1, 2):
        raise refuse(f"TIFF with predictor {page.predictor.name}")
    recipe: dict = {
        "byteorder": byteorder, "bigtiff": bool(bigtiff), "compression": compression,
        "predictor": int(page.predictor), "planar": "separate" if int(page.planarconfig) == 2 and spp > 1 else "contig",
        "photometric": "rgb" if photometric == 2 else "minisblack", "channels": spp, "extrasamples": extrasamples,
    }
    if page.is_tiled:
        recipe["tile"] = [int(page.tilelength), int(page.tilewidth)]
    else:
        recipe["rowsperstrip"] = int(min(page.rowsperstrip, page.imagelength))
    if all(c in tags for c in _RESOLUTION):
        (xn, xd), (yn, yd) = tags[282].value, tags[283].value
        recipe["resolution"] = [[int(xn), int(xd)], [int(yn), int(yd)], int(tags[296].value)]
    kept, total, icc = [], 0, None
    for code, tag in sorted(tags.items()):
        if code in _DERIVED or code in _RESOLUTION:
            continue
        if tag.dtype not in _TYPE_SIZES:
            raise refuse(f"TIFF tag {code} of type {tag.dtype}, which pixark does not rewrite")
        size = _TYPE_SIZES[int(tag.dtype)] * int(tag.count)
        raw = bytes(data[tag.valueoffset: tag.valueoffset + size])
        if len(raw) != size:
            raise UnsupportedImage(f"TIFF tag {code} runs past the end of the file", NoPixels.DAMAGED)
        total += size
        if code == _ICC:
            icc = raw
            kept.append([code, int(tag.dtype), int(tag.count), None])  # the value is the icc blob
        else:
            kept.append([code, int(tag.dtype), int(tag.count), raw.hex()])
    if total > MAX_TAG_BYTES:
        raise refuse(f"TIFF with {total} bytes of tag values (over {MAX_TAG_BYTES})")
    recipe["tags"] = kept
    return recipe, icc


def _check_segments(page, data: bytes, recipe: dict) -> None:
    """Each strip or tile must lie inside the file and (de)compress to exactly the samples it holds. tifffile
    would read a strip past the end as zeros, and LZW and PackBits have no checksum: a damaged strip decodes to
    the wrong length far more often than to the right one. A file failing this is kept as its bytes."""
    import imagecodecs

    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets or len(offsets) != len(counts):
        raise UnsupportedImage("TIFF without strip or tile offsets", NoPixels.DAMAGED)
    itemsize = page.bitspersample // 8
    spp = recipe["channels"] if recipe["planar"] == "contig" else 1
    if "tile" in recipe:
        sizes = [recipe["tile"][0] * recipe["tile"][1] * spp * itemsize] * len(offsets)
    else:
        rps, h = recipe["rowsperstrip"], page.imagelength
        per_plane = -(-h // rps)
        sizes = [min(rps, h - (n % per_plane) * rps) * page.imagewidth * spp * itemsize for n in range(len(offsets))]
        if len(offsets) != per_plane * (recipe["channels"] if recipe["planar"] == "separate" else 1):
            raise UnsupportedImage(f"TIFF with {len(offsets)} strips where its size implies another number",
                                   NoPixels.DAMAGED)
    decode = {5: imagecodecs.lzw_decode, 8: imagecodecs.zlib_decode, 32946: imagecodecs.zlib_decode,
              32773: imagecodecs.packbits_decode}.get(recipe["compression"])
    for off, n, want in zip(offsets, counts, sizes):
        if n <= 0 or off + n > len(data):
            raise UnsupportedImage(f"truncated TIFF: a strip or tile of {n} bytes at {off} lies past the end of "
                                   f"the {len(data)}-byte file", NoPixels.DAMAGED)
        if decode is None:
            if n < want:
                raise UnsupportedImage(f"TIFF strip of {n} bytes where {want} are needed", NoPixels.DAMAGED)
            continue
        try:
            got = len(decode(data[off: off + n]))
        except Exception as exc:
            raise UnsupportedImage(f"corrupt TIFF strip at {off}: {type(exc).__name__}: {exc}"[:300],
                                   NoPixels.DAMAGED) from exc
        if got != want:
            raise UnsupportedImage(f"TIFF strip at {off} decodes to {got} bytes, not {want}: damaged or written "
                                   "oddly; kept as original bytes", NoPixels.FORMAT)


def write(pixels: np.ndarray, recipe: dict, icc: bytes | None) -> bytes:
    """A TIFF of ``pixels`` laid out and tagged as ``recipe`` says. A recipe of the wrong shape (a damaged or
    hostile stream) raises CorruptStream."""
    import tifffile

    try:
        layout = _layout(recipe, pixels)
        extratags = []
        for code, dtype, count, value in recipe["tags"]:
            raw = icc if code == _ICC and value is None else bytes.fromhex(value)
            if raw is None or _TYPE_SIZES[dtype] * count != len(raw):
                raise ValueError(f"tag {code} has {len(raw or b'')} bytes for {count} of type {dtype}")
            # every value as the bytes it had in the file (same byte order), packed by tifffile as they are
            extratags.append((code, dtype, count, raw, False))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptStream(f"unusable TIFF recipe in the stream: {type(exc).__name__}: {exc}") from exc
    data = pixels if layout["planarconfig"] == "contig" else np.moveaxis(pixels, -1, 0)
    if pixels.shape[2] == 1:
        data = pixels[:, :, 0]
    buf = io.BytesIO()
    with _quiet(), tifffile.TiffWriter(buf, byteorder=recipe["byteorder"], bigtiff=recipe["bigtiff"]) as tw:
        tw.write(np.ascontiguousarray(data), metadata=None, software=False, description=None, datetime=None,
                 extratags=extratags, **layout)
    return buf.getvalue()


def _layout(recipe: dict, pixels: np.ndarray) -> dict:
    channels = int(recipe["channels"])
    if pixels.ndim != 3 or pixels.shape[2] != channels or recipe["byteorder"] not in ("<", ">"):
        raise ValueError("recipe does not match the pixels")
    out = {
        "photometric": {"rgb": "rgb", "minisblack": "minisblack"}[recipe["photometric"]],
        "planarconfig": {"contig": "contig", "separate": "separate"}[recipe["planar"]],
        "compression": COMPRESSIONS[int(recipe["compression"])] if int(recipe["compression"]) != 1 else None,
        "predictor": {1: None, 2: True}[int(recipe["predictor"])],
        "extrasamples": [int(v) for v in recipe["extrasamples"]] or None,
    }
    if out["compression"] is None:
        out["predictor"] = None
    if "tile" in recipe:
        out["tile"] = tuple(int(v) for v in recipe["tile"])
    else:
        out["rowsperstrip"] = int(recipe["rowsperstrip"])
    if "resolution" in recipe:
        (xn, xd), (yn, yd), unit = recipe["resolution"]
        out["resolution"] = ((int(xn), int(xd)), (int(yn), int(yd)))
        out["resolutionunit"] = int(unit)
    return out


class _quiet:
    """tifffile logs a warning for each oddity of a damaged file; the reason pixark records says enough."""

    def __enter__(self):
        self._logger = logging.getLogger("tifffile")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR + 10)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False
