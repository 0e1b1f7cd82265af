"""Manifest parts: one Parquet file per shard, one row per source object (spec in docs/FORMAT.md, "Manifests").

A part is written after its shard is committed and is the shard's completion marker: a shard counts as done
exactly when its part is visible. The part's key-value metadata repeats the shard's size, sha256 and record count
so a part alone says which shard object it vouches for.
"""

from __future__ import annotations

import io
import json
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pixark.codec.container import FILE_CODECS

from . import store

MANIFEST_VERSION = 3  # 2 added duplicate_of and generation; parts of version 1 read as duplicate_of null and
# generation = the part's pixark.plan. 3 added restore_exact; parts before it read it as null (see exactness()).
STATUS_OK = "ok"
STATUS_KEPT_UNREADABLE = "kept_unreadable"  # looks like an image but does not decode: original bytes kept
STATUS_KEPT_UNCODED = "kept_uncoded"  # decoded, but the codec failed on it: original bytes kept
STATUS_FAILED = "failed"  # could not be read: no record, the source alone holds it
KEPT = (STATUS_KEPT_UNREADABLE, STATUS_KEPT_UNCODED)
EXACT_BYTES = "bytes"  # restore writes the source file's own bytes (sha256 checked)
EXACT_PIXELS = "pixels"  # restore writes the same pixels and metadata in a file of its own making

SCHEMA = pa.schema([
    pa.field("manifest_version", pa.int16(), nullable=False),  # = MANIFEST_VERSION of the writer
    pa.field("image_id", pa.string(), nullable=False),  # path relative to SRC, '/'-separated
    pa.field("source_url", pa.string(), nullable=False),  # full URL the object was read from
    pa.field("source_bytes", pa.int64(), nullable=False),  # size from the listing
    pa.field("source_sha256", pa.string()),  # of the bytes read; null when the object could not be read
    pa.field("format", pa.string()),  # source file format as Pillow names it (PNG, JPEG, ...); "" when not an image
    pa.field("pixel_sha256", pa.string()),  # pixark.codec.pixel_sha256 of the pixels; null when not decoded
    pa.field("width", pa.int32()),  # null when the pixels were not decoded (stored files)
    pa.field("height", pa.int32()),
    pa.field("channels", pa.int16()),
    pa.field("bit_depth", pa.int16()),
    pa.field("mode", pa.string()),  # pixark mode: L, RGB, RGBA, P, I;16, RGB;16 ...
    pa.field("codec", pa.string()),  # codec that made the record (store, png, jxl-ll, mspsm ...); null: no record
    pa.field("codec_params", pa.string()),  # JSON object of the record's codec parameters
    pa.field("model_id", pa.string()),  # sha256 of the learned model's weights; "" for classical codecs
    pa.field("shard", pa.string(), nullable=False),  # shard object name under ARCHIVE/shards/
    pa.field("offset", pa.int64()),  # record position in the shard; null when there is no record
    pa.field("length", pa.int64()),  # record length in bytes; null when there is no record
    pa.field("record_crc32c", pa.uint32()),  # CRC32C of the record bytes (also in the shard index)
    pa.field("compressed_bytes", pa.int64()),  # = length (0 when there is no record)
    pa.field("bpsp", pa.float64()),  # compressed bits per subpixel; null without pixels
    pa.field("encode_seconds", pa.float64()),  # wall time of decode + encode (+ self-check) on the worker
    pa.field("worker", pa.string()),  # host:pid of the worker process that coded it
    pa.field("device", pa.string()),  # cpu, cuda:0 ...
    pa.field("status", pa.string(), nullable=False),  # ok | kept_unreadable | kept_uncoded | failed (see state())
    pa.field("error", pa.string()),  # why status is not ok; null when ok
    pa.field("note", pa.string()),  # why a readable object was stored rather than recoded (JPEG, not an image ...)
    pa.field("duplicate_of", pa.string()),  # image_id whose record this row shares (identical record bytes); null
    pa.field("generation", pa.int32()),  # plan generation that archived the row; the newest row of an id is current
    pa.field("restore_exact", pa.string()),  # bytes | pixels: what restore gives back; null when there is no record
], metadata={b"pixark.manifest_version": str(MANIFEST_VERSION).encode()})

COLUMNS = SCHEMA.names


def state(status: str, has_record: bool, has_pixels: bool) -> str:
    """A row's status named for what it is. The coding step says "failed" for anything that did not code; a row
    whose original bytes were still stored is kept (restores byte-exact), not failed. Also how readers name rows
    of version 1 parts, which said "failed" for both."""
    if status == STATUS_FAILED and has_record:
        return STATUS_KEPT_UNCODED if has_pixels else STATUS_KEPT_UNREADABLE
    return status


