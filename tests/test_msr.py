"""msr codec: integer fast path == int64 reference on real photos, round trips (dev crops, odd and tiny sizes,
escape-heavy noise), streams independent of thread count and tile/batch shape, decode in another process, GPU
decode where CUDA exists, corrupt base detection, parameters and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pixark.codec as pc
from pixark.codec import tiling
from pixark.codec.errors import CorruptStream, UnsupportedImage

msr = pytest.importorskip("pixark.codec.msr")
from pixark.codec.msr import coder, model as M  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"

pytestmark = pytest.mark.skipif(not M.STORE.exists(M.DEFAULT_PROFILE),
                                reason="msr weights are not installed (codec/weights/msr-cpu.npz)")


def dev_photo(i: int = 0, h: int = 96, w: int = 128) -> np.ndarray:
    files = sorted((DEV / "gb82").glob("*.png")) + sorted((DEV / "cid22").glob("*.png"))
    if not files:
        pytest.skip(f"dev images not found under {DEV}")
    from PIL import Image

    with Image.open(files[i % len(files)]) as im:
        a = np.asarray(im.convert("RGB"))
    y, x = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return np.ascontiguousarray(a[max(y, 0):max(y, 0) + h, max(x, 0):max(x, 0) + w])


@pytest.fixture(scope="module")
def net():
    return M.STORE.load(M.DEFAULT_PROFILE)[0]


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------ exactness
def mid_coding_inputs(x: np.ndarray, known_frac: float, seed: int) -> torch.Tensor:
    """Network input as the coder builds it, with a random subset of residuals known (a mid-coding state)."""
    from pixark.codec.msr import webpbase

    xhat = webpbase.decode(webpbase.encode(x, 90), *x.shape[:2])
    r = x.astype(np.int64) - xhat
    known = np.random.default_rng(seed).random(x.shape[:2]) < known_frac
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32))[None]  # noqa
    return M.make_inputs(t(xhat), t(r), t(np.repeat(known[:, :, None], 3, 2).astype(np.float32)), 90)


@pytest.mark.parametrize("i,frac", [(0, 0.0), (1, 0.3), (2, 0.9)])
def test_fast_path_equals_integer_reference(net, i, frac, threads):
    inp = mid_coding_inputs(dev_photo(i, 64, 80), frac, i)
    for n in (1, 2):
        threads(n)
        fast = net(inp).numpy()
        assert np.array_equal(fast, net.reference(inp.numpy().astype(np.int64))), f"{n} threads"


def test_every_layer_fast_path_equals_reference(net):
    a = mid_coding_inputs(dev_photo(3, 48, 48), 0.5, 3)
    for name in M.IntNet.names(net.p)[:2]:  # conv_in (49 inputs) and a 3x3 block conv
        layer = net.layers[name]
        if a.shape[1] != layer.w.shape[1]:
            a = torch.from_numpy(np.random.default_rng(0).integers(0, 128, (1, layer.w.shape[1], 24, 24)).astype(np.float32))
        assert np.array_equal(layer.forward_int(a).numpy(), layer.forward_numpy(a.numpy()))


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("i", [0, 5, 30])
def test_dev_photo_round_trip_through_api(i):
    x = dev_photo(i, 120, 152)
    data = pc.encode(x, codec="msr", verify=True)
    info = pc.info(data)
    assert info["codec"] == "msr" and info["params"]["T"] == msr.MsrCodec.defaults["T"]
    assert len(info["model_id"]) == 64
    assert np.array_equal(pc.decode(data).pixels, x)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (3, 5), (17, 33), (31, 2)])
def test_odd_and_tiny_sizes(net, shape):
    rng = np.random.default_rng(sum(shape))
    smooth = (np.add.outer(np.arange(shape[0]), np.arange(shape[1])) * 7 % 256)[:, :, None] + np.array([0, 40, 90])
    for x in (rng.integers(0, 256, shape + (3,)).astype(np.uint8), (smooth % 256).astype(np.uint8)):
        for T in (1, 3):
            assert np.array_equal(coder.decode(coder.encode(x, net, 90, 5, T), net), x)


@pytest.mark.parametrize("k,q", [(4, 60), (6, 100), (5, 0)])
def test_other_k_and_q(net, k, q):
    x = dev_photo(7, 40, 56)
    assert np.array_equal(coder.decode(coder.encode(x, net, q, k, 2), net), x)


def test_escape_heavy_noise_round_trips(net):
    x = np.random.default_rng(5).integers(0, 256, (24, 40, 3)).astype(np.uint8)
    x[::2] = 0
    x[:, ::3] = 255  # large residuals everywhere: many MSB runs and escapes
    for k in (4, 5, 6):
        assert np.array_equal(coder.decode(coder.encode(x, net, 30, k, 5), net), x)


def test_more_iterations_than_pixels(net):
    x = dev_photo(2, 3, 4)
    assert np.array_equal(coder.decode(coder.encode(x, net, 90, 5, 40), net), x)


# ------------------------------------------------------------------------------------------------ determinism
def test_stream_independent_of_threads_and_tiles(net, threads):
    x = dev_photo(4, 72, 104)
    threads(1)
    ref = coder.encode(x, net, 90, 5, 3)
    for n, band, batch in [(2, 32, 4), (1, 1, 1), (2, 3, 2), (2, 7, 16), (1, 1000, 1)]:
        threads(n)
        assert coder.encode(x, net, 90, 5, 3, band=band, batch=batch) == ref, (n, band, batch)
        assert np.array_equal(coder.decode(ref, net, band=band, batch=batch), x), (n, band, batch)


def test_decode_in_another_process_with_other_settings(tmp_path):
    x = dev_photo(6, 64, 88)
    data = pc.encode(x, codec="msr:T=3")
    (tmp_path / "s.pxk").write_bytes(data)
    script = (
        "import sys, torch, pixark.codec as pc\n"
        "from pixark.codec.msr import coder\n"
        "torch.set_num_threads(2)\n"
        "coder.DEFAULT_BAND, coder.DEFAULT_BATCH = 2, 3\n"
        "img = pc.decode(open(sys.argv[1], 'rb').read())\n"
        "print(pc.pixel_sha256(img.pixels))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s.pxk")], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip() == pc.pixel_sha256(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (torch.cuda.is_available() "
                    "is False): the GPU path is tested only where CUDA exists")
def test_gpu_decode_of_cpu_stream(net):  # pragma: no cover - runs on GPU machines
    """Through the coder's ``device`` argument (the same net object: its layers keep a copy per device): a CPU
    stream decodes bit-exact on CUDA and CUDA encoding gives the same bytes, also with other band/batch shapes."""
    x = dev_photo(8, 96, 96)
    data = coder.encode(x, net, 90, 5, 4)
    assert np.array_equal(coder.decode(data, net, device="cuda"), x)
    assert coder.encode(x, net, 90, 5, 4, device="cuda") == data
    assert coder.encode(x, net, 90, 5, 4, band=7, batch=3, device="cuda") == data


# ------------------------------------------------------------------------------------------------ golden
# Golden streams keep the weights they were made with (a copy of the first shipped msr-cpu.npz), so shipping new
# weights does not retire them; they are decoded at the coder level with those weights.
GOLDEN = Path(__file__).parent / "golden"
GOLDEN_MANIFEST = GOLDEN / "msr-golden.json"
GOLDEN_WEIGHTS = GOLDEN / "msr-golden-weights.npz"


def _golden():
    return json.loads(GOLDEN_MANIFEST.read_text()) if GOLDEN_MANIFEST.exists() else {}


def _golden_stream(name):
    """(manifest entry, container header, payload, golden net) of one golden file."""
    from pixark.codec.container import unpack

    exp = _golden()[name]
    header, _, payload = unpack((GOLDEN / name).read_bytes())
    net, model_id = M.STORE.read(str(GOLDEN_WEIGHTS), header.params["profile"])
    assert header.model_id == model_id == exp["model_id"]  # made with exactly these weights
    return exp, header, payload, net


@pytest.mark.parametrize("name", sorted(_golden()))
def test_golden_msr_stream_decodes(name):
    import hashlib

    exp, header, payload, net = _golden_stream(name)
    assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == exp["stream_sha256"]
    assert pc.pixel_sha256(coder.decode(payload, net)) == exp["pixel_sha256"]


def test_golden_streams_cover_every_payload_version():
    got = {name: coder.parse(_golden_stream(name)[2])["version"] for name in _golden()}
    assert all(v == _golden()[n].get("payload_version", 1) for n, v in got.items())
    assert set(got.values()) == set(coder.PAYLOAD_VERSIONS)


@pytest.mark.parametrize("name", sorted(n for n, e in _golden().items()
                                        if e.get("payload_version", 1) in (coder.PAYLOAD_VERSION, coder.TILED_VERSION)))
def test_golden_msr_stream_reencodes_identically(name):
    """Same pixels and parameters give the same bytes (the WebP encoder is part of this: skip if libwebp differs)."""
    import imagecodecs

    exp, header, payload, net = _golden_stream(name)
    if exp.get("libwebp") != imagecodecs.webp_version():
        pytest.skip(f"golden stream made with {exp.get('libwebp')}, this libwebp is {imagecodecs.webp_version()}")
    p = header.params
    assert coder.encode(coder.decode(payload, net), net, p["q"], p["k"], p["T"]) == payload


# ------------------------------------------------------------------------------------------------ errors
def test_changed_lossy_base_is_refused(net):
    x = dev_photo(9, 32, 32)
    payload = bytearray(coder.encode(x, net, 90, 5, 2))
    payload[coder._HEAD.size] ^= 1  # first byte of the stored X̂ hash
    with pytest.raises(CorruptStream, match="lossy base"):
        coder.decode(bytes(payload), net)


def test_unknown_payload_version_is_unsupported(net):
    from pixark.codec.errors import UnsupportedStream

    payload = bytearray(coder.encode(dev_photo(2, 24, 24), net, 90, 5, 2))
    assert payload[3] == coder.PAYLOAD_VERSION
    payload[3] = 9
    with pytest.raises(UnsupportedStream, match="version 9"):
        coder.decode(bytes(payload), net)


@pytest.mark.parametrize("cut", [0, 5, 20, 60])
def test_truncated_payload_is_corrupt(net, cut):
    payload = coder.encode(dev_photo(1, 24, 24), net, 90, 5, 2)
    with pytest.raises(CorruptStream):
        coder.decode(payload[:cut], net)


def test_msb_side_information_is_checked():
    """The MSB runs round-trip; side information whose histograms do not add up to the number of runs (which a
    damaged varint can make as large as 2**62, overflowing the table arithmetic) is refused as such."""
    from pixark.codec import entropy
    from pixark.codec.msr import rle

    rng = np.random.default_rng(0)
    msb = np.where(rng.random((6, 7, 3)) < 0.2, rng.integers(-3, 4, (6, 7, 3)), 0)
    enc = entropy.Encoder()
    side = rle.encode(enc, msb, 5)
    words = enc.finish()
    back, used = rle.decode(entropy.Decoder(words), side, 0, msb.shape, 5)
    assert np.array_equal(back, msb) and used == len(side)
    fields, _ = rle.read_varints(side, 0, 1 + rle.N_BUCKETS + 2 * rle.value_offset(5) + 1)
    for i in (1, 1 + rle.N_BUCKETS):  # a count of the run-length histogram, one of the value histogram
        damaged = list(fields)
        damaged[i] += 1 << 62
        with pytest.raises(CorruptStream, match="histograms"):
            rle.decode(entropy.Decoder(words), rle.write_varints(damaged), 0, msb.shape, 5)


def test_container_damage_is_caught():
    data = bytearray(pc.encode(dev_photo(0, 32, 40), codec="msr"))
    data[-40] ^= 0x10
    with pytest.raises(CorruptStream):
        pc.decode(bytes(data))


def test_quality_auto_keeps_smallest():
    x = dev_photo(10, 64, 64)
    auto = pc.encode(x, codec="msr:q=auto,T=2")
    q = pc.info(auto)["params"]["q"]
    assert q in msr.Q_AUTO
    sizes = [len(pc.encode(x, codec=f"msr:q={qq},T=2")) for qq in msr.Q_AUTO]
    assert len(auto) == min(sizes)
    assert np.array_equal(pc.decode(auto).pixels, x)


@pytest.mark.parametrize("spec,msg", [("msr:k=3", "k must be"), ("msr:T=0", "T must be"), ("msr:q=101", "q must"),
                                      ("msr:q=best", "q must"), ("msr:zz=1", "no parameter")])
def test_bad_parameters_are_refused(spec, msg):
    with pytest.raises(ValueError, match=msg):
        pc.encode(dev_photo(0, 8, 8), codec=spec)


@pytest.mark.parametrize("arr", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.uint16)])
def test_refuses_what_it_cannot_code(arr):
    with pytest.raises(UnsupportedImage, match="8-bit RGB"):
        pc.encode(arr, codec="msr")


def test_describe_lists_profiles():
    d = pc.get("msr").describe()
    cpu = {p["name"]: p for p in d["profiles"]}["cpu"]
    assert d["learned"] and d["available"] and cpu["weights"]
    assert cpu["params"] == M.count_params(M.PROFILES["cpu"])


def test_shipped_weights_give_back_a_training_network():
    """IntNet.to_net builds a float network that exports to exactly the shipped integers (``--init`` from them)."""
    inet, _ = M.STORE.read(M.STORE.path(M.DEFAULT_PROFILE))
    a, b = inet.to_arrays(), M.IntNet.from_net(inet.to_net()).to_arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_training_goes_on_from_shipped_weights(tmp_path):
    from pixark.codec.training import TrainingError, checkpoint, train

    data = DEV / "gb82"
    if not data.is_dir():
        pytest.skip(f"dev images not found under {DEV}")
    quiet = {"data": str(data), "dev": None, "batch": 2, "crop": 32, "threads": 1, "log": lambda m: None}
    shipped = M.STORE.path(M.DEFAULT_PROFILE)
    s = train(codec="msr", profile=M.DEFAULT_PROFILE, out=str(tmp_path / "run"), steps=1, init=shipped, lr=1e-9,
              **quiet)
    meta, model_state, _ = checkpoint.load(checkpoint.path(tmp_path / "run"))
    assert s["steps"] == 1 and meta["state"]["init"].startswith(f"cpu weights {M.STORE.read(shipped)[1][:12]}")
    trained = M.IntNet.from_net(_net_from(model_state)).to_arrays()  # lr ~0: still the shipped integers
    assert all(np.array_equal(v, trained[k]) for k, v in M.STORE.read(shipped)[0].to_arrays().items())
    with pytest.raises(TrainingError, match="same profile"):
        train(codec="msr", profile="small", out=str(tmp_path / "small"), steps=1, init=shipped, **quiet)


def _net_from(state: dict) -> "M.Net":
    net = M.Net(M.PROFILES[M.DEFAULT_PROFILE])
    net.load_state_dict(state)
    return net


def test_training_hooks_run_a_few_steps(tmp_path):
    from pixark.codec.training import checkpoint, train

    data = DEV / "gb82"
    if not data.is_dir():
        pytest.skip(f"dev images not found under {DEV}")
    s = train(codec="msr", profile="small", data=str(data), dev=None, out=str(tmp_path / "run"), steps=2, batch=2,
              crop=64, threads=1, log=lambda m: None)
    assert s["steps"] == 2 and checkpoint.load(checkpoint.path(tmp_path / "run"))[0]["state"]["step"] == 2


# ------------------------------------------------------------------------------------------------ tiles
def test_large_images_are_coded_in_independent_tiles(net):
    x = dev_photo(3, 100, 130)
    payload = coder.encode(x, net, 90, 5, 2, tile=48)
    f = coder.parse(payload)
    assert f["version"] == coder.TILED_VERSION and f["tile"] == (34, 44) and len(f["tiles"]) == 9
    grid = tiling.grid(100, 130, 34, 44)
    assert grid[-1] == (68, 88, 32, 42)
    for (y, x0, hh, ww), sub in zip(grid, f["tiles"]):  # each tile is the plain payload of its rectangle
        assert sub == coder.encode(np.ascontiguousarray(x[y:y + hh, x0:x0 + ww]), net, 90, 5, 2)
    assert np.array_equal(coder.decode(payload, net), x)
    # up to the tile size nothing changes: the version-2 payload of the whole image
    whole = coder.encode(x, net, 90, 5, 2)
    assert coder.parse(whole)["version"] == coder.PAYLOAD_VERSION == 2
    assert coder.encode(x, net, 90, 5, 2, tile=130) == whole


def test_image_wider_than_a_tile_round_trips_through_api():
    x = np.ascontiguousarray(np.tile(dev_photo(4, 12, 400), (1, 3, 1)))  # 12 x 1200: two tiles of 12 x 600
    assert pc.get("msr").supports(pc.load(np.zeros((20000, 8, 3), np.uint8))) is None  # no size limit
    data = pc.encode(x, codec="msr", verify=True)
    assert pc.info(data)["codec"] == "msr"
    assert np.array_equal(pc.decode(data).pixels, x)


def _tiled(parts: list[bytes], h: int, w: int, th: int, tw: int, k=5, T=2, q=90) -> bytes:
    import struct

    head = coder._HEAD.pack(coder.MAGIC, coder.TILED_VERSION, k, T, q, 0, h, w) + coder._TILES.pack(th, tw)
    return head + b"".join(struct.pack("<I", len(p)) + p for p in parts)


def test_damaged_tiling_is_corrupt(net):
    x = dev_photo(5, 40, 60)
    payload = coder.encode(x, net, 90, 5, 2, tile=32)  # tiles of 20 x 30
    tiles = coder.parse(payload)["tiles"]
    assert payload == _tiled(tiles, 40, 60, 20, 30)
    bad = {
        "truncated": payload[:-7],
        "tiles cut": payload[:coder._HEAD.size + coder._TILES.size + 6],
        "trailing": payload + b"\0",
        "tile shape": _tiled(tiles, 40, 60, 30, 20),
        "tile parameters": _tiled(tiles[:3] + [coder.encode(x[20:, 30:].copy(), net, 80, 5, 2)], 40, 60, 20, 30),
        "nested": _tiled([payload] * 4, 80, 120, 40, 60),
        "zero tile": _tiled([], 40, 60, 0, 30),
        "billions of tiles": _tiled(tiles, 1 << 14, 1 << 14, 1, 1),
    }
    # (tiles of one shape swapped would decode to other pixels: the container's pixel hash refuses those)
    assert [what for what, data in bad.items() if not _refused(data, net)] == []


def _refused(payload: bytes, net) -> bool:
    try:
        coder.decode(payload, net)
    except CorruptStream:
        return True
    return False


def make_golden() -> None:
    """Add goldens of the payload version this build writes, with the golden weights: the pixels and parameters
    of the version-1 goldens, re-encoded, and one image wider than a tile (version 3); older files stay; the
    manifest records each file's payload version."""
    import dataclasses
    import hashlib

    import imagecodecs

    from pixark.codec.container import pack, unpack

    manifest = _golden()
    for name, exp in sorted(manifest.items()):
        if exp.get("payload_version", 1) != 1:
            continue
        exp.setdefault("payload_version", 1)
        header, blobs, payload = unpack((GOLDEN / name).read_bytes())
        net, _ = M.STORE.read(str(GOLDEN_WEIGHTS), header.params["profile"])
        p = header.params
        data = pack(header, blobs, coder.encode(coder.decode(payload, net), net, p["q"], p["k"], p["T"]))
        new = f"msr-v{coder.PAYLOAD_VERSION}-" + name.removeprefix("msr-")
        (GOLDEN / new).write_bytes(data)
        manifest[new] = {**exp, "bytes": len(data), "payload_version": coder.PAYLOAD_VERSION,
                         "libwebp": imagecodecs.webp_version(), "stream_sha256": hashlib.sha256(data).hexdigest()}
        if name == "msr-rgb-q90-k5-t4.pxk":  # tiled (version 3): these pixels repeated to wider than a tile
            x = coder.decode(payload, net)
            x = np.ascontiguousarray(np.tile(x, (1, coder.TILE // x.shape[1] + 1, 1)))
            h, w = x.shape[:2]
            data = pack(dataclasses.replace(header, height=h, width=w, pixel_sha256=pc.pixel_sha256(x)), blobs,
                        coder.encode(x, net, p["q"], p["k"], p["T"]))
            wide = f"msr-v{coder.TILED_VERSION}-wide-q90-k5-t4.pxk"
            (GOLDEN / wide).write_bytes(data)
            manifest[wide] = {**manifest[new], "bytes": len(data), "payload_version": coder.TILED_VERSION,
                              "pixel_sha256": pc.pixel_sha256(x), "stream_sha256": hashlib.sha256(data).hexdigest()}
    GOLDEN_MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and "--make-golden" in sys.argv:
    make_golden()
