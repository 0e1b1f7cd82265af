"""Container robustness: every damaged stream either decodes to the original pixels or raises CorruptStream (the
learned codecs also with payload damage behind valid checksums);
unknown versions and codecs raise UnsupportedStream; nothing crashes, hangs or allocates from a bad header."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pixark.codec as pc
from pixark.codec import container
from images import photo_array

ARR = photo_array(24)
STREAMS = {name: pc.encode(ARR, name) for name in ("png", "webp-ll", "jxl-ll", "store")}


def _decodes_right_or_refuses(data: bytes) -> None:
    try:
        back = pc.decode(data)
    except (pc.CorruptStream, pc.UnsupportedStream):
        return
    assert np.array_equal(back.pixels, ARR), "damaged stream decoded to wrong pixels"


fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(codec=st.sampled_from(sorted(STREAMS)), data=st.data())
def test_bit_flips(codec, data):
    stream = bytearray(STREAMS[codec])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] ^= 1 << data.draw(st.integers(0, 7))
    _decodes_right_or_refuses(bytes(stream))


@fuzz
@given(codec=st.sampled_from(sorted(STREAMS)), data=st.data())
def test_truncations(codec, data):
    stream = STREAMS[codec]
    cut = data.draw(st.integers(0, len(stream) - 1))
    with pytest.raises(pc.CorruptStream):
        pc.decode(stream[:cut])


@fuzz
@given(a=st.sampled_from(sorted(STREAMS)), b=st.sampled_from(sorted(STREAMS)), data=st.data())
def test_splices(a, b, data):
    s, t = STREAMS[a], STREAMS[b]
    i = data.draw(st.integers(0, len(s)))
    j = data.draw(st.integers(0, len(t)))
    _decodes_right_or_refuses(s[:i] + t[j:])


def _rebuild(stream: bytes, **changes) -> bytes:
    """A stream with header fields changed and every checksum and hash made valid again: what a buggy or hostile
    encoder could write. The decoder must still refuse it or decode the right pixels."""
    header, blobs, payload = container.unpack(stream)
    return container.pack(container.Header(**{**header.to_json(), **changes}), blobs, payload)


def test_unknown_version_is_unsupported_not_corrupt():
    stream = bytearray(STREAMS["png"])
    stream[4:6] = struct.pack("<H", 99)
    with pytest.raises(pc.UnsupportedStream, match="version 99"):
        pc.decode(bytes(stream))


def test_unknown_codec_and_codec_version():
    with pytest.raises(pc.UnsupportedStream, match="unknown codec 'zzz'"):
        pc.decode(_rebuild(STREAMS["png"], codec="zzz"))
    with pytest.raises(pc.UnsupportedStream, match="payload version 7"):
        pc.decode(_rebuild(STREAMS["png"], codec_version=7))


def test_huge_dimensions_are_refused_before_allocating():
    for h, w in ((1 << 20, 1 << 20), (0, 5), (-1, 4)):
        with pytest.raises(pc.CorruptStream):
            pc.decode(_rebuild(STREAMS["store"], height=h, width=w))


def test_valid_checksums_but_wrong_content_is_caught_by_the_pixel_hash():
    with pytest.raises(pc.CorruptStream, match="pixel hash"):
        pc.decode(_rebuild(STREAMS["png"], pixel_sha256="0" * 64))
    with pytest.raises(pc.CorruptStream):
        pc.decode(_rebuild(STREAMS["png"], height=ARR.shape[0] - 1))
    with pytest.raises(pc.CorruptStream, match="mode"):
        pc.decode(_rebuild(STREAMS["png"], mode="RGBA"))


def test_header_of_the_wrong_type_and_garbage():
    with pytest.raises(pc.CorruptStream):
        pc.decode(_rebuild(STREAMS["png"], height="tall"))
    for junk in (b"", b"\x89PX", b"GIF89a" + bytes(100), bytes(1000)):
        with pytest.raises(pc.CorruptStream):
            pc.decode(junk)
    with pytest.raises(pc.CorruptStream, match="trailing"):
        pc.decode(STREAMS["png"] + b"\x00")


def test_info_reads_only_the_header():
    meta = pc.info(STREAMS["jxl-ll"])
    assert meta["codec"] == "jxl-ll" and meta["height"] == ARR.shape[0] and meta["format_version"] == 2
    assert meta["pixel_sha256"] == pc.pixel_sha256(ARR)
    # info works on a stream whose payload is damaged: it is a header-only read
    damaged = bytearray(STREAMS["jxl-ll"])
    damaged[-10] ^= 0xFF
    assert pc.info(bytes(damaged))["codec"] == "jxl-ll"


@pytest.mark.parametrize("codec", ["png", "webp-ll", "jxl-ll"])
def test_inner_header_dimensions_are_checked_before_the_library_decodes(codec):
    """A payload from another (bigger) image under this header, all checksums valid: refused from the payload's own
    header, naming both sizes, before libpng/libwebp/libjxl allocate for the announced image."""
    big = pc.encode(np.zeros((1500, 2000, 3), np.uint8), codec)
    header, blobs, _ = container.unpack(STREAMS[codec])
    _, _, payload = container.unpack(big)
    forged = container.pack(header, blobs, payload)
    with pytest.raises(pc.CorruptStream, match="payload says 2000x1500"):
        pc.decode(forged)


# ------------------------------------------------------------------------------------------------ learned codecs
def _learned_streams() -> dict[str, tuple[bytes, np.ndarray]]:
    """Small streams of the learned codecs with shipped weights: mspsm (one tile and several), msr (payload
    version 2, and version 3: an image wider than msr's tile)."""
    out = {}
    wide = np.ascontiguousarray(np.tile(ARR[:8], (1, 1100 // ARR.shape[1] + 1, 1)))
    for spec, arr in (("mspsm", ARR), ("mspsm:tile=16", ARR), ("msr", ARR), ("msr:T=1", wide)):
        name = spec.split(":")[0]
        if name in pc.names() and pc.get(name).available():
            out[spec] = (pc.encode(arr, spec), arr)
    return out


LEARNED = _learned_streams()


def _with_payload(stream: bytes, payload: bytes) -> bytes:
    header, blobs, _ = container.unpack(stream)
    return container.pack(header, blobs, payload)


@pytest.mark.skipif(not LEARNED, reason="no learned codec weights in this build")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(sorted(LEARNED) or ["-"]), data=st.data())
def test_damaged_learned_payloads_with_valid_checksums(spec, data):
    """Payload damage that the container's checksums do not catch (a buggy or hostile encoder): the codec's own
    checks, or the pixel hash, refuse it; nothing crashes, hangs, or returns other pixels."""
    stream, arr = LEARNED[spec]
    payload = bytearray(container.unpack(stream)[2])
    if data.draw(st.booleans()):  # the payload's own head: sizes, versions, parameters, tile tables
        pos = data.draw(st.integers(0, min(48, len(payload)) - 1))
    else:
        pos = data.draw(st.integers(0, len(payload) - 1))
    payload[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([None, None, len(payload) // 2, len(payload) - 1]))
    damaged = _with_payload(stream, bytes(payload[:cut]))
    try:
        back = pc.decode(damaged)
    except (pc.CorruptStream, pc.UnsupportedStream):
        return
    assert np.array_equal(back.pixels, arr), "damaged stream decoded to wrong pixels"


def test_pixel_hash_is_its_definition_for_any_layout():
    """sha256 of "(shape):dtype:" and the little-endian samples in C order, whatever the array's layout or byte
    order (streams written by every earlier version carry this hash); computed without copying the image."""
    import hashlib

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), rng.integers(0, 65536, (6, 4, 1), dtype=np.uint16),
              rng.integers(0, 65536, (6, 4, 3), dtype=np.uint16).astype(">u2"),
              rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)[::2, 1::3],
              rng.integers(0, 256, (5, 6, 3), dtype=np.uint8).transpose(1, 0, 2), np.zeros((0, 3, 3), np.uint8)]
    for a in arrays:
        le = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
        want = hashlib.sha256(f"{a.shape}:{a.dtype.name}:".encode() + le.tobytes()).hexdigest()
        assert pc.pixel_sha256(a) == want, (a.dtype, a.shape, a.strides)
    assert pc.pixel_sha256(arrays[2]) == pc.pixel_sha256(arrays[2].astype("<u2"))  # the values, not the bytes
