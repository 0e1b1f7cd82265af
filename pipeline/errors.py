"""The pipeline package's exception family. Messages say what is wrong and what to do."""


class PipelineError(Exception):
    """Base of every error raised by pixark.pipeline."""


class CorruptShard(PipelineError):
    """A shard object is damaged: bad magic, truncated, index or record checksum mismatch."""


class UnsupportedShard(PipelineError):
    """A shard object is intact but written by a newer shard format version than this build reads."""


class ArchiveConflict(PipelineError):
    """The destination holds an archive made with another configuration, or something unexpected."""


class WorkerLost(PipelineError):
    """A codec worker died more often than the retry budget allows."""
