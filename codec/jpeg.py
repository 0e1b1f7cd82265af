"""lepton: JPEG files recompressed byte-exact with Lepton (Dropbox's method; Microsoft's Rust port, PyPI package
lepton-jpeg-python, pinned in pyproject because the payload is that library's format).

A lepton stream is a stored JPEG file in a smaller form: like ``store`` it restores the file's own bytes
(``DecodedImage.original``) and carries no pixels and no pixel hash (pixark does not decode JPEGs: JPEG decoders
may round differently, the file's bytes are what is kept). Its params record the file's size and sha256, and
decoding refuses any result that differs. Lepton itself does not always reproduce its input (a JPEG without its
end marker compresses to a file that decodes to other bytes), so the encoder decodes every payload and compares
before it is used, and a JPEG Lepton refuses or cannot reproduce stays ``store`` (``UnsupportedImage`` says why).

Fork safety: the library keeps a Rust thread pool that a forked child inherits without its threads, so a call in
a child forked after its parent used Lepton waits forever (torch DataLoader workers, multiprocessing fork pools).
``run`` therefore calls the library directly only in the first process that used it here (or one that never had
a user before it); any other process sends its calls to a helper process of its own (codec/lepton_helper.py,
started with ``python -P``: a fresh interpreter, never a fork of a used pool).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import re
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from .container import Header
from .errors import CorruptStream, UnsupportedImage, UnsupportedStream
from .image import DecodedImage
from .registry import Codec, Encoded, register

LEPTON_PACKAGE = "lepton-jpeg-python"
LEPTON_VERSION = "0.5.8"  # the version pyproject pins and the tests were run with
_MAGIC = b"\xcf\x84"  # a Lepton file's first two bytes; its u32 at offset 20 is the JPEG's size
_SHA256 = re.compile("[0-9a-f]{64}")
_HELPER = Path(__file__).with_name("lepton_helper.py")
_HEAD = struct.Struct("<cQ")


class LeptonError(Exception):
    """Lepton refused or failed on its input, or its helper process did not answer."""


# ----------------------------------------------------------------------------------------------- fork-safe calls
_direct_pid: int | None = None  # the process whose thread pool the library's calls use
_helper: "_Helper | None" = None
_abandoned: list = []  # helpers a forked child inherited: never used or closed there (their locks may be held)


def run(op: str, data: bytes) -> bytes:
    """Lepton ``compress`` (op 'c') or ``decompress`` ('d') of ``data``, safe in forked processes. Raises
    LeptonError with the library's message (first line)."""
    global _direct_pid
    pid = os.getpid()
    if _direct_pid is None:
        _direct_pid = pid
    if _direct_pid != pid:
        return _helper_for(pid).call(op, data)
    import lepton_jpeg_python as lepton

    try:
        return lepton.compress_bytes(data) if op == "c" else lepton.decompress_bytes(data)
    except BaseException as exc:  # noqa: BLE001 - pyo3 turns a Rust panic into a BaseException subclass
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise LeptonError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    # The library appends Rust source locations on further lines: not useful in a manifest note.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _helper_for(pid: int) -> "_Helper":
    global _helper
    helper = _helper
    if helper is None or helper.owner != pid or helper.proc.poll() is not None:
        if helper is not None and helper.owner != pid:
            _abandoned.append(helper)  # the parent's: closing it here could wait on a lock held at fork time
        helper = _helper = _Helper()
    return helper


class _Helper:
    """One helper process, owned by the process that started it; calls are serialised by a lock."""

    def __init__(self):
        self.owner = os.getpid()
        self.lock = threading.Lock()
        # -P: codec/ must not come first on the helper's sys.path (its module names would shadow others)
        self.proc = subprocess.Popen([sys.executable, "-P", str(_HELPER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, close_fds=True)
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)

    def call(self, op: str, data: bytes) -> bytes:
        # Generous: Lepton codes tens of MB/s; the bound only keeps a wedged helper from hanging a worker forever.
        deadline = time.monotonic() + 120 + 5 * len(data) / 1e6
        with self.lock:
            try:
                self._send(_HEAD.pack(op.encode(), len(data)) + data, deadline)
                status, n = _HEAD.unpack(self._recv(_HEAD.size, deadline))
                body = self._recv(n, deadline)
            except (OSError, LeptonError) as exc:
                self.close(kill=True)
                raise LeptonError(f"Lepton helper process failed: {exc}") from exc
        if status != b"\x00":
            raise LeptonError(body.decode("utf-8", "replace").strip().splitlines()[0] if body else "Lepton failed")
        return body

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.wfd, deadline, write=True)
            try:
                view = view[os.write(self.wfd, view[: 1 << 16]):]
            except BlockingIOError:
                continue

    def _recv(self, n: int, deadline: float) -> bytes:
        parts, got = [], 0
        while got < n:
            self._wait(self.rfd, deadline)
            chunk = os.read(self.rfd, min(n - got, 1 << 20))
            if not chunk:
                raise LeptonError(f"it exited (code {self.proc.poll()})")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    @staticmethod
    def _wait(fd: int, deadline: float, write: bool = False) -> None:
        left = deadline - time.monotonic()
        ready = select.select([], [fd], [], max(left, 0))[1] if write else select.select([fd], [], [], max(left, 0))[0]
        if not ready:
            raise LeptonError("no answer before the time limit")

    def close(self, kill: bool = False) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@atexit.register
