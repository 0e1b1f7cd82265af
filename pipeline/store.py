"""Atomic commits on any fsspec filesystem: an object appears at its final name only when it is complete.

- Local disk: write a temporary file in the same directory tree, fsync, ``os.replace`` (atomic on POSIX).
- Object stores (S3, GCS, Azure, memory): a single PUT, or a multipart upload that s3fs completes at the end, is
  all-or-nothing: readers see the old state or the whole new object, never a prefix.
- Other filesystems (SFTP, HDFS, ...): upload under a ``.part`` name, then rename.

Completion checks go through ``exists_now``, which drops s3fs's listing cache first: a cached listing taken before
another process committed would otherwise say the object is missing (or present after it was deleted).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

# Storage settings a driver may hold only in its environment (credentials from AWS variables, fsspec's
# FSSPEC_<PROTOCOL>_<KEY> config), passed on to Ray workers and to submitted jobs. Values only: paths to files
# (AWS_SHARED_CREDENTIALS_FILE ...) and AWS_PROFILE name things on the driver's machine, not on the cluster, and
# would make boto fail there.
STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
STORAGE_ENV_PREFIXES = ("FSSPEC_",)


def storage_env(environ=None) -> dict[str, str]:
    """The storage settings (``STORAGE_ENV``) set, non-empty, in ``environ`` (default: this process's)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items())
            if v and (k in STORAGE_ENV or k.startswith(STORAGE_ENV_PREFIXES))}

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl", "memory", "oss"}
TMP_DIR = ".pixark-tmp"  # hidden per-archive scratch directory on local destinations


def protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    p = fs.protocol
    return set(p) if isinstance(p, (tuple, list)) else {p}


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


# File names that are not UTF-8 (a Latin-1 name on an old disk): Python holds each byte that does not decode as a
# surrogate escape U+DC80..U+DCFF, which Parquet (UTF-8 only) and terminals refuse. pixark carries such a name as
# text with each of those bytes as the private-use character U+F780..U+F7FF (as SFM carries the characters NTFS
# forbids), and turns them back into the bytes where it opens or writes a file on a local disk, so a restore
# gives back the original name. Names that hold those characters themselves are not archived (``RESERVED``).
_AS_TEXT = {0xDC80 + b: 0xF780 + b for b in range(128)}
_AS_OS = {v: k for k, v in _AS_TEXT.items()}
RESERVED = "U+F780..U+F7FF"


def text_name(name: str) -> str:
    """A name as pixark carries it (manifests, plans, messages): valid UTF-8 whatever bytes the file system held."""
    return name.translate(_AS_TEXT)


def os_name(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path to open on ``fs``: a local disk's names get their original bytes back (``text_name`` undone)."""
    return path.translate(_AS_OS) if is_local(fs) else path


def has_reserved(name: str) -> bool:
    return any(ord(ch) in _AS_OS for ch in name)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(protocols(fs) & OBJECT_STORES)


def fresh(fs: fsspec.AbstractFileSystem, path: str | None = None) -> None:
    """Forget cached listings (s3fs keeps them) so the next check sees the store as it is now."""
    try:
        if path is None:
            fs.invalidate_cache()
        else:
            fs.invalidate_cache(path)
            fs.invalidate_cache(posixpath.dirname(path.rstrip("/")))
    except Exception:  # not every filesystem implements it; those have no cache to drop
        pass


def exists_now(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    fresh(fs, path)
    return fs.exists(path)


def list_now(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Files under ``path`` (recursive), sorted; [] when the folder does not exist."""
    fresh(fs, path)
    try:
        return sorted(fs.find(path))
    except FileNotFoundError:
        return []


def _local_tmp(path: str) -> str:
    """A hidden temporary name next to ``path``: the name cut so the whole stays within 255 bytes (NAME_MAX), so a
    file with a 254-byte name can be written too."""
    name = posixpath.basename(path).encode("utf-8", "surrogateescape")[:200].decode("utf-8", "surrogateescape")
    return posixpath.join(posixpath.dirname(path), f".{name}.{uuid.uuid4().hex}.part")


def commit_file(local_tmp: str, fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Move a complete local file to ``path`` on ``fs`` atomically; the local file is gone afterwards."""
    try:
        if is_local(fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.replace(local_tmp, path)  # same device: the rename is the commit
                _fsync_dir(os.path.dirname(path))
                return
            except OSError:
                pass  # across devices: copy next to the target first, then rename
            tmp = _local_tmp(path)
            shutil.copyfile(local_tmp, tmp)
            _fsync_file(tmp)
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path))
        elif is_object_store(fs):
            fs.put_file(local_tmp, path)  # single PUT or completed multipart upload: visible only when whole
        else:
            part = path + ".part"
            fs.put_file(local_tmp, part)
            fs.mv(part, path)
    finally:
        if os.path.exists(local_tmp):
            os.unlink(local_tmp)
    fresh(fs, path)


def put_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small object atomically."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _local_tmp(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    elif is_object_store(fs):
        fs.pipe_file(path, data)
    else:
        fs.pipe_file(path + ".part", data)
        fs.mv(path + ".part", path)
    fresh(fs, path)


def remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    fresh(fs, path)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    fresh(fs, path)


def remove_stale_parts(fs: fsspec.AbstractFileSystem, root: str) -> int:
    """Delete leftovers of killed local commits (hidden ``.*.part`` files). Object stores have none."""
    if not is_local(fs) or not os.path.isdir(root):
        return 0
    n = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(".part"):
                os.unlink(os.path.join(dirpath, name))
                n += 1
    return n


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
