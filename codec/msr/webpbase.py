"""The lossy base X̂: WebP lossy (VP8). VP8 decoding is specified bit-exactly and libwebp's YUV->RGB conversion
is integer arithmetic, so X̂ is the same on every machine; the coder still stores a hash of X̂ and refuses to
decode when the local libwebp reconstructs something else (a library that changed its upsampler, say)."""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import CorruptStream

WEBP_METHOD = 4  # encoder effort; only the encoder uses it (the decoder reads whatever the stream says)


def encode(pixels: np.ndarray, q: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.webp_encode(np.ascontiguousarray(pixels), level=int(q), lossless=False,
                                         method=WEBP_METHOD, numthreads=1))


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    import imagecodecs

    try:
        arr = imagecodecs.webp_decode(data)
    except Exception as exc:
        raise CorruptStream(f"msr: the WebP base layer does not decode: {exc}") from exc
    if arr.ndim != 3 or arr.shape[:2] != (height, width) or arr.shape[2] < 3:
        raise CorruptStream(f"msr: the WebP base layer decodes to {arr.shape}, expected ({height}, {width}, 3)")
    return np.ascontiguousarray(arr[:, :, :3])


def digest(xhat: np.ndarray) -> bytes:
    """16-byte hash of X̂ as stored in the stream."""
    return hashlib.sha256(np.ascontiguousarray(xhat, dtype=np.uint8).tobytes()).digest()[:16]
