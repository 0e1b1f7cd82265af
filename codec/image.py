"""Images as pixark sees them: pixels plus what is needed to write the file back.

``DecodedImage.from_bytes`` reads an image file (keeping the original bytes), ``DecodedImage.from_array`` wraps
pixels, ``to_file`` writes the image back in its original format (or PNG) with its metadata.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin

from . import pngexact
from .errors import UnsupportedImage

# Images larger than this are stored as their original bytes, never decoded to pixels: a bound on memory that a
# hostile header cannot lift (256 Mpx x 4 channels x 2 bytes = 2 GiB).
MAX_PIXELS = 1 << 28

# Formats whose single-frame pixels (plus the metadata kept below) are the whole content, so recoding is lossless.
# Anything else (JPEG, lossy WebP, animations, ...) is kept as its original bytes. TIFF has its own reader and
# writer (tiff.py: pixels plus a recipe of its layout and tags), for the TIFFs it can rewrite.
RECODABLE_FORMATS = {"PNG", "BMP", "PPM", "GIF", "TGA"}

# Pillow mode -> (channels, dtype). Modes ending in ';16' are pixark's names for 16-bit colour PNGs, which
# Pillow cannot hold without losing the low byte, so those are decoded with imagecodecs.
MODES: dict[str, tuple[int, str]] = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "P": (1, "uint8"),
    "LA": (2, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "I;16": (1, "uint16"),
    "LA;16": (2, "uint16"),
    "RGB;16": (3, "uint16"),
    "RGBA;16": (4, "uint16"),
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MODE_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class NoPixels(Enum):
    """Why ``DecodedImage.from_bytes`` kept a file as bytes without pixels (``DecodedImage.why``; the ``reason``
    text is for people and may change)."""

    EMPTY = "empty"                # a zero-byte file
    NOT_AN_IMAGE = "not_an_image"  # Pillow cannot open it
    FORMAT = "format"              # an image format that is not recoded losslessly (JPEG, TIFF, ...): on purpose
    ANIMATED = "animated"          # more than one frame: on purpose
    MODE = "mode"                  # a pixel mode pixark does not recode: on purpose
    SIZE = "size"                  # zero-sized, or larger than MAX_PIXELS: never decoded, on purpose
    DAMAGED = "damaged"            # opens, but its data does not decode

    @property
    def on_purpose(self) -> bool:
        """A readable image whose pixels are not recoded by design (its data may still be damaged)."""
        return self in (NoPixels.FORMAT, NoPixels.ANIMATED, NoPixels.MODE, NoPixels.SIZE)


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash of a pixel array that names its shape and dtype (little-endian samples), so equal hashes mean equal images."""
    arr = np.ascontiguousarray(pixels)
    h = hashlib.sha256(f"{arr.shape}:{arr.dtype.name}:".encode())
    # the samples as they lie in memory, not copied (tobytes and a concatenation each copied the whole image)
    h.update(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).view(np.uint8).reshape(-1))
    return h.hexdigest()


@dataclass
class Metadata:
    """Non-pixel data that users care about. ``info`` holds small JSON-able items (PNG text, dpi, transparency)."""

    icc_profile: bytes | None = None
    exif: bytes | None = None
    palette: bytes | None = None  # RGB or RGBA palette for mode 'P'
    palette_mode: str = ""
    info: dict = field(default_factory=dict)
    # What rewrites the PNG file byte-exact from the pixels (codec/pngexact.py). None: not looked for yet; b"": no
    # recipe reproduces the file (it restores pixel-exact). Not metadata a user sees: equality ignores it.
    png_recipe: bytes | None = field(default=None, compare=False)

    def blobs(self) -> dict[str, bytes]:
        return {k: v for k, v in (("icc", self.icc_profile), ("exif", self.exif), ("palette", self.palette),
                                  (pngexact.BLOB, self.png_recipe)) if v}


