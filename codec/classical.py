"""Classical lossless codecs (imagecodecs): fallbacks for images no learned model covers, and the baselines."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
from PIL import Image

from .container import Header
from .errors import CorruptStream, UnsupportedImage
from .image import DecodedImage
from .registry import Codec, Encoded, register
from .sniff import jxl_size, png_size, webp_size


def _shape(pixels: np.ndarray, header: Header) -> np.ndarray:
    arr = pixels[:, :, None] if pixels.ndim == 2 else pixels
    want = (header.height, header.width, header.channels)
    if arr.shape != want or arr.dtype.itemsize * 8 != header.bit_depth:
        raise CorruptStream(f"payload decoded to {arr.shape} {arr.dtype}, header says {want} {header.bit_depth}-bit")
    return np.ascontiguousarray(arr)


def _inner(size: tuple[int, int] | None, header: Header, what: str) -> None:
    """Refuse a payload whose own header announces other dimensions than the container's, before the library
    allocates for them (the container's dimensions are bounded; the inner ones are not)."""
    if size is not None and size != (header.width, header.height):
        raise CorruptStream(f"{what} payload says {size[0]}x{size[1]}, header says {header.width}x{header.height}")


def _file_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's own header (Pillow reads only that), None when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # not an image: decoding it finds no pixels and the pixel hash refuses it
        return None


def _plane(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


class Store(Codec):
    name = "store"
    summary = ("the original file bytes, unchanged (raw pixels for arrays); anything; the file plus the container "
               "header (about 200 bytes)")
    keeps_original = True
    defaults = {"raw": 0}
    ranges = {"raw": (0, 1)}

    def supports(self, image: DecodedImage) -> str | None:
        return None if image.original is not None or image.pixels is not None else "nothing to store"

    def encode(self, image: DecodedImage, **params) -> Encoded:
        if image.original is not None:
            return Encoded(image.original, {"raw": 0})
        return Encoded(np.ascontiguousarray(image.pixels).astype(image.pixels.dtype.newbyteorder("<")).tobytes(), {"raw": 1})

    def decode(self, payload: bytes, header: Header) -> np.ndarray | None:
        if header.params.get("raw"):
            dtype = np.dtype(f"<u{header.bit_depth // 8}")
            want = header.height * header.width * header.channels * dtype.itemsize
            if len(payload) != want:
                raise CorruptStream(f"raw payload has {len(payload)} bytes, header implies {want}")
            return np.frombuffer(payload, dtype).astype(dtype.newbyteorder("=")).reshape(header.height, header.width, header.channels)
        if not header.pixel_sha256:
            return None
        _inner(_file_size(payload), header, "stored file")
        return DecodedImage.from_bytes(payload).pixels


class Png(Codec):
    name = "png"
    summary = "PNG (libpng, zlib level 9): 1-4 channels, 8 or 16 bits"
    defaults = {"level": 9}
    ranges = {"level": (0, 9)}

    def supports(self, image: DecodedImage) -> str | None:
        return None if image.pixels is not None else image.reason or "no pixels"

    def encode(self, image: DecodedImage, **params) -> Encoded:
        p = self.params(params)
        return Encoded(imagecodecs.png_encode(_plane(image.pixels), level=int(p["level"])), p)

    def decode(self, payload: bytes, header: Header) -> np.ndarray:
        _inner(png_size(payload), header, "PNG")
        return _shape(imagecodecs.png_decode(payload), header)


class WebpLossless(Codec):
    name = "webp-ll"
    summary = "WebP lossless (libwebp): 8-bit; grey is coded as RGB"
    defaults = {"level": 100, "method": 4}
    ranges = {"level": (0, 100), "method": (0, 6)}

    def supports(self, image: DecodedImage) -> str | None:
        if image.pixels is None:
            return image.reason or "no pixels"
        return None if image.pixels.dtype == np.uint8 else "WebP holds 8 bits per sample only"

    def encode(self, image: DecodedImage, **params) -> Encoded:
        p = self.params(params)
        arr = image.pixels
        if arr.shape[2] <= 2:  # WebP has no grey: replicate into RGB(A)
            arr = np.concatenate([arr[:, :, :1]] * 3 + ([arr[:, :, 1:]] if arr.shape[2] == 2 else []), axis=2)
        data = imagecodecs.webp_encode(np.ascontiguousarray(arr), level=int(p["level"]), lossless=True, method=int(p["method"]))
        return Encoded(data, p)

    def decode(self, payload: bytes, header: Header) -> np.ndarray:
        _inner(webp_size(payload), header, "WebP")
        arr = imagecodecs.webp_decode(payload)
        if header.channels in (2, 4) and arr.shape[2] == 3:  # libwebp drops an all-opaque alpha channel
            arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
        if header.channels <= 2 and arr.ndim == 3 and arr.shape[2] >= 3:
            arr = np.concatenate([arr[:, :, :1]] + ([arr[:, :, 3:4]] if header.channels == 2 else []), axis=2)
        return _shape(arr, header)


class JxlLossless(Codec):
    name = "jxl-ll"
    summary = "JPEG XL lossless (libjxl, one thread): 1-4 channels, 8 or 16 bits"
    defaults = {"effort": 7}
    ranges = {"effort": (1, 10)}

    def supports(self, image: DecodedImage) -> str | None:
        return None if image.pixels is not None else image.reason or "no pixels"

    def encode(self, image: DecodedImage, **params) -> Encoded:
        p = self.params(params)
        data = imagecodecs.jpegxl_encode(_plane(image.pixels), lossless=True, effort=int(p["effort"]), numthreads=1)
        return Encoded(data, p)

    def decode(self, payload: bytes, header: Header) -> np.ndarray:
        _inner(jxl_size(payload), header, "JPEG XL")
        return _shape(imagecodecs.jpegxl_decode(payload, numthreads=1), header)


for _codec in (Store(), Png(), WebpLossless(), JxlLossless()):
    register(_codec)

__all__ = ["Store", "Png", "WebpLossless", "JxlLossless", "UnsupportedImage"]
