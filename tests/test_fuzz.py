"""Fuzz targets (issue 26): damaged streams and damaged manifests, seeded and bounded.

Streams: small streams of every classical codec, a palette image with text (metadata blobs) and stored files are
damaged (bit flips, byte changes, truncations, splices, inserted bytes), with the container's CRCs made valid again
half of the time so the damage reaches the header checks and the decoders. The oracle: decode raises CorruptStream
or UnsupportedStream, or returns exactly the original (pixels, metadata, stored bytes; for a version 1 stream
behind recomputed CRCs the pixels only: version 1 has no hash over its metadata, which is why version 2 exists).
With the content hash recomputed too (a hostile encoder), what comes back must at least match the header's own
pixel hash and be writable. Nothing else may happen: no other exception, no hang (a 20 s alarm per case turns one into a failure).

Manifests: one manifest part of tests/archives/v1-small is damaged (bit flips in the Parquet bytes, or one value of
one row changed to another row's, a random one or null), with archive.json as old archives have it and with the
part hashes this pixark records. The oracle: restore returns a summary (never raises); every file it writes has
the right name and content; every file it does not write is named (errors) or the archive is reported damaged.

In the test suite the stream target runs 8000 cases and the manifest target 150 (each about 10-20 s on 2 cores);
longer runs:
    PIXARK_FUZZ_STREAMS=200000 PIXARK_FUZZ_MANIFESTS=3000 python -m pytest -q tests/test_fuzz.py
    python tests/test_fuzz.py streams 20000 [seed]      # or: manifests; prints the count of each outcome
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pixark.codec as pc
from pixark.codec import container

HERE = Path(__file__).parent
STREAM_CASES = int(os.environ.get("PIXARK_FUZZ_STREAMS", "8000"))
MANIFEST_CASES = int(os.environ.get("PIXARK_FUZZ_MANIFESTS", "150"))
OLD = HERE / "archives" / "v1-small"


class Hang(Exception):
    pass


def _alarm(seconds: int):
    def fire(*_):
        raise Hang(f"no result after {seconds} s")

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


# ------------------------------------------------------------------------------------------------ streams
def stream_seeds() -> list[bytes]:
    rng = np.random.default_rng(26)
    photo = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
    photo[:, :6] //= 8  # some structure, so the payloads are not all literal
    grey16 = rng.integers(0, 65535, (7, 9), dtype=np.uint16)
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(photo).save(buf, "JPEG", quality=85)
    seeds = [pc.encode(photo, c) for c in ("png", "webp-ll", "jxl-ll", "store")]
    seeds += [pc.encode(grey16, "png"), pc.encode(buf.getvalue()), pc.encode(b"not an image\n")]
    seeds += [(HERE / "golden" / "png-palette-text-v2.pxk").read_bytes(),
              (HERE / "golden" / "png-palette-text-v1.pxk").read_bytes()]
    return seeds


def _fix_crcs(s: bytes) -> bytes:
    """Recompute the header and body CRCs where the layout still allows it (lengths read from the data)."""
    if len(s) < 14:
        return s
    (hlen,) = struct.unpack_from("<I", s, 6)
    end = 10 + hlen
    if end + 8 > len(s):
        return s
    body = s[end + 4:-4]
    return s[:end] + struct.pack("<I", crc32c.crc32c(s[:end])) + body + struct.pack("<I", crc32c.crc32c(body))


def _rehash(s: bytes) -> bytes | None:
    """The stream with its content hash recomputed (a hostile encoder), or None when it does not parse."""
    try:
        (hlen,) = struct.unpack_from("<I", s, 6)
        fields = json.loads(s[10:10 + hlen])
        h = container.Header(**fields)
        body_len = sum(h.blobs.values()) + h.payload_bytes
        start = 14 + hlen
        blobs, pos = {}, start
        for name, n in h.blobs.items():
            blobs[name] = s[pos:pos + n]
            pos += n
        return container.pack(h, blobs, s[pos:start + body_len]) if "content_sha256" in fields else None
    except Exception:
        return None


def mutate_stream(rng: random.Random, seeds: list[bytes]) -> tuple[bytes, bytes, str]:
    """(original, damaged, how)."""
    orig = rng.choice(seeds)
    s = bytearray(orig)
    op = rng.choice(["flip", "flip", "byte", "truncate", "splice", "insert", "header"])
    if op == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(s))
            s[i] ^= 1 << rng.randrange(8)
    elif op == "byte":
        s[rng.randrange(len(s))] = rng.randrange(256)
    elif op == "truncate":
        s = s[:rng.randrange(len(s))]
    elif op == "splice":
        other = rng.choice(seeds)
        s = s[:rng.randint(0, len(s))] + other[rng.randint(0, len(other)):]
    elif op == "insert":
        i = rng.randint(0, len(s))
        s[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:  # inside the JSON header: where field types and sizes live
        (hlen,) = struct.unpack_from("<I", s, 6)
        i = 10 + rng.randrange(hlen)
        s[i] = rng.choice(b'0123456789{}[]",:-.etruflans"')
    out, how = bytes(s), op
    if rng.random() < 0.5:
        out, how = _fix_crcs(out), how + "+crc"
        if rng.random() < 0.3:
            forged = _rehash(out)
            if forged is not None:
                out, how = forged, how + "+rehash"
    return orig, out, how


def check_stream(orig: bytes, damaged: bytes, how: str) -> str:
    """The outcome's name; raises AssertionError for a crash, hang or silent wrong output."""
    want = pc.decode(orig)
    _alarm(20)
    try:
        got = pc.decode(damaged)
    except (pc.CorruptStream, pc.UnsupportedStream):
        return "refused"
    finally:
        signal.alarm(0)
    if "rehash" in how:  # a consistent forgery: what comes back is what the header says, and writable
        h = container.read_header(damaged)[0]
        assert got.pixels is None or pc.pixel_sha256(got.pixels) == h.pixel_sha256, how
        try:
            got.to_file()
        except pc.CodecError:
            pass
        return "forged-consistent"
    same = (got.pixels is None and want.pixels is None) or (
        got.pixels is not None and want.pixels is not None and np.array_equal(got.pixels, want.pixels)
        and got.pixels.dtype == want.pixels.dtype)
    assert same, f"{how}: damaged stream decoded to other pixels"
    if "crc" in how and pc.info(damaged)["format_version"] == 1:
        return "v1-pixels-identical"  # version 1 has no hash over metadata: behind valid CRCs only pixels are checked
    assert (got.mode, got.format, got.metadata, got.original) == (want.mode, want.format, want.metadata,
                                                                  want.original), f"{how}: other metadata"
    return "decoded-identical"


