"""Listing sources and planning shards, deterministically: the same objects give the same shards.

Listing walks SRC recursively through fsspec, keeps files (not directory markers) and symlinks to files, applies
--include/--exclude globs to the path relative to SRC, leaves out the archive's own destination when it lies inside
SRC, and sorts by that relative path (code point order, so the order does not depend on locale or on the store's
listing order). Names that are not UTF-8 are archived under ``store.text_name`` and restored with their bytes.
Entries it cannot archive (FIFOs, sockets, devices, symlinks to folders or to nothing) are reported with the
reason, never dropped without a word.
Planning cuts the sorted list into shards by cumulative source bytes, byte-identical files (``content_keys``) in
one shard, where they share one record.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec

from . import store
from .errors import PipelineError
from .shards import EXTENSION

SHARD_NAME = "shard-{:06d}" + EXTENSION
MAX_RECORDS_PER_SHARD = 100_000  # keeps a shard's JSON index (read whole by readers) to a few MB


@dataclass(frozen=True)
class SourceObject:
    image_id: str  # path relative to SRC, '/'-separated
    path: str  # path inside the source filesystem
    url: str  # full URL (protocol included)
    size: int
    version: str = ""  # what the listing says about the object's version (ETag, else mtime); "" when unknown


def version_of(info: dict) -> str:
    """An object's version from its listing entry: the ETag where the store has one (S3, GCS), else the
    modification time (local disk); "" when the store gives neither."""
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


def changed_objects(objects: list[SourceObject], planned: dict[str, SourceObject]) -> list[SourceObject]:
    """Listed objects whose size or version differs from what their newest plan recorded (``planned``: image_id
    -> that entry). A version is compared only where both sides have one (plans written before versions were
    recorded have none)."""
    out = []
    for o in objects:
        p = planned.get(o.image_id)
        if p is not None and (o.size != p.size or (o.version and p.version and o.version != p.version)):
            out.append(o)
    return out


@dataclass
class ShardPlan:
    name: str
    generation: int
    items: list[SourceObject] = field(default_factory=list)

    @property
    def source_bytes(self) -> int:
        return sum(o.size for o in self.items)


def matches(image_id: str, include: tuple[str, ...] | list[str], exclude: tuple[str, ...] | list[str]) -> bool:
    """fnmatch globs against the relative path; '*' also crosses '/', so '*.png' matches nested files. A pattern
    without '/' is also tried against the file name alone."""
    name = posixpath.basename(image_id)

    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(image_id, pattern) or ("/" not in pattern and fnmatch.fnmatchcase(name, pattern))

    if include and not any(hit(p) for p in include):
        return False
    return not any(hit(p) for p in exclude)


def list_sources(src_fs: fsspec.AbstractFileSystem, src_root: str, include=(), exclude=(),
                 skip_prefixes: tuple[str, ...] = (), skipped: list[dict] | None = None,
                 follow_links: bool = True) -> list[SourceObject]:
    """Every file under ``src_root``, sorted by relative path. ``skip_prefixes`` are paths (in the same
    filesystem) to leave out, e.g. the archive destination inside the source folder. Entries that match the
    globs but cannot be archived are appended to ``skipped`` as {"image_id", "reason"}; with ``follow_links``
    False, symlinks to files are among them."""
    root = src_root.rstrip("/")
    store.fresh(src_fs)
    try:
        if src_fs.isfile(root):
            raise PipelineError(f"source {root} is a file; give the folder (or bucket prefix) that holds the images")
        found = src_fs.find(root, detail=True)
    except FileNotFoundError as exc:
        raise PipelineError(f"source {root} does not exist") from exc
    if not found and not src_fs.exists(root):
        raise PipelineError(f"source {root} does not exist")
    skips = tuple(p.rstrip("/") + "/" for p in skip_prefixes)
    out = []
    for path, info in found.items():
        kind = info.get("type", "file")
        if kind == "directory" or path.endswith("/"):
            continue  # directories and S3 "folder" marker objects
        if skips and any(path.startswith(s) for s in skips):
            continue
        rel = path[len(root):].lstrip("/") if path.startswith(root) else posixpath.relpath(path, root)
        if not rel or not matches(rel, include, exclude):
            continue
        why = _unarchivable(src_fs, path, rel, kind, follow_links)
        if why:
            if skipped is not None:
                skipped.append({"image_id": printable(rel), "reason": why})
            continue
        out.append(SourceObject(image_id=store.text_name(rel), path=store.text_name(path),
                                url=store.text_name(src_fs.unstrip_protocol(path)),
                                size=int(info.get("size") or 0), version=version_of(info)))
    out.sort(key=lambda o: o.image_id)
    return out


def printable(name: str) -> str:
    """A name as text: bytes that are not UTF-8 (kept by Python as surrogate escapes) shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unarchivable(fs, path: str, rel: str, kind: str, follow_links: bool = True) -> str:
    """Why an entry the listing found cannot be archived, or '' when it can (a file, or a symlink to a file)."""
    if store.has_reserved(rel):
        return (f"file name holds characters {store.RESERVED}, which pixark uses for bytes that are not UTF-8: "
                "rename it to archive it")
    if kind == "file":
        return ""
    try:
        mode = os.stat(path).st_mode if store.is_local(fs) else None  # follows symlinks
    except OSError:
        return "symlink to nothing (dangling)"
    if mode is None:
        return f"not a file ({kind})"
    if stat.S_ISREG(mode):  # a symlink to a file: archived as the file it points to, unless told not to
        return "" if follow_links else "symlink to a file: not followed (--no-follow)"
    if stat.S_ISDIR(mode):
        return "symlink to a folder: not followed (archive the folder itself)"
    what = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
    return f"not a regular file ({what})"


