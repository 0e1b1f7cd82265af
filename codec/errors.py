"""The codec package's exception family. Messages say what is wrong and what to do."""


class CodecError(Exception):
    """Base of every error raised by pixark.codec."""


class CorruptStream(CodecError):
    """The bitstream is damaged: bad magic, checksum mismatch, truncated, or decodes to the wrong pixels."""


class UnsupportedStream(CodecError):
    """The bitstream is intact but this build cannot decode it (unknown format version, codec or model)."""


class UnsupportedImage(CodecError):
    """The codec cannot code this image losslessly (wrong mode, depth, size, or not decodable). ``why``: when
    raised while reading a file, an ``image.NoPixels`` member saying which kind of case it is."""

    def __init__(self, message: str, why=None):
        super().__init__(message)
        self.why = why


class DeviceError(CodecError):
    """The device asked for cannot run a learned codec's network exactly (its kernels disagree with the integer
    reference) or ran out of memory. Nothing is wrong with the stream: code or decode on another device."""