@dataclass
class DecodedImage:
    """Pixels (HxWxC numpy, uint8 or uint16) or ``None`` when the file is kept only as bytes, plus its mode,
    original format, metadata and (for files read from bytes) the original file bytes."""

    pixels: np.ndarray | None
    mode: str = ""
    format: str = ""
    metadata: Metadata = field(default_factory=Metadata)
    original: bytes | None = None
    reason: str = ""  # why pixels is None, for people
    why: NoPixels | None = None  # why pixels is None, for programs

    @property
    def height(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[2])

    @property
    def bit_depth(self) -> int:
        return 0 if self.pixels is None else self.pixels.dtype.itemsize * 8

    @property
    def is_rgb8(self) -> bool:
        return self.pixels is not None and self.mode == "RGB" and self.pixels.dtype == np.uint8

    def pixel_sha256(self) -> str:
        return "" if self.pixels is None else pixel_sha256(self.pixels)

    # ----------------------------------------------------------------------------------------------- reading
    @classmethod
    def from_array(cls, pixels: np.ndarray, mode: str | None = None) -> "DecodedImage":
        arr = np.asarray(pixels)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.dtype not in (np.uint8, np.uint16) or arr.shape[2] not in (1, 2, 3, 4):
            raise UnsupportedImage(f"pixels must be HxW or HxWxC (C in 1..4) uint8/uint16, got {arr.shape} {arr.dtype}")
        if arr.shape[0] * arr.shape[1] > MAX_PIXELS or 0 in arr.shape:
            raise UnsupportedImage(f"image of {arr.shape[1]}x{arr.shape[0]} pixels is empty or too large")
        if mode is None:
            mode = _MODE_BY_CHANNELS[arr.shape[2]]
            if arr.dtype == np.uint16:
                mode = "I;16" if mode == "L" else mode + ";16"
        if MODES.get(mode) != (arr.shape[2], arr.dtype.name):
            raise UnsupportedImage(f"mode {mode!r} does not match pixels {arr.shape} {arr.dtype}")
        return cls(np.ascontiguousarray(arr), mode=mode, format="")

    @classmethod
    def from_bytes(cls, data: bytes) -> "DecodedImage":
        """Read an image file. Files whose pixels cannot be recoded losslessly come back with ``pixels=None`` and
        a ``reason``; they are still archived, as their original bytes."""
        data = bytes(data)
        if not data:
            return cls(None, original=data, reason="empty file", why=NoPixels.EMPTY)
        try:
            return _read(data)
        except UnsupportedImage as exc:
            return cls(None, format=_sniff_format(data), original=data, reason=str(exc),
                       why=exc.why or NoPixels.DAMAGED)

    # ----------------------------------------------------------------------------------------------- writing
    @property
    def tiff_exact(self) -> bool:
        """A decoded TIFF whose rewrite (``tiff.write``) was checked, when it was read, to be the source file byte
        for byte (``info["tiff"]["exact"]``, carried in the container header)."""
        from . import tiff

        return self.pixels is not None and tiff.is_exact(self.metadata.info)

    @property
    def restores_exact(self) -> bool:
        """Whether ``to_file()`` gives back the original file's bytes (kept, a PNG recipe, or an exact TIFF
        rewrite), not just its pixels."""
        return self.original is not None or bool(self.metadata.png_recipe) or self.tiff_exact

    def to_file(self, format: str = "original", exact: bool = False) -> bytes:
        """File bytes: the original bytes when kept or when a PNG or TIFF recipe rewrites them, else the original
        format (or PNG) with metadata. With ``exact`` only the original bytes will do: NotReproducible says why
        not."""
        if format == "original" and self.original is not None:
            return self.original
        if format == "original" and self.metadata.png_recipe and self.pixels is not None:
            try:
                return pngexact.rewrite(self.pixels, self.mode, self.metadata.png_recipe)
            except pngexact.NotReproducible:
                if exact:
                    raise
        elif exact and not (format == "original" and self.tiff_exact):
            raise pngexact.NotReproducible("this image restores pixel-exact only: the archive holds its pixels and "
                                           "metadata, not what rewrites its file byte for byte")
        if self.pixels is None:
            raise UnsupportedImage(f"no pixels to write ({self.reason or 'not an image'})")
        if format == "original" and self.format == "TIFF" and "tiff" in self.metadata.info:
            from . import tiff

            return tiff.write(self.pixels, self.metadata.info["tiff"], self.metadata.icc_profile)
        fmt = self.format if format == "original" and self.format in RECODABLE_FORMATS else "PNG"
        if self.mode.endswith(";16") and self.mode != "I;16":
            if fmt != "PNG":
                fmt = "PNG"
            return _png_with_chunks(self.pixels, self.metadata)
        im = self._to_pil()
        kwargs: dict = {}
        meta = self.metadata
        if meta.icc_profile:
            kwargs["icc_profile"] = meta.icc_profile
        if meta.exif:
            kwargs["exif"] = meta.exif
        if "transparency" in meta.info:
            t = meta.info["transparency"]
            kwargs["transparency"] = bytes.fromhex(t) if isinstance(t, str) else (tuple(t) if isinstance(t, list) else t)
        if "dpi" in meta.info:
            kwargs["dpi"] = tuple(meta.info["dpi"])
        if fmt == "PNG":
            text = meta.info.get("text") or {}
            if text:
                pnginfo = PngImagePlugin.PngInfo()
                for k, v in text.items():
                    pnginfo.add_itxt(k, v) if not v.isascii() else pnginfo.add_text(k, v)
                kwargs["pnginfo"] = pnginfo
            kwargs["compress_level"] = 6
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kwargs)
        return buf.getvalue()

    def _to_pil(self) -> Image.Image:
        arr = self.pixels
        h, w = arr.shape[:2]
        if self.mode == "1":
            return Image.fromarray(arr[:, :, 0].astype(bool))
        if self.mode == "P":
            im = Image.frombytes("P", (w, h), arr[:, :, 0].tobytes())
            im.putpalette(self.metadata.palette or b"", rawmode=self.metadata.palette_mode or "RGB")
            return im
        return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _sniff_format(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format or ""
    except Exception:
        return ""


def _read(data: bytes) -> DecodedImage:
    from . import tiff

    if tiff.is_tiff(data):  # tifffile, not Pillow: 16-bit colour, and the tags to write the file back
        arr, mode, recipe, icc = tiff.read(data)
        return DecodedImage(arr, mode=mode, format="TIFF", metadata=Metadata(icc_profile=icc, info={"tiff": recipe}),
                            original=data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or ""
            w, h = im.size
    except Image.DecompressionBombError as exc:
        raise UnsupportedImage(f"image too large to decode: {exc}", NoPixels.SIZE) from exc
    except Exception as exc:
        raise UnsupportedImage(f"not an image Pillow can read: {type(exc).__name__}: {exc}",
                               NoPixels.NOT_AN_IMAGE) from exc
    if fmt not in RECODABLE_FORMATS:
        raise UnsupportedImage(f"{fmt or 'unknown'} files are kept as original bytes", NoPixels.FORMAT)
    try:
        frames = getattr(im, "n_frames", 1)
    except Exception as exc:
        raise UnsupportedImage(f"corrupt {fmt} frame structure: {exc}", NoPixels.DAMAGED) from exc
    if frames > 1:
        raise UnsupportedImage("animated image", NoPixels.ANIMATED)
    if w * h > MAX_PIXELS or w == 0 or h == 0:
        raise UnsupportedImage(f"image of {w}x{h} pixels is empty or larger than {MAX_PIXELS} pixels", NoPixels.SIZE)
    meta = Metadata(icc_profile=im.info.get("icc_profile") or None, exif=im.info.get("exif") or None)
    info: dict = {}
    try:  # Pillow reads PNG text chunks lazily, decoding the image on the way: damage shows up here
        text = getattr(im, "text", None) if fmt == "PNG" else None
        if text:
            info["text"] = {str(k): str(v) for k, v in text.items()}
    except Exception as exc:
        raise UnsupportedImage(f"corrupt or truncated {fmt} data: {type(exc).__name__}: {exc}",
                               NoPixels.DAMAGED) from exc
    if "dpi" in im.info:
        info["dpi"] = [float(v) for v in im.info["dpi"]]
    if "transparency" in im.info:
        t = im.info["transparency"]
        info["transparency"] = t.hex() if isinstance(t, bytes) else (list(t) if isinstance(t, tuple) else t)
    meta.info = info

    try:
        if fmt == "PNG" and _png_is_deep_colour(data):
            import imagecodecs

            arr = imagecodecs.png_decode(data)
            arr = arr[:, :, None] if arr.ndim == 2 else arr
            mode = {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[arr.shape[2]]
        else:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            im.load()
            mode = im.mode
            if mode == "I" and fmt == "PNG":  # older Pillow: 16-bit grey as 32-bit ints
                im = im.convert("I;16")
                mode = "I;16"
            if mode not in MODES:
                raise UnsupportedImage(f"mode {mode} is kept as original bytes", NoPixels.MODE)
            if mode == "P":
                meta.palette_mode = im.palette.mode if im.palette and im.palette.mode in ("RGB", "RGBA") else "RGB"
                meta.palette = bytes(im.getpalette(rawmode=meta.palette_mode) or [])
                arr = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(h, w)
            elif mode == "1":
                arr = np.asarray(im, dtype=np.uint8)
            else:
                arr = np.asarray(im)
            arr = arr[:, :, None] if arr.ndim == 2 else arr
    except UnsupportedImage:
        raise
    except Exception as exc:
        raise UnsupportedImage(f"corrupt or truncated {fmt} data: {type(exc).__name__}: {exc}",
                               NoPixels.DAMAGED) from exc
    channels, dtype = MODES[mode]
    arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
    if arr.shape != (h, w, channels):
        raise UnsupportedImage(f"decoded shape {arr.shape} does not match {w}x{h} {mode}", NoPixels.DAMAGED)
    return DecodedImage(arr, mode=mode, format=fmt, metadata=meta, original=data)


def _png_is_deep_colour(data: bytes) -> bool:
    """16-bit PNG with colour or alpha (colour types 2, 4, 6): Pillow would drop the low byte."""
    return data[:8] == _PNG_MAGIC and len(data) >= 26 and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 4, 6)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with_chunks(pixels: np.ndarray, meta: Metadata) -> bytes:
    """16-bit colour PNG (imagecodecs) with ICC, EXIF and text chunks inserted after IHDR."""
    import imagecodecs

    png = imagecodecs.png_encode(np.ascontiguousarray(pixels), level=6)
    extra = b""
    if meta.icc_profile:
        extra += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(meta.icc_profile))
    if meta.exif:
        exif = meta.exif[6:] if meta.exif.startswith(b"Exif\x00\x00") else meta.exif
        extra += _png_chunk(b"eXIf", exif)
    for k, v in (meta.info.get("text") or {}).items():
        extra += _png_chunk(b"iTXt", k.encode("utf-8")[:79] + b"\x00\x00\x00\x00\x00" + v.encode("utf-8"))
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + extra + png[ihdr_end:]
