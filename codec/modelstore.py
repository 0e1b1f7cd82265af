"""Weights files of the learned codecs, and every earlier version of them; ``Store`` reads and writes one
codec's files, as data (``read_npz``: no pickle, no eval, sizes checked; every array checked against its profile).

A weights file's model id is the sha256 of its bytes; a stream records the id of the model that coded it. The
file at a profile's path (codec/weights/<codec>-<profile>.npz) is what encoders use. Writing new weights over it
moves the old file (and its model card) to ``retired/<name>-<first 12 hex of its id>.npz`` beside it, so an
archive made with any shipped version keeps decoding after the weights improve: ``find`` looks a stream's
model id up among the current and the retired files (checking the full hash).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile

import numpy as np

from .errors import CodecError, UnsupportedStream

RETIRED = "retired"
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
FORMAT = 1  # of the arrays in a weights file (``format``; files without one are format 1)
MAX_WEIGHTS = 1 << 28  # bytes of arrays in one weights file


_IDS: dict = {}  # path -> (file identity, id): encoders ask for the current id on every call


def _identity(path: str) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size  # ``write`` replaces a file with a new one (a new inode)


def model_id(path: str) -> str:
    ident = _identity(path)
    known = _IDS.get(path)
    if known is None or known[0] != ident:  # new, or replaced since: hash it again
        with open(path, "rb") as f:
            known = _IDS[path] = (ident, hashlib.sha256(f.read()).hexdigest())
    return known[1]


class BadModelFile(CodecError, ValueError):
    """A weights file or checkpoint that is not what it claims: not an .npz of plain arrays, arrays of the wrong
    names, types or shapes, or over the size limits."""


DTYPES = "biuf"  # booleans, integers, floats; and unicode text for short strings (profiles, modes)
MAX_TEXT = 4096


def read_npz(data: bytes, what: str, max_bytes: int = 1 << 31) -> dict[str, np.ndarray]:
    """The arrays of an .npz file's bytes, read as data: every member must be a .npy of plain numbers or short
    text (no pickled objects), whose header agrees with its size, and all together at most ``max_bytes``
    unpacked; each array's size is checked before it is allocated. BadModelFile (naming ``what``) otherwise."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise BadModelFile(f"{what}: not an .npz file ({e})") from None
    if sum(i.file_size for i in infos) > max_bytes:
        raise BadModelFile(f"{what}: more than {max_bytes} bytes of arrays")
    out = {}
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if not name or name in out:
            raise BadModelFile(f"{what}: member {info.filename!r} is not an array")
        try:
            with zf.open(info) as f:
                raw = f.read()  # at most the size checked above: the zip reader stops there
            out[name] = _read_npy(raw)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise BadModelFile(f"{what}: array {name!r} unreadable ({e})") from None
    return out


def _read_npy(raw: bytes) -> np.ndarray:
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy version {version}")
    shape, fortran, dtype = read(f)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in DTYPES + "U":
        raise ValueError(f"dtype {dtype} is not plain numbers")
    if dtype.kind == "U" and (shape != () or dtype.itemsize > 4 * MAX_TEXT):
        raise ValueError("text longer than a short string")
    n = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if n != len(raw) - f.tell():
        raise ValueError(f"header says {n} bytes of data, the member holds {len(raw) - f.tell()}")
    a = np.frombuffer(raw, dtype, offset=f.tell()).reshape(shape, order="F" if fortran else "C")
    return np.array(a, order="C")  # a writable copy


