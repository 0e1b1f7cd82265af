"""The pipeline package's exception family. Messages say what is wrong and what to do."""


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