def exactness(row: dict) -> tuple[str | None, bool]:
    """(what restoring the row gives back: EXACT_BYTES, EXACT_PIXELS, or None without a record; whether that was
    inferred). Rows of parts written before the restore_exact column say nothing: records that hold the file
    (store, lepton) give its bytes back, and every recoded image its pixels, as pixark then wrote no PNG recipes."""
    if not row.get("codec"):
        return None, False
    if row.get("restore_exact"):
        return row["restore_exact"], False
    return (EXACT_BYTES if row["codec"] in FILE_CODECS else EXACT_PIXELS), True


def part_name(shard: str) -> str:
    """manifests/<shard stem>.parquet for shards/<shard stem>.pxs."""
    return posixpath.splitext(shard)[0] + ".parquet"


def to_table(rows: list[dict], shard_meta: dict | None = None) -> pa.Table:
    """Rows (dicts with the schema's columns; missing ones are null) -> table with the manifest schema."""
    cols = {name: [r.get(name) for r in rows] for name in COLUMNS}
    cols["manifest_version"] = [MANIFEST_VERSION] * len(rows)
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    if shard_meta:
        meta = dict(SCHEMA.metadata)
        meta.update({f"pixark.{k}".encode(): (v if isinstance(v, str) else json.dumps(v)).encode()
                     for k, v in shard_meta.items()})
        table = table.replace_schema_metadata(meta)
    return table


def write_part(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> int:
    """Write one manifest part atomically; returns its size in bytes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    store.put_bytes(fs, path, data)
    return len(data)


def read_parquet(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    """Read a small Parquet file whole into Arrow-owned memory, then parse it.

    pyarrow given a Python file object may release its last reference to Python memory from an I/O thread after
    read_table returned; if the interpreter is exiting by then, that thread aborts the process (seen as
    'terminate called without an active exception' after a CLI command had finished).
    """
    out = pa.BufferOutputStream()
    out.write(fs.cat_file(path))
    return pq.read_table(pa.BufferReader(out.getvalue()))


def read_part(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    table = read_parquet(fs, path)
    version = int((table.schema.metadata or {}).get(b"pixark.manifest_version", b"0"))
    if version > MANIFEST_VERSION:
        from .errors import UnsupportedShard

        raise UnsupportedShard(f"manifest part {path} has schema version {version}; this pixark reads up to "
                               f"{MANIFEST_VERSION}: upgrade pixark")
    return table


def part_meta(table: pa.Table) -> dict:
    """The shard facts stored in a part's key-value metadata: shard, shard_bytes, shard_sha256, records ..."""
    out = {}
    for k, v in (table.schema.metadata or {}).items():
        key = k.decode()
        if key.startswith("pixark.") and key != "pixark.manifest_version":
            text = v.decode()
            try:
                out[key[len("pixark."):]] = json.loads(text)
            except ValueError:
                out[key[len("pixark."):]] = text
    return out


def upgrade(table: pa.Table) -> pa.Table:
    """``table`` (one part, metadata intact) with the columns of this MANIFEST_VERSION that older parts lack:
    ``duplicate_of`` and ``restore_exact`` null, ``generation`` from the part's ``pixark.plan``."""
    for name in ("duplicate_of", "restore_exact"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    plan = int(part_meta(table).get("plan") or 0)
    if "generation" in table.column_names:
        if table.column("generation").null_count == 0:
            return table
        filled = pa.compute.fill_null(table.column("generation"), pa.scalar(plan, pa.int32()))
        return table.set_column(table.column_names.index("generation"), "generation", filled)
    return table.append_column("generation", pa.array([plan] * table.num_rows, pa.int32()))


def current_mask(image_ids: list[str], generations: list[int | None]) -> list[bool]:
    """Which rows are current: for each image_id the row of the newest generation (``pixark archive --update``
    archives a changed source again; the older rows stay as its history). Within one generation the first row."""
    best: dict[str, int] = {}
    for i, (iid, gen) in enumerate(zip(image_ids, generations)):
        j = best.get(iid)
        if j is None or (gen or 0) > (generations[j] or 0):
            best[iid] = i
    keep = set(best.values())
    return [i in keep for i in range(len(image_ids))]


def current_rows(rows: list[dict]) -> list[dict]:
    """The current row of each image_id (see current_mask), in their original order."""
    mask = current_mask([r["image_id"] for r in rows], [r.get("generation") for r in rows])
    return [r for r, keep in zip(rows, mask) if keep]


def read_manifests(url_or_fs, root: str | None = None, storage_options: dict | None = None) -> pa.Table:
    """All complete manifest parts of an archive as one table (parts in name order)."""
    if isinstance(url_or_fs, fsspec.AbstractFileSystem):
        fs = url_or_fs
    else:
        fs, root = fsspec.core.url_to_fs(str(url_or_fs), **(storage_options or {}))
    paths = [p for p in store.list_now(fs, posixpath.join(root.rstrip("/"), "manifests")) if p.endswith(".parquet")]
    tables = [upgrade(read_part(fs, p)).replace_schema_metadata(None) for p in paths]
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")