HEAD_BYTES = 1 << 16  # of a file, hashed first when looking for copies: most same-size files differ early


def content_keys(fs, objects: list[SourceObject], threads: int = 8) -> dict[str, str]:
    """image_id -> sha256 of the bytes, for each object that another one may be a byte-identical copy of: only
    objects of the same size can be, and of those only ones whose first HEAD_BYTES agree are read whole. Objects
    that cannot be read now are left out (the coding step reads and reports them)."""

    def groups(objs, key):
        by: dict = {}
        with ThreadPoolExecutor(threads) as ex:
            for o, k in zip(objs, ex.map(key, objs)):
                if k is not None:
                    by.setdefault(k, []).append(o)
        return [g for g in by.values() if len(g) > 1]

    def digest(o, end=None):
        try:
            return o.size, hashlib.sha256(fs.cat_file(store.os_name(fs, o.path), start=0, end=end)).hexdigest()
        except Exception:  # noqa: BLE001 - vanished or unreadable: not grouped, coded and reported as usual
            return None

    heads: dict = {}

    def head(o):
        heads[o.image_id] = digest(o, HEAD_BYTES)  # of the whole file when it is no longer
        return heads[o.image_id]

    same_size = [o for g in groups(objects, lambda o: o.size or None) for o in g]
    same_head = [o for g in groups(same_size, head) for o in g]
    big = [o for o in same_head if o.size > HEAD_BYTES]
    with ThreadPoolExecutor(threads) as ex:
        whole = dict(zip([o.image_id for o in big], ex.map(digest, big)))
    keys = {o.image_id: whole.get(o.image_id, heads[o.image_id]) for o in same_head}
    return {i: k[1] for i, k in keys.items() if k is not None}


def plan_shards(objects: list[SourceObject], shard_size: int, first_index: int = 0, generation: int = 0,
                content: dict[str, str] | None = None) -> list[ShardPlan]:
    """Consecutive runs of the sorted objects, each up to ``shard_size`` source bytes (an object larger than that
    gets a shard of its own). Names continue from ``first_index`` so --extend never reuses a name. ``content``
    (``content_keys``): an object with the same bytes as an earlier one joins that one's shard, where the two
    share one record (the archive stores identical records of a shard once)."""
    if shard_size <= 0:
        raise PipelineError("shard size must be positive")
    shards: list[ShardPlan] = []
    home: dict[str, ShardPlan] = {}  # content key -> the shard of its first object
    cur: ShardPlan | None = None
    total = 0
    for obj in objects:
        key = (content or {}).get(obj.image_id)
        if key in home and len(home[key].items) < MAX_RECORDS_PER_SHARD:
            home[key].items.append(obj)
            continue
        if cur is None or (cur.items and (total + obj.size > shard_size or len(cur.items) >= MAX_RECORDS_PER_SHARD)):
            cur = ShardPlan(SHARD_NAME.format(first_index + len(shards)), generation)
            shards.append(cur)
            total = 0
        cur.items.append(obj)
        total += obj.size
        if key is not None:
            home.setdefault(key, cur)
    return shards


def parse_size(text: str | int) -> int:
    """'256MB', '64MiB', '1G', '1000' -> bytes (decimal for kB/MB/GB, binary for KiB/MiB/GiB and bare K/M/G)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "TB": 10**12, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            num = s[: -len(unit)]
            break
    else:
        num, mult = s, 1
    try:
        value = float(num)
    except ValueError:
        raise PipelineError(f"bad size {text!r}; use e.g. 256MB, 64MiB or a number of bytes") from None
    if value <= 0:
        raise PipelineError(f"size must be positive, got {text!r}")
    return int(value * mult)
