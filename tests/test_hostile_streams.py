"""Hostile and damaged streams (issue 26): small fixtures in tests/hostile/, each with valid checksums, that once
made a decoder allocate gigabytes, decode wrong pixels or metadata silently, or fail with something other than
CorruptStream. Every one must now be refused with CorruptStream, cheaply.

The fixtures are data, written once by ``python tests/test_hostile_streams.py --make-fixtures`` (``make()``
below says how each was built)."""

from __future__ import annotations

import hashlib
import struct
import sys
import tracemalloc
from pathlib import Path

import crc32c
import numpy as np
import pytest

import pixark.codec as pc
from pixark.codec import container

HOSTILE = Path(__file__).parent / "hostile"
GOLDEN = Path(__file__).parent / "golden"
PALETTE = GOLDEN / "png-palette-text-v2.pxk"  # 16x12 palette image with two PNG text chunks


def forge(fields: dict, blobs: dict[str, bytes], payload: bytes, version: int = container.VERSION,
          rehash: bool = True) -> bytes:
    """A container with any header JSON and valid CRCs. ``rehash``: the version 2 content hash made valid too (a
    buggy or hostile encoder); without it the header keeps its hash, as when only the body was changed."""
    fields = {**fields, "payload_bytes": len(payload)}
    if version < 2:
        fields.pop("content_sha256", None)
    if blobs or "blobs" not in fields:
        fields["blobs"] = {k: len(v) for k, v in blobs.items()}
    if version >= 2 and rehash:
        h = hashlib.sha256(container._json({k: v for k, v in fields.items() if k != "content_sha256"}))
        for b in blobs.values():
            h.update(b)
        h.update(payload)
        fields["content_sha256"] = h.hexdigest()
    text = container._json(fields)
    head = struct.pack("<4sHI", container.MAGIC, version, len(text)) + text
    body = b"".join(blobs.values()) + payload
    return head + struct.pack("<I", crc32c.crc32c(head)) + body + struct.pack("<I", crc32c.crc32c(body))


def _parts(stream: bytes) -> tuple[dict, dict, bytes]:
    header, blobs, payload = container.unpack(stream)
    return header.to_json(), blobs, payload


def make() -> dict[str, bytes]:
    arr = np.arange(12 * 16 * 3, dtype=np.uint8).reshape(12, 16, 3)
    png = _parts(pc.encode(arr, "png"))
    other = _parts(pc.encode(arr[::-1].copy(), "png"))[2]
    jxl = _parts(pc.encode(arr, "jxl-ll"))
    raw = _parts(pc.encode(arr, "store"))
    pal_h, pal_b, pal_p = _parts(PALETTE.read_bytes())
    out = {
        # 1.6 Gpx announced by 4 kB, hash left empty so the old size check was skipped
        "jxl-empty-hash-huge.pxk": forge({**jxl[0], "pixel_sha256": "", "height": 40000, "width": 40000},
                                         jxl[1], jxl[2]),
        # other pixels of the same size under an empty hash: decoded silently before
        "png-empty-hash-other-pixels.pxk": forge({**png[0], "pixel_sha256": ""}, png[1], other),
        "store-raw-empty-hash.pxk": forge({**raw[0], "pixel_sha256": ""}, raw[1], raw[2][::-1]),
        # a changed palette (other colours) and changed text behind an intact header pixel hash
        "palette-changed.pxk": forge(pal_h, {**pal_b, "palette": pal_b["palette"][::-1]}, pal_p, rehash=False),
        "text-changed.pxk": forge(pal_h, {**pal_b, "text": b'{"Title":"forged"}'}, pal_p, rehash=False),
        # header JSON of the wrong shapes: four sites once raised AttributeError / TypeError
        "header-blobs-list.pxk": forge({**png[0], "blobs": [1, 2]}, {}, png[2]),
        "header-mode-list.pxk": forge({**png[0], "mode": ["RGB"]}, {}, png[2]),
        "header-codec-list.pxk": forge({**png[0], "codec": ["png"]}, {}, png[2]),
        "header-info-list.pxk": forge({**png[0], "info": ["dpi"]}, {}, png[2]),
        "header-dpi-text.pxk": forge({**png[0], "info": {"dpi": "72"}}, {}, png[2]),
        "header-height-bool.pxk": forge({**png[0], "height": True}, {}, png[2]),
        "header-v1-with-array.pxk": forge_raw(b"[1,2,3]", 1),
        "header-v2-without-content-hash.pxk": _as_version(forge(png[0], {}, png[2], version=1), 2),
    }
    if "mspsm" in pc.names() and pc.get("mspsm").available():
        # 410-byte stream: one 16384-pixel tile (the encoder caps tiles at 4096); grew to 11 GiB before
        h, b, _ = _parts(pc.encode(arr, "mspsm"))
        side = 16384
        payload = b"MSPS" + struct.pack("<BIIII", 4, side, side, side, 1) + struct.pack("<I", 300) + bytes(300)
        out["mspsm-tile-16384.pxk"] = forge({**h, "height": side, "width": side}, b, payload)
    return out


