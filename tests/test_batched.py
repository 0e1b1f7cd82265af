"""The batched coder (issue 27): tiles of many images share network batches, and every payload is byte-identical
to the image coded alone; a damaged payload among many fails alone. Coder level with a small seeded network
(as tests/test_mspsm.py), codec and API level with the shipped weights, pipeline level with the workers' coding
path (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixark.codec.errors import CorruptStream
from pixark.codec.mspsm import coder

from test_mspsm import _photo, _seeded_net

torch.set_num_threads(1)

# 1x1, odd sizes, several shapes, two images of one shape, images larger than the tile (24): edge tiles of
# different sizes and the same sizes as other images' whole tiles
SHAPES = [(1, 1), (7, 5), (24, 24), (33, 17), (24, 24), (50, 61), (2, 9)]


@pytest.fixture(scope="module")
def inet():
    return _seeded_net()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(27)
    out = []
    for k, (h, w) in enumerate(SHAPES):
        out.append(_photo(h, w, k) if h * w > 100 else rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return out


@pytest.fixture(scope="module")
def alone(inet, images):
    """Each image coded on its own, one tile per network call (no batching at all)."""
    return [coder.encode(inet, px, tile=24, tile_batch=1, batch_pixels=0) for px in images]


def test_encode_many_is_byte_identical_to_encode(inet, images, alone):
    assert coder.encode_many(inet, images, tile=24) == alone


def test_batch_limits_never_change_the_streams(inet, images, alone):
    for tile_batch, batch_pixels in [(1, 0), (3, 0), (2, 1500), (64, None)]:
        assert coder.encode_many(inet, images, tile=24, tile_batch=tile_batch, batch_pixels=batch_pixels) == alone
    # a tile side per image
    tiles = [24, 16, 24, 17, 33, 24, 24]
    want = [coder.encode(inet, px, tile=t, tile_batch=1, batch_pixels=0) for px, t in zip(images, tiles)]
    assert coder.encode_many(inet, images, tile=tiles) == want


def test_gathered_symbols_coded_in_parts_give_the_same_streams(inet, images, alone, monkeypatch):
    """A tile's encoder range-codes what it gathered when it is done, or in parts past FLUSH symbols (memory):
    the coding order, and so the stream, is the same."""
    monkeypatch.setattr(coder._TileEncoder, "FLUSH", 50)
    assert [coder.encode(inet, px, tile=24, tile_batch=1, batch_pixels=0) for px in images] == alone
    for v in (2, 3):
        want = coder.encode(inet, images[5], tile=24, version=v)
        monkeypatch.setattr(coder._TileEncoder, "FLUSH", 1 << 20)
        assert coder.encode(inet, images[5], tile=24, version=v) == want
        monkeypatch.setattr(coder._TileEncoder, "FLUSH", 50)


def test_batches_group_by_size_and_respect_the_limits():
    from pixark.codec import tiling

    grids = [tiling.grid(50, 61, 24, 24), tiling.grid(24, 24, 24, 24), tiling.grid(1, 1, 24, 24)]
    for tile_batch, limit in [(1, 0), (2, 0), (1, 24 * 24 * 3), (2, None)]:
        batches = coder._batches(grids, [4, 4, 4], tile_batch, limit)
        seen = sorted(nk for _, b in batches for nk in b)
        assert seen == sorted((n, k) for n, g in enumerate(grids) for k in range(len(g)))  # every tile once
        for (th, tw, ver), b in batches:
            assert all(grids[n][k][2:] == (th, tw) for n, k in b)
            cap = max(tile_batch, (coder.BATCH_PIXELS if limit is None else limit) // (th * tw))
            assert len(b) <= cap
    # payload versions never share a batch (decoding golden streams of several versions together)
    assert len(coder._batches([grids[1], grids[1]], [3, 4], 8)) == 2


def test_decode_many_round_trip(inet, images, alone):
    got = coder.decode_many(inet, alone)
    assert all(np.array_equal(g, px) for g, px in zip(got, images))
    got = coder.decode_many(inet, alone, tile_batch=1, batch_pixels=0)
    assert all(np.array_equal(g, px) for g, px in zip(got, images))


def test_decode_many_of_older_payload_versions_together(inet, images):
    payloads = [coder.encode(inet, px, tile=24, version=v) for px, v in zip(images, [2, 3, 4, 4, 3, 2, 1])]
    got = coder.decode_many(inet, payloads)
    assert all(np.array_equal(g, px) for g, px in zip(got, images))


def test_one_damaged_payload_fails_alone(inet, images, alone):
    bad = list(alone)
    bad[1] = b"XXXX" + alone[1][4:]  # bad magic: refused before decoding
    bad[3] = alone[3][:-4]  # truncated
    got = coder.decode_many(inet, bad)
    assert isinstance(got[1], CorruptStream) and isinstance(got[3], CorruptStream)
    assert all(np.array_equal(got[n], images[n]) for n in (0, 2, 4, 5, 6))
    with pytest.raises(CorruptStream):
        coder.decode(inet, bad[1])


def test_a_failing_tile_is_isolated_from_its_batch(inet, images, alone, monkeypatch):
    """A batch that raises is decoded again tile by tile: only the payload whose tile raises fails, the other
    24x24 tiles of its batch (images 2, 4 and tiles of 5) decode."""
    target = alone[4][25:]  # its one tile's stream (21-byte head, one length)

    class Planted(coder.Decoder):
        def __init__(self, data):
            if bytes(data) == target:
                raise CorruptStream("planted")
            super().__init__(data)

    monkeypatch.setattr(coder, "Decoder", Planted)
    got = coder.decode_many(inet, alone)
    assert isinstance(got[4], CorruptStream)
    assert all(np.array_equal(got[n], images[n]) for n in range(len(images)) if n != 4)


def test_device_errors_are_raised_not_blamed_on_a_payload(inet, alone, monkeypatch):
    from pixark.codec.errors import DeviceError

    def boom(*a, **k):
        raise DeviceError("out of memory")

    monkeypatch.setattr(coder, "run_tiles", boom)
    with pytest.raises(DeviceError):
        coder.decode_many(inet, alone[:2])


# ----------------------------------------------------------------------------- codec and API level (shipped weights)
def _shipped():
    from pixark.codec.mspsm import model as M

    import os

    if not os.path.exists(M.STORE.path(M.DEFAULT_PROFILE)):
        pytest.skip("no shipped weights for the default profile")


def test_api_encode_many_and_decode_many_equal_one_by_one():
    import pixark.codec as pc

    _shipped()
    imgs = [_photo(h, w, k) for k, (h, w) in enumerate([(16, 16), (16, 16), (9, 23), (40, 33)])]
    imgs.append(np.zeros((8, 8), np.uint8))  # grey: mspsm cannot take it, auto codes it with jxl-ll
    for codec in ("auto", "mspsm:tile=16"):
        want = []
        for px in imgs:
            try:
                want.append(pc.encode(px, codec))
            except pc.CodecError as exc:
                want.append(type(exc))
        got = pc.encode_many(imgs, codec, verify=True, return_exceptions=True)
        assert [type(g) if isinstance(g, Exception) else g for g in got] == want, codec
        datas = [g for g in got if not isinstance(g, Exception)]
        back = pc.decode_many(datas)
        assert [b.pixels.tobytes() for b in back] == [pc.decode(d).pixels.tobytes() for d in datas]
    assert pc.info(pc.encode_many(imgs[:2], "auto")[0])["codec"] in ("mspsm", "jxl-ll")
    with pytest.raises(pc.UnsupportedImage):
        pc.encode_many(imgs, "mspsm")  # without return_exceptions the first failure is raised


def test_api_decode_many_reports_a_damaged_container_alone():
    import pixark.codec as pc

    _shipped()
    imgs = [_photo(16, 16, k) for k in range(3)]
    datas = pc.encode_many(imgs, "mspsm")
    bad = bytearray(datas[1])
    bad[-12] ^= 0x55  # inside the payload: the container's checksum or the pixel hash catches it
    got = pc.decode_many([datas[0], bytes(bad), datas[2], b"junk"], return_exceptions=True)
    assert isinstance(got[1], pc.CorruptStream) and isinstance(got[3], pc.CodecError)
    assert np.array_equal(got[0].pixels, imgs[0]) and np.array_equal(got[2].pixels, imgs[2])
    with pytest.raises(pc.CodecError):
        pc.decode_many([datas[0], bytes(bad)])


def test_codec_default_encode_many_loops_one_by_one():
    import pixark.codec as pc

    jxl = pc.get("jxl-ll")
    imgs = [pc.load(_photo(8, 8, k)) for k in range(2)] + [pc.load(np.zeros((4, 4, 3), np.uint16))]
    got = jxl.encode_many(imgs)
    assert len(got) == 3
    assert [g.payload for g in got[:2]] == [jxl.encode(i).payload for i in imgs[:2]]


# ----------------------------------------------------------------------------- pipeline level (no Ray)
def test_workers_coding_path_gives_the_records_of_one_by_one(tmp_path):
    """An archive batch of small images coded together gives exactly the rows and records of coding each alone
    (timings aside), whatever the pixel budget; unreadable and non-image objects keep their rows."""
    import fsspec
    from PIL import Image

    from pixark.pipeline import coding

    _shipped()
    items = []
    for k, (h, w) in enumerate([(16, 16), (12, 20), (16, 16), (30, 7)]):
        p = tmp_path / f"{k}.png"
        Image.fromarray(_photo(h, w, k)).save(p)
        items.append((f"id{k}", str(p), f"file://{p}", p.stat().st_size))
    (tmp_path / "note.txt").write_bytes(b"not an image")
    items.insert(2, ("txt", str(tmp_path / "note.txt"), "file://note", 12))
    items.insert(4, ("gone", str(tmp_path / "missing.png"), "file://missing", 10))
    fs = fsspec.filesystem("file")

    def strip(rows):
        return [({k: v for k, v in r.items() if k != "encode_seconds"}, rec) for r, rec in rows]

    want = strip([coding.code_object(fs, p, i, u, s, "auto", True) for i, p, u, s in items])
    for budget in (None, 300, 0):
        got = coding.code_objects(fs, items, "auto", True, batch_pixels=budget)
        assert strip(got) == want, budget
        assert all(r["encode_seconds"] >= 0 for r, _ in got)


def test_verify_and_restore_decode_a_run_together_and_a_damaged_record_fails_alone(tmp_path):
    """Records of small mspsm images back to back in one shard: verify and restore decode the run together; the
    record damaged inside its payload (CRC32C not given, so the decoder must catch it) is the only finding."""
    import fsspec

    import pixark.codec as pc
    from pixark.pipeline import catalog, restore, verify

    _shipped()
    imgs = [_photo(16, 16 + k, k) for k in range(4)]
    recs = pc.encode_many(imgs, "mspsm")
    bad = bytearray(recs[2])
    bad[-12] ^= 0x55
    recs[2] = bytes(bad)
    rows, off = [], 0
    for k, (px, rec) in enumerate(zip(imgs, recs)):
        rows.append({"image_id": f"i{k}", "name": f"i{k}.png", "codec": "mspsm", "offset": off, "length": len(rec),
                     "pixel_sha256": pc.pixel_sha256(px), "width": px.shape[1], "height": px.shape[0],
                     "format": "PNG", "status": "ok"})
        off += len(rec)
    (tmp_path / "shard").write_bytes(b"".join(recs))
    fs = fsspec.filesystem("file")
    assert catalog.batches(rows, 64) == [rows]  # small learned records: one task
    assert [len(b) for b in catalog.batches(rows, 64, learned_pixels=600)] == [2, 2]  # 256 + 272, 288 + 304
    got = verify.check_records(fs, str(tmp_path / "shard"), rows)
    assert [r["status"] for r in got] == [verify.OK, verify.OK, verify.CORRUPT, verify.OK]
    out = restore.restore_records(fs, str(tmp_path / "shard"), rows, fs, str(tmp_path / "out"), "png")
    assert [r["status"] for r in out] == ["written", "written", "error", "written"]
    assert pc.decode(recs[0]).pixels.tobytes() == pc.load((tmp_path / "out" / "i0.png").read_bytes()).pixels.tobytes()
