"""A helper process that runs Lepton for a forked process (codec/jpeg.py starts it; not imported by pixark).

lepton_jpeg_python keeps a Rust thread pool that a forked child inherits without its threads, so a call there
waits forever for workers that do not exist. A process forked after its parent used Lepton sends its calls here
instead: a fresh interpreter (started with ``python -P``, no fork of a used pool) whose pool is its own.

Protocol on stdin/stdout, integers little-endian, plain bytes (never pickled):
    request:  op (1 byte: b"c" compress, b"d" decompress) | length u64 | data
    response: status (1 byte: 0 ok, 1 error) | length u64 | result bytes, or the error message (UTF-8)
The helper exits when stdin closes (its parent ended or let it go).
"""

import struct
import sys

_HEAD = struct.Struct("<cQ")


def _read_exact(stream, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def serve(inp, out) -> None:
    import lepton_jpeg_python as lepton

    while True:
        head = _read_exact(inp, _HEAD.size)
        if head is None:
            return
        op, n = _HEAD.unpack(head)
        data = _read_exact(inp, n)
        if data is None:
            return
        try:
            if op == b"c":
                result, status = lepton.compress_bytes(data), 0
            elif op == b"d":
                result, status = lepton.decompress_bytes(data), 0
            else:
                result, status = f"unknown operation {op!r}".encode(), 1
        except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException is a BaseException: report it too
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            result, status = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"), 1
        out.write(_HEAD.pack(bytes([status]), len(result)))
        out.write(result)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
