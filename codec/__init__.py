"""pixark.codec: one image <-> one bitstream. Knows nothing of Ray, fsspec or Parquet.

    data = encode(file_bytes_or_pixels, codec="auto")   # -> bytes (pixark container)
    img = decode(data)                                   # -> DecodedImage (pixels, mode, format, metadata)
    info(data)                                           # header only
    encode_many(images) / decode_many(datas)             # many images at once (learned codecs batch them)
"""

from . import classical  # noqa: F401  (registers store, png, webp-ll, jxl-ll)
from . import jpeg  # noqa: F401  (registers lepton)
from .api import candidates, decode, decode_many, encode, encode_many, info, load
from .container import VERSION as FORMAT_VERSION
from .errors import CodecError, CorruptStream, DeviceError, UnsupportedImage, UnsupportedStream
from .image import DecodedImage, Metadata, NoPixels, pixel_sha256
from .registry import Codec, Encoded, all_codecs, get, names, parse_spec, register

__all__ = [
    "encode", "decode", "encode_many", "decode_many", "info", "load", "candidates", "FORMAT_VERSION",
    "CodecError", "CorruptStream", "UnsupportedImage", "UnsupportedStream",
    "DecodedImage", "Metadata", "NoPixels", "pixel_sha256",
    "Codec", "Encoded", "register", "get", "names", "all_codecs", "parse_spec",
]
