"""The codec package's exception family. Messages say what is wrong and what to do."""


class CodecError(Exception):
    """Base of every error raised by pixark.codec."""


class CorruptStream(CodecError):
    """The bitstream is damaged: bad magic, checksum mismatch, truncated, or decodes to the wrong pixels."""


class UnsupportedStream(CodecError):
    """The bitstream is intact but this build cannot decode it (unknown format version, codec or model)."""


class UnsupportedImage(CodecError):
    """The codec cannot code this image losslessly (wrong mode, depth, size, or not decodable)."""
