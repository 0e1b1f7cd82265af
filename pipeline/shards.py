"""Shard objects: many pixark container streams in one object, an index footer, a CRC32C per record.

Layout (spec in docs/FORMAT.md, section "Shards"); all integers little-endian:

    header  16 bytes   magic 89 50 58 53 0D 0A 1A 0A ("\\x89PXS\\r\\n\\x1a\\n") | version u16 | flags u16 (0) | 0 u32
    records            container streams back to back (record i is bytes [offset_i, offset_i + length_i))
    index              UTF-8 JSON {"version": 1, "records": [{"id", "offset", "length", "crc32c"}, ...]}
    trailer 32 bytes   index offset u64 | index length u64 | index CRC32C u32 | record count u32 |
                       version u16 | 0 u16 | magic "PXSE"

Records are bare container streams so a ranged read of (offset, length) from the manifest can go straight to
``pixark.codec.decode``. The trailer sits at a fixed distance from the end, so a reader needs two ranged reads
(trailer, index) to list a shard and one per record to fetch it; nothing reads a whole shard unless it wants to.

The writer spools to a local temporary file (bounded memory whatever the shard size) and commits it with
``store.commit_file``: the shard becomes visible at its final name only once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import struct
import tempfile
from dataclasses import dataclass, field

import crc32c
import fsspec

from .errors import CorruptShard, UnsupportedShard

MAGIC = b"\x89PXS\r\n\x1a\n"
END_MAGIC = b"PXSE"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
EXTENSION = ".pxs"
_HEADER = struct.Struct("<8sHHI")  # 16 bytes
_TRAILER = struct.Struct("<QQIIHH4s")  # 32 bytes
HEADER_SIZE = _HEADER.size
TRAILER_SIZE = _TRAILER.size
MAX_INDEX = 1 << 30  # a bad trailer cannot make a reader allocate more than this


@dataclass(frozen=True)
class IndexEntry:
    image_id: str
    offset: int
    length: int
    crc32c: int


@dataclass
class ShardIndex:
    version: int
    entries: list[IndexEntry]
    shard_bytes: int  # size of the whole shard object
    index_offset: int  # where the index starts (= end of the last record)

    def by_offset(self) -> dict[int, IndexEntry]:
        return {e.offset: e for e in self.entries}

    def by_id(self) -> dict[str, IndexEntry]:
        return {e.image_id: e for e in self.entries}


@dataclass
class ShardInfo:
    """What committing a shard produced: its size, its sha256 (over the whole object) and its index."""

    path: str
    shard_bytes: int
    sha256: str
    entries: list[IndexEntry] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Append records, then ``commit(fs, path)``. Nothing appears at ``path`` until the shard is complete.

        with ShardWriter() as w:
            entry = w.add("cats/1.png", stream)
            info = w.commit(fs, "bucket/archive/shards/shard-000000.pxs")
    """

    def __init__(self, spool_dir: str | None = None):
        fd, self._tmp = tempfile.mkstemp(prefix="pixark-shard-", suffix=EXTENSION + ".part", dir=spool_dir)
        os.chmod(self._tmp, 0o644)  # mkstemp makes 0600; a committed shard is read by other users' jobs too
        self._f = os.fdopen(fd, "w+b")
        self._sha = hashlib.sha256()
        self._pos = 0
        self.entries: list[IndexEntry] = []
        self._finished = False
        self._write(_HEADER.pack(MAGIC, VERSION, 0, 0))

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def add(self, image_id: str, record: bytes) -> IndexEntry:
        if self._finished:
            raise RuntimeError("shard already finished")
        entry = IndexEntry(image_id, self._pos, len(record), crc32c.crc32c(record))
        self._write(record)
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[str, int, str]:
        """Write index and trailer. Returns (local temp path, size, sha256)."""
        if not self._finished:
            index = encode_index(self.entries)
            index_offset = self._pos
            self._write(index)
            self._write(_TRAILER.pack(index_offset, len(index), crc32c.crc32c(index), len(self.entries), VERSION, 0,
                                      END_MAGIC))
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._finished = True
        return self._tmp, self._pos, self._sha.hexdigest()

    def commit(self, fs: fsspec.AbstractFileSystem, path: str) -> ShardInfo:
        from .store import commit_file

        tmp, size, sha = self.finish()
        commit_file(tmp, fs, path)
        return ShardInfo(path=path, shard_bytes=size, sha256=sha, entries=list(self.entries))

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # after commit the spool file is gone already (or removed here)


