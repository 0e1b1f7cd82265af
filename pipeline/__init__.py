"""pixark.pipeline: many images <-> shards on any fsspec store, in parallel on Ray. Knows codecs only by the
public ``pixark.codec`` API.

    from pixark.pipeline import run_archive, ArchiveConfig
    summary = run_archive(ArchiveConfig(src="s3://bucket/images", dest="s3://bucket/archive"))

Reading an archive as a training dataset: ``pixark.dataset`` (code in ``dataset``).
Formats: ``shards`` (shard objects: writer, reader, ``read_record``), ``manifest`` (Parquet schema).
"""

from . import manifest, shards, store
from .errors import (ArchiveConflict, CorruptRecord, CorruptShard, NotByteExact, PipelineError, UnsupportedShard,
                     WorkerLost)
from .manifest import MANIFEST_VERSION, SCHEMA as MANIFEST_SCHEMA
from .shards import ShardWriter, read_index, read_record

__all__ = [
    "manifest", "shards", "store", "MANIFEST_VERSION", "MANIFEST_SCHEMA", "ShardWriter", "read_index", "read_record",
    "PipelineError", "CorruptShard", "CorruptRecord", "NotByteExact", "UnsupportedShard", "ArchiveConflict", "WorkerLost",
]