def _close_helper() -> None:
    if _helper is not None and _helper.owner == os.getpid():
        _helper.close()


@functools.lru_cache(maxsize=1)
def library_version() -> str:
    """The installed lepton-jpeg-python version, '' when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LEPTON_PACKAGE)
    except PackageNotFoundError:
        return ""


# ----------------------------------------------------------------------------------------------- the codec
class Lepton(Codec):
    name = "lepton"
    summary = (f"JPEG files recompressed by Lepton ({LEPTON_PACKAGE} {LEPTON_VERSION}), restored byte-exact "
               "(sha256 checked); other files cannot use it")
    keeps_original = True
    defaults: dict = {}

    def available(self) -> bool:
        return bool(library_version())

    def describe(self) -> dict:
        return {**super().describe(), "library": f"{LEPTON_PACKAGE} {library_version() or 'not installed'}"}

    def supports(self, image: DecodedImage) -> str | None:
        if image.original is None or image.format != "JPEG":
            return "Lepton recompresses JPEG files only"
        if not self.available():
            return f"{LEPTON_PACKAGE} is not installed"
        return None

    def encode(self, image: DecodedImage, **params) -> Encoded:
        self.params(params)
        data = image.original
        try:
            payload = run("c", data)
            back = run("d", payload)
        except LeptonError as exc:
            raise UnsupportedImage(f"Lepton cannot take this JPEG: {exc}") from exc
        if back != data:  # Lepton's own rule: a compressed file is trusted only once it decodes to the input
            raise UnsupportedImage("Lepton does not restore this JPEG byte-exact (a file without its end marker, "
                                   f"or other damage): {len(back)} bytes back of {len(data)}, not the same")
        return Encoded(payload, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                 "library": library_version()})

    def decode(self, payload: bytes, header: Header) -> None:
        _check(payload, header)
        return None  # a JPEG file, kept as its bytes like a stored one: original_bytes gives them

    def original_bytes(self, payload: bytes, header: Header) -> bytes:
        size, sha = _check(payload, header)
        if not self.available():  # an intact stream this build cannot read: not a damaged one
            raise UnsupportedStream(f"decoding a lepton stream needs {LEPTON_PACKAGE}: pip install "
                                    f"{LEPTON_PACKAGE}=={LEPTON_VERSION}")
        try:
            data = run("d", payload)
        except LeptonError as exc:
            raise CorruptStream(f"lepton payload does not decode: {exc}") from exc
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise CorruptStream(f"lepton payload decodes to {len(data)} bytes that are not the JPEG it was made "
                                f"from ({size} bytes, sha256 {sha[:16]}...): the stream is damaged")
        return data


def _check(payload: bytes, header: Header) -> tuple[int, str]:
    """The file size and sha256 the header records, checked against each other and the payload's own header
    (before Lepton allocates for the size it announces)."""
    p = header.params
    size, sha = p.get("bytes"), p.get("sha256")
    if type(size) is not int or not 0 < size < 1 << 32 or not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise CorruptStream("lepton stream lacks the JPEG file's size and sha256 in its params")
    if header.pixel_sha256 or header.height or header.width or header.channels:
        raise CorruptStream("lepton stream has pixel fields: it holds a JPEG file, not pixels")
    if len(payload) < 28 or payload[:2] != _MAGIC or int.from_bytes(payload[20:24], "little") != size:
        raise CorruptStream(f"lepton payload is not a Lepton file of the {size}-byte JPEG the header names")
    return size, sha


register(Lepton())

__all__ = ["Lepton", "LeptonError", "run", "LEPTON_VERSION"]
