"""The pipeline package's exception family. Messages say what is wrong and what to do."""

import re

_ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


def one_line(exc: BaseException, limit: int = 300, bare: bool = False) -> str:
    """One line saying what went wrong, for messages and manifest rows: of an error whose text carries a traceback
    (Ray task errors, Jobs API replies) its last ``SomeError: message`` line (with ``bare``, just the message),
    else its first non-empty line, else its type's name; at most ``limit`` characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().strip(".")]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    if errors:
        line = errors[-1].split(": ", 1)[1] if bare else errors[-1]
    else:
        line = lines[0] if lines else type(exc).__name__
    return line[:limit]


class PipelineError(Exception):
    """Base of every error raised by pixark.pipeline."""


class CorruptShard(PipelineError):
    """A shard object is damaged: bad magic, truncated, index or record checksum mismatch."""


class CorruptRecord(CorruptShard):
    """One record does not read back intact (short read, checksum, decode or pixel hash); ``image_id`` names it."""

    def __init__(self, message: str, image_id: str | None = None):
        super().__init__(message)
        self.image_id = image_id

    def __reduce__(self):  # keeps image_id across processes (DataLoader workers, Ray tasks)
        return type(self), (str(self), self.image_id)


class NotByteExact(PipelineError):
    """The archive holds an image's pixels and metadata exactly, but cannot give back its original file bytes."""


class UnsupportedShard(PipelineError):
    """A shard object is intact but written by a newer shard format version than this build reads."""


class ArchiveConflict(PipelineError):
    """The destination holds an archive made with another configuration, or something unexpected."""


class WorkerLost(PipelineError):
    """A codec worker died more often than the retry budget allows."""