def fuzz_streams(cases: int, seed: int = 0) -> Counter:
    seeds, rng, seen = stream_seeds(), random.Random(seed), Counter()
    for _ in range(cases):
        orig, damaged, how = mutate_stream(rng, seeds)
        try:
            seen[check_stream(orig, damaged, how)] += 1
        except (AssertionError, Hang):
            raise
        except Exception as exc:
            raise AssertionError(f"{how}: {type(exc).__name__}: {exc} (stream {damaged[:64].hex()}...)") from exc
    return seen


def test_fuzz_streams():
    seen = fuzz_streams(STREAM_CASES, seed=26)
    assert sum(seen.values()) == STREAM_CASES and seen["refused"] > 0 and seen["decoded-identical"] > 0


# ------------------------------------------------------------------------------------------------ manifests
def _originals(arc: Path) -> dict[str, bytes]:
    from pixark.pipeline.restore import restore

    with tempfile.TemporaryDirectory() as d:
        s = restore(str(arc), d)
        assert s["ok"], s
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in Path(d).rglob("*") if p.is_file()}


def mutate_part(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if rng.random() < 0.4:
        s = bytearray(data)
        i = rng.randrange(len(s))
        s[i] ^= 1 << rng.randrange(8)
        return bytes(s), f"flip byte {i}"
    t = pq.read_table(pa.BufferReader(data))
    cols = t.to_pydict()
    name = rng.choice([c for c in t.column_names if c != "manifest_version"])
    i = rng.randrange(t.num_rows)
    others = [v for v in cols[name] if v != cols[name][i]]
    choice = rng.random()
    field = t.schema.field(name)
    if choice < 0.4 and others:
        value = rng.choice(others)
    elif choice < 0.6:
        value = None
    elif pa.types.is_string(field.type):
        v = cols[name][i] or "x"
        j = rng.randrange(len(v))
        value = v[:j] + chr(ord(v[j]) ^ (1 << rng.randrange(5))) + v[j + 1:]
    elif pa.types.is_floating(field.type):
        value = rng.random() * 100
    else:
        value = max(0, (cols[name][i] or 0) ^ (1 << rng.randrange(12)))
    cols[name][i] = value
    schema = pa.schema([f.with_nullable(True) for f in t.schema], metadata=t.schema.metadata)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), buf, compression="zstd")
    return buf.getvalue(), f"row {i} {name} = {value!r}"


def fuzz_manifests(cases: int, seed: int = 0) -> Counter:
    from pixark.pipeline.restore import restore

    rng, seen = random.Random(seed), Counter()
    with tempfile.TemporaryDirectory() as tmp:
        arcs = {}
        for kind in ("old", "hashed"):
            arc = Path(tmp) / kind
            shutil.copytree(OLD, arc)
            if kind == "hashed":
                meta = json.loads((arc / "archive.json").read_text())
                for e in meta["shards"]:
                    e["manifest_sha256"] = hashlib.sha256((arc / e["manifest"]).read_bytes()).hexdigest()
                (arc / "archive.json").write_text(json.dumps(meta))
            arcs[kind] = arc
        want = _originals(arcs["old"])
        for n in range(cases):
            kind = rng.choice(sorted(arcs))
            arc = arcs[kind]
            part = rng.choice(sorted((arc / "manifests").glob("*.parquet")))
            pristine = part.read_bytes()
            damaged, how = mutate_part(rng, pristine)
            part.write_bytes(damaged)
            dest = Path(tmp) / f"out{n}"
            try:
                _alarm(60)
                s = restore(str(arc), str(dest))
            except Hang:
                raise
            except Exception as exc:
                raise AssertionError(f"{kind} {part.name} {how}: restore raised {type(exc).__name__}: {exc}") from exc
            finally:
                signal.alarm(0)
                part.write_bytes(pristine)
            written = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
            for name, data in written.items():
                assert want.get(name) == data, f"{kind} {part.name} {how}: {name} written wrong (silently)"
            named = {e["image_id"] for e in s["errors"] + s["not_archived"]}
            unnamed = set(want) - set(written) - named
            assert not unnamed or s["problems"], f"{kind} {part.name} {how}: {sorted(unnamed)} missing, unnamed"
            seen["intact" if s["ok"] and set(written) == set(want) else "damage reported"] += 1
            shutil.rmtree(dest, ignore_errors=True)
    return seen


def test_fuzz_manifests():
    seen = fuzz_manifests(MANIFEST_CASES, seed=26)
    assert sum(seen.values()) == MANIFEST_CASES and seen["damage reported"] > 0


if __name__ == "__main__":
    target, cases = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    print(dict({"streams": fuzz_streams, "manifests": fuzz_manifests}[target](cases, seed)))