def forge_raw(text: bytes, version: int) -> bytes:
    head = struct.pack("<4sHI", container.MAGIC, version, len(text)) + text
    return head + struct.pack("<I", crc32c.crc32c(head)) + struct.pack("<I", crc32c.crc32c(b""))


def _as_version(stream: bytes, version: int) -> bytes:
    """The same stream under another container version number, header CRC made valid again."""
    (hlen,) = struct.unpack_from("<I", stream, 6)
    end = 10 + hlen
    head = stream[:4] + struct.pack("<H", version) + stream[6:end]
    return head + struct.pack("<I", crc32c.crc32c(head)) + stream[end + 4:]


FIXTURES = sorted(p.name for p in HOSTILE.glob("*.pxk"))


def test_fixtures_are_present():
    assert len(FIXTURES) >= 13, "run python tests/test_hostile_streams.py --make-fixtures"


@pytest.mark.parametrize("name", FIXTURES)
def test_hostile_stream_is_refused_cheaply(name):
    """CorruptStream (never another exception, wrong output or a big allocation): numpy and Python allocations
    stay under 64 MiB while the decoder refuses a stream that announces up to 2^28 pixels."""
    data = (HOSTILE / name).read_bytes()
    if name.startswith("mspsm"):  # the model's weights load once per process, whatever the stream: not counted
        from pixark.codec.mspsm import load_profile

        header = container.read_header(data)[0]
        load_profile(header.params["profile"], header.model_id)
    tracemalloc.start()
    try:
        with pytest.raises(pc.CorruptStream):
            pc.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{name}: {peak / 2**20:.0f} MiB allocated before refusing"


_PEAK = """
import resource, sys
import pixark.codec as pc
from pixark.codec.mspsm import load_profile
load_profile("{profile}")  # weights and torch's own start-up: the same in both runs
pc.decode(pc.encode(pc.DecodedImage.from_array(__import__("numpy").zeros((8, 8, 3), "uint8")), "mspsm"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    pc.decode(open(sys.argv[1], "rb").read())
except pc.CorruptStream:
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_hostile_mspsm_stream_peak_memory_counts_torch_too():
    """tracemalloc does not see torch's tensors: the process's peak resident memory must not grow either."""
    import subprocess

    if "mspsm-tile-16384.pxk" not in FIXTURES:
        pytest.skip("no mspsm weights")
    from pixark.codec.mspsm import model as M

    out = subprocess.run([sys.executable, "-c", _PEAK.format(profile=M.DEFAULT_PROFILE),
                          str(HOSTILE / "mspsm-tile-16384.pxk")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grew_kib = int(out.stdout.split()[-1])
    assert grew_kib < 64 << 10, f"peak resident memory grew by {grew_kib / 1024:.0f} MiB before refusing"


@pytest.mark.parametrize("name", [n for n in FIXTURES if n.startswith("header-")])
def test_info_refuses_malformed_headers_too(name):
    with pytest.raises(pc.CorruptStream):
        pc.info((HOSTILE / name).read_bytes())


def test_fixtures_differ_from_intact_streams_only_where_the_name_says():
    """The forgeries are built from streams that decode: the same builder with nothing changed decodes fine."""
    h, b, p = _parts(PALETTE.read_bytes())
    back = pc.decode(forge(h, b, p))
    assert back.metadata.palette == b["palette"] and back.metadata.info["text"]["Title"] == "palette fixture"


def test_large_png_text_is_a_blob_not_header_json():
    """20 MB of text made encode fail ('container header too large'); it now rides in a blob and comes back."""
    text = "x" * (20 << 20)
    img = pc.DecodedImage.from_array(np.zeros((4, 4, 3), np.uint8))
    img.metadata.info["text"] = {"big": text}
    data = pc.encode(img, "png")
    assert pc.info(data)["blobs"]["text"] > 20 << 20
    assert pc.decode(data).metadata.info["text"]["big"] == text


def test_version_1_metadata_still_decodes():
    """Old streams keep PNG text in the JSON header and have no content hash: same pixels and metadata."""
    old, new = pc.decode((GOLDEN / "png-palette-text-v1.pxk").read_bytes()), pc.decode(PALETTE.read_bytes())
    assert pc.info((GOLDEN / "png-palette-text-v1.pxk").read_bytes())["format_version"] == 1
    assert np.array_equal(old.pixels, new.pixels)
    assert (old.metadata.palette, old.metadata.palette_mode, old.metadata.info) == \
        (new.metadata.palette, new.metadata.palette_mode, new.metadata.info)
    assert old.to_file() == new.to_file()


if __name__ == "__main__" and "--make-fixtures" in sys.argv:
    HOSTILE.mkdir(exist_ok=True)
    for name, data in make().items():
        (HOSTILE / name).write_bytes(data)
        print(name, len(data), "bytes")