def save_npz(path: str, arrays: dict) -> str:
    """``write`` the arrays as a compressed .npz (a weights file); returns its model id."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write(path, buf.getvalue())


def _retired_path(path: str, mid: str, ext: str = ".npz") -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(os.path.abspath(path)), RETIRED, f"{stem}-{mid[:12]}{ext}")


def write(path: str, data: bytes) -> str:
    """Write weights ``data`` to ``path`` (atomically) and return their model id; a different file already there
    is retired first, with its model card (same name, .md)."""
    mid = hashlib.sha256(data).hexdigest()
    if os.path.exists(path):
        old = model_id(path)
        if old != mid:
            dst = _retired_path(path, old)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(path, dst)
            card = os.path.splitext(path)[0] + ".md"
            if os.path.exists(card):
                os.replace(card, _retired_path(path, old, ".md"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    _IDS[path] = (_identity(path), mid)
    return mid


def find(path: str, mid: str) -> str | None:
    """The file holding model ``mid`` for the profile whose current weights live at ``path``: that file, a
    retired version of it, or None."""
    for p in (path, _retired_path(path, mid)):
        if os.path.isfile(p) and model_id(p) == mid:
            return p
    return None


def retired(path: str) -> list[str]:
    """Model ids (first 12 hex) of the retired versions of the weights at ``path``."""
    d = os.path.join(os.path.dirname(os.path.abspath(path)), RETIRED)
    stem = os.path.splitext(os.path.basename(path))[0] + "-"
    if not os.path.isdir(d):
        return []
    return sorted(f[len(stem):-4] for f in os.listdir(d) if f.startswith(stem) and f.endswith(".npz")
                  and len(f) == len(stem) + 16)


def locate(path: str, mid: str, what: str) -> str:
    """``find``, or UnsupportedStream naming the versions this build has (``what``: e.g. "mspsm profile 'x'")."""
    found = find(path, mid)
    if found is None:
        have = ([model_id(path)[:12]] if os.path.isfile(path) else []) + retired(path)
        raise UnsupportedStream(f"the stream was made with model {mid[:12]} of {what}, which this build does not "
                                f"have (it has {', '.join(have) or 'none'}); decode it with the pixark release "
                                f"that made it")
    return found


class Store:
    """One learned codec's weights: ``codec/weights/<codec>-<profile>.npz`` and their retired versions. ``net``
    is the codec's integer network type (``nn.intnet.IntTrunk``), ``profiles`` its named profiles, ``limits``
    the ranges of the profile's numeric fields, ``check`` a further check of a profile (ValueError)."""

    def __init__(self, codec: str, net, profiles: dict, limits: dict, check=None):
        self.codec, self.net, self.profiles, self.limits, self.check = codec, net, profiles, limits, check
        self._cache: dict = {}
        self._lock = threading.Lock()

    def path(self, profile: str) -> str:
        return os.path.join(WEIGHTS_DIR, f"{self.codec}-{profile}.npz")

    def exists(self, profile: str) -> bool:
        return os.path.isfile(self.path(profile))

    def shipped(self) -> list[str]:
        return [n for n in self.profiles if self.exists(n)]

    def load(self, profile: str, mid: str | None = None):
        """(integer network, model id) of a profile's shipped weights: the current version, or with ``mid`` the
        version with that model id (current or retired: a stream decodes with the model that coded it).
        UnsupportedStream when this build does not have them."""
        if profile not in self.profiles:
            raise UnsupportedStream(f"{self.codec} has no profile {profile!r}; this build has "
                                    f"{', '.join(self.profiles)}")
        path = self.path(profile)
        if mid is None:
            if not os.path.isfile(path):
                raise UnsupportedStream(
                    f"{self.codec} profile {profile!r} has no weights in this build ({path}); train them with "
                    f"`pixark train --codec {self.codec} --profile {profile}` or use a profile with weights: "
                    f"{', '.join(self.shipped()) or 'none'}")
            mid = model_id(path)
        with self._lock:
            if (profile, mid) not in self._cache:
                found = locate(path, mid, f"{self.codec} profile {profile!r}")
                self._cache[profile, mid] = self.read(found, profile)
            return self._cache[profile, mid]

    def read(self, path: str, profile: str | None = None):
        """(integer network, model id) of a weights file of this codec (of ``profile`` when given), read as data:
        the profile it records parsed as a literal and checked field by field, every layer's arrays checked
        against the shapes that profile gives. BadModelFile saying what is wrong otherwise."""
        what = f"{path}: not an {self.codec} weights file"
        try:
            if os.path.getsize(path) > MAX_WEIGHTS:
                raise BadModelFile(f"{what} (larger than {MAX_WEIGHTS} bytes)")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadModelFile(f"{what} ({e})") from None
        arrs = read_npz(data, what, MAX_WEIGHTS)
        try:
            fmt = arrs.get("format", np.array(FORMAT))
            if fmt.shape != () or fmt.dtype.kind != "i" or int(fmt) != FORMAT:
                raise ValueError(f"weights format {fmt} unknown to this build")
            text = arrs.get("profile")
            if text is None or text.dtype.kind != "U" or text.shape != ():
                raise ValueError("it records no profile")
            p = self.net.profile_from(str(text), self.limits)
            if self.check:
                self.check(p)
            net = self.net.from_arrays(p, arrs)
        except ValueError as e:
            raise BadModelFile(f"{what} ({e})") from None
        if profile is not None and p.name != profile:
            raise BadModelFile(f"{path} holds {self.codec} profile {p.name!r}, not {profile!r}")
        return net, hashlib.sha256(data).hexdigest()

    def save(self, net, path: str) -> str:
        """``write`` an integer network's arrays (with the format) to ``path``; returns the model id."""
        return save_npz(path, {**net.to_arrays(), "format": np.array(FORMAT, np.int64)})