def encode_index(entries: list[IndexEntry]) -> bytes:
    doc = {"version": VERSION,
           "records": [{"id": e.image_id, "offset": e.offset, "length": e.length, "crc32c": e.crc32c} for e in entries]}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------------- reading
def resolve(fs_or_url, shard_path: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of a shard. With a filesystem, ``shard_path`` is the object's path in it. With a URL
    string, the URL is the archive root and ``shard_path`` the shard name from the manifest's ``shard`` column
    (the object is ARCHIVE/shards/<shard>)."""
    if isinstance(fs_or_url, fsspec.AbstractFileSystem):
        return fs_or_url, shard_path
    fs, root = fsspec.core.url_to_fs(str(fs_or_url), **(storage_options or {}))
    return fs, posixpath.join(root.rstrip("/"), "shards", shard_path)


def _range(fs: fsspec.AbstractFileSystem, path: str, start: int, end: int) -> bytes:
    try:
        return fs.cat_file(path, start=start, end=end)
    except FileNotFoundError as exc:
        raise CorruptShard(f"shard {path} is missing") from exc


def parse_trailer(trailer: bytes, shard_bytes: int, where: str = "shard") -> tuple[int, int, int, int]:
    """Check a 32-byte trailer; returns (index offset, index length, index crc32c, record count)."""
    if len(trailer) != TRAILER_SIZE:
        raise CorruptShard(f"{where} is truncated: {shard_bytes} bytes cannot hold a header and trailer")
    index_offset, index_length, index_crc, count, version, _, magic = _TRAILER.unpack(trailer)
    if magic != END_MAGIC:
        raise CorruptShard(f"{where} has no trailer (bad end magic): truncated or not a pixark shard")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedShard(f"{where} is shard format version {version}; this pixark reads {SUPPORTED_VERSIONS}: "
                               "upgrade pixark")
    if (index_offset < HEADER_SIZE or index_length > MAX_INDEX
            or index_offset + index_length + TRAILER_SIZE != shard_bytes):
        raise CorruptShard(f"{where} trailer points outside the object (index at {index_offset}+{index_length}, "
                           f"object {shard_bytes} bytes): truncated or damaged")
    return index_offset, index_length, index_crc, count


def parse_header(header: bytes, where: str = "shard") -> int:
    if len(header) < HEADER_SIZE:
        raise CorruptShard(f"{where} is truncated: shorter than its {HEADER_SIZE}-byte header")
    magic, version, _, _ = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise CorruptShard(f"{where} is not a pixark shard (bad magic bytes)")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedShard(f"{where} is shard format version {version}; this pixark reads {SUPPORTED_VERSIONS}: "
                               "upgrade pixark")
    return version


def parse_index(index: bytes, index_crc: int, count: int, index_offset: int, where: str = "shard") -> list[IndexEntry]:
    if crc32c.crc32c(index) != index_crc:
        raise CorruptShard(f"{where} index checksum mismatch: the shard is damaged")
    try:
        doc = json.loads(index.decode("utf-8"))
        entries = [IndexEntry(str(r["id"]), int(r["offset"]), int(r["length"]), int(r["crc32c"]))
                   for r in doc["records"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptShard(f"{where} index is unreadable: {exc}") from exc
    if len(entries) != count:
        raise CorruptShard(f"{where} index lists {len(entries)} records, trailer says {count}")
    pos = HEADER_SIZE
    for e in entries:  # records tile [header, index) in order, with no gaps and no overlap
        if e.offset != pos or e.length < 0:
            raise CorruptShard(f"{where} index entry for {e.image_id!r} at {e.offset} does not follow the previous "
                               f"record (expected offset {pos})")
        pos += e.length
    if pos != index_offset:
        raise CorruptShard(f"{where} records end at {pos} but the index starts at {index_offset}")
    return entries


def read_index(fs_or_url, shard_path: str, storage_options: dict | None = None) -> ShardIndex:
    """Read and check a shard's header, trailer and index with three small ranged reads."""
    fs, path = resolve(fs_or_url, shard_path, storage_options)
    try:
        size = fs.size(path)
    except FileNotFoundError as exc:
        raise CorruptShard(f"shard {path} is missing") from exc
    if size < HEADER_SIZE + TRAILER_SIZE:
        raise CorruptShard(f"shard {path} is truncated: {size} bytes")
    version = parse_header(_range(fs, path, 0, HEADER_SIZE), where=f"shard {path}")
    index_offset, index_length, index_crc, count = parse_trailer(
        _range(fs, path, size - TRAILER_SIZE, size), size, where=f"shard {path}")
    index = _range(fs, path, index_offset, index_offset + index_length)
    entries = parse_index(index, index_crc, count, index_offset, where=f"shard {path}")
    return ShardIndex(version=version, entries=entries, shard_bytes=size, index_offset=index_offset)


def read_record(fs_or_url, shard_path: str, offset: int, length: int, crc32c_expected: int | None = None,
                storage_options: dict | None = None) -> bytes:
    """One record by a ranged read, checked against its CRC32C. The expected CRC comes from the manifest's
    ``record_crc32c`` column when given; otherwise the shard's index is read to find it. Raises CorruptShard
    (missing shard, short read, no such record, checksum mismatch) with the shard, offset and length in the message."""
    fs, path = resolve(fs_or_url, shard_path, storage_options)
    where = f"record at offset {offset} (length {length}) of shard {path}"
    if crc32c_expected is None:
        entry = read_index(fs, path).by_offset().get(offset)
        if entry is None or entry.length != length:
            raise CorruptShard(f"{where}: the shard's index has no such record")
        crc32c_expected = entry.crc32c
    data = _range(fs, path, offset, offset + length)
    if len(data) != length:
        raise CorruptShard(f"{where}: only {len(data)} bytes could be read; the shard is truncated")
    got = crc32c.crc32c(data)
    if got != crc32c_expected:
        raise CorruptShard(f"{where}: CRC32C mismatch (expected {crc32c_expected:08x}, got {got:08x}); "
                           "the shard is damaged")
    return data


def check_shard(data: bytes, where: str = "shard") -> ShardIndex:
    """Check a whole shard held in memory: header, trailer, index and every record's CRC32C."""
    version = parse_header(data[:HEADER_SIZE], where)
    if len(data) < HEADER_SIZE + TRAILER_SIZE:
        raise CorruptShard(f"{where} is truncated: {len(data)} bytes")
    index_offset, index_length, index_crc, count = parse_trailer(data[-TRAILER_SIZE:], len(data), where)
    entries = parse_index(data[index_offset:index_offset + index_length], index_crc, count, index_offset, where)
    view = memoryview(data)
    for e in entries:
        if crc32c.crc32c(view[e.offset:e.offset + e.length]) != e.crc32c:
            raise CorruptShard(f"{where}: record {e.image_id!r} at offset {e.offset} fails its CRC32C check")
    return ShardIndex(version=version, entries=entries, shard_bytes=len(data), index_offset=index_offset)


def iter_records(fs_or_url, shard_path: str, storage_options: dict | None = None):
    """(entry, record bytes) for every record, in order, each checked against its CRC32C (one ranged read each)."""
    fs, path = resolve(fs_or_url, shard_path, storage_options)
    index = read_index(fs, path)
    for e in index.entries:
        yield e, read_record(fs, path, e.offset, e.length, e.crc32c)
