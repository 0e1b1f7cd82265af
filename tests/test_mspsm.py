"""MSPSM: integer-exact inference (fast path == pure-integer reference on real photos), determinism across thread
counts, tile batches and processes, round trips of odd/tiny/tiled images, golden bitstreams, training steps of
every profile. Most tests use a small seeded network exported to integers (independent of the shipped weights,
so retraining never breaks them); the codec-level tests use the shipped weights when present."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixark.codec import tiling
from pixark.codec.mspsm import model as M, coder
from pixark.codec.nn.quant import IN_STEP

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_WEIGHTS = GOLDEN / "mspsm-golden-weights.npz"

# One torch thread except where a test compares thread counts: on a shared 2-core machine, two OpenMP threads
# spin-waiting for each other burned 100x the CPU time of these tiny tensors.
torch.set_num_threads(1)


def _photo(h=64, w=64, k=0) -> np.ndarray:
    """A crop of a real dev photo; skimage's astronaut as the fallback when ../shared/data is absent."""
    from pixark.codec.training import list_images, load_rgb

    paths = list_images(str(SHARED / "dev" / "gb82")) + list_images(str(SHARED / "dev" / "cid22"))
    if paths:
        im = load_rgb(paths[(7 * k) % len(paths)])
    else:
        skimage_data = pytest.importorskip("skimage.data", reason="no ../shared/data and no scikit-image")
        im = skimage_data.astronaut()
    y, x = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
    return np.ascontiguousarray(im[y:y + h, x:x + w])


def _seeded_net(profile="cpu-small", seed=1) -> M.IntNet:
    torch.manual_seed(seed)
    net = M.Net(M.PROFILES[profile])
    with torch.no_grad():  # make the outputs (offsets, scales, couplings) vary so every path is exercised
        net.head_p.weight.mul_(20)
    return M.IntNet.from_net(net)


@pytest.fixture(scope="module")
def inet():
    return _seeded_net()


def test_fast_path_equals_integer_reference_on_photos(inet):
    stats = {}
    for k, (h, w) in enumerate([(48, 40), (37, 29)]):
        px = _photo(h, w, k)
        payload = coder.encode(inet, px, check_reference=True, stats=stats)
        assert np.array_equal(coder.decode(inet, payload), px)
    assert stats["reference_checks"] > 0


def test_float32_exactness_bound_and_trained_weights_reference():
    """Every layer of the shipped default model is proven to stay below 2**24 (float32 exact) or runs in float64;
    and the fast path equals the numpy int64 reference on a photo with the shipped weights."""
    path = M.STORE.path(M.DEFAULT_PROFILE)
    if not os.path.exists(path):
        pytest.skip(f"no shipped weights at {path}")
    net, _ = M.STORE.read(path)
    for name, layer in net.layers.items():
        bound = (np.abs(layer.w.astype(np.int64)) * layer.in_max[None, :, None, None]).sum(axis=(1, 2, 3)).max()
        assert layer.f32_ok == (bound + np.abs(layer.b).max() < 2 ** 24), name
    px = _photo(40, 48, 3)
    payload = coder.encode(net, px, check_reference=True)
    assert np.array_equal(coder.decode(net, payload), px)


def test_training_estimate_matches_real_size(inet):
    """The training loss is the table code length: real payload within 2% of it (plus a fixed header)."""
    px = _photo(64, 64, 1)
    stats = {}
    payload = coder.encode(inet, px, stats=stats)
    assert abs(8 * (len(payload) - 29) - stats["bits"]) < 0.02 * stats["bits"] + 64


def test_bitstreams_identical_across_threads_and_tile_batches(inet):
    px = _photo(48, 72, 2)  # six 24x24 tiles: batches of 1, 5 and 2 really differ
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = coder.encode(inet, px, tile=24, tile_batch=1, batch_pixels=0)
        torch.set_num_threads(2)
        b = coder.encode(inet, px, tile=24, tile_batch=5, batch_pixels=0)
        c = coder.encode(inet, px, tile=24, tile_batch=2)  # all six in one batch (BATCH_PIXELS)
    finally:
        torch.set_num_threads(old)
    assert a == b == c
    assert np.array_equal(coder.decode(inet, a, tile_batch=3), px)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 3), (5, 5), (17, 33)])
def test_odd_and_tiny_images_round_trip(inet, shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    px = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    payload = coder.encode(inet, px)
    assert np.array_equal(coder.decode(inet, payload), px)


def test_tiled_image_round_trip(inet):
    px = _photo(75, 61, 4)
    payload = coder.encode(inet, px, tile=24)
    assert np.array_equal(coder.decode(inet, payload), px)


def test_corrupt_payload_raises(inet):
    from pixark.codec.errors import CorruptStream, UnsupportedStream

    px = _photo(16, 16, 5)
    payload = coder.encode(inet, px)
    with pytest.raises(CorruptStream):
        coder.decode(inet, payload[:-4])
    with pytest.raises(CorruptStream):
        coder.decode(inet, b"XXXX" + payload[4:])
    with pytest.raises(UnsupportedStream):
        coder.decode(inet, payload[:4] + b"\x09" + payload[5:])


@pytest.mark.parametrize("field,value", [("height", 1 << 31), ("width", 1 << 31), ("height", 1 << 20), ("tile", 1),
                                         ("tile", 0), ("tiles", 1 << 30)])
def test_damaged_payload_head_fails_before_sizing_anything(inet, field, value):
    """A damaged height, width, tile size or tile count raises at once: the decoder builds nothing from them
    before checking them against each other and the payload's length (a height of 2**31 once made it build a
    list of 2**28 tiles)."""
    import struct
    from pixark.codec.errors import CorruptStream

    payload = bytearray(coder.encode(inet, _photo(40, 48, 5), tile=16))
    at = {"height": 5, "width": 9, "tile": 13, "tiles": 17}[field]
    payload[at:at + 4] = struct.pack("<I", value)
    with pytest.raises(CorruptStream):
        coder.decode(inet, bytes(payload))


def test_encode_and_decode_in_another_process(tmp_path, inet):
    wpath = tmp_path / "w.npz"
    M.STORE.save(inet, str(wpath))
    net, _ = M.STORE.read(str(wpath))
    px = _photo(40, 56, 6)
    payload = coder.encode(net, px, tile=32, tile_batch=2)
    (tmp_path / "p.bin").write_bytes(payload)
    script = (
        "import sys, hashlib, torch\n"
        "torch.set_num_threads(2)\n"
        "from pixark.codec.mspsm import coder, model as M\n"
        f"net, _ = M.STORE.read({str(wpath)!r})\n"
        f"px = coder.decode(net, open({str(tmp_path / 'p.bin')!r}, 'rb').read(), tile_batch=1)\n"
        "print(hashlib.sha256(px.tobytes()).hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(px.tobytes()).hexdigest()


def test_golden_bitstreams_keep_decoding():
    """Golden streams made with a fixed small weights file: a change to the tables, the pipeline, the integer
    arithmetic or the payload layout makes them decode differently (or not at all) and fails here."""
    if not GOLDEN_WEIGHTS.exists():
        pytest.skip("golden files not generated (python tests/test_mspsm.py --make-golden)")
    net, _ = M.STORE.read(str(GOLDEN_WEIGHTS))
    files = sorted(GOLDEN.glob("mspsm-golden-v*.bin"))
    versions = {f.read_bytes()[4] for f in files}
    assert versions == set(coder.PAYLOAD_VERSIONS)  # every payload version this build reads has goldens
    for f in files:
        want = f.with_suffix(".sha256").read_text().split()
        px = coder.decode(net, f.read_bytes())
        assert list(px.shape) == [int(want[1]), int(want[2]), 3], f.name
        assert hashlib.sha256(px.tobytes()).hexdigest() == want[0], f.name
        # every version this build reads, it also writes, to the same bytes
        assert coder.encode(net, px, tile=int(want[3]), version=f.read_bytes()[4]) == f.read_bytes(), f.name


@pytest.mark.parametrize("profile", list(M.PROFILES))
def test_a_few_training_steps_of_every_profile(profile):
    p = M.PROFILES[profile]
    torch.manual_seed(0)
    net = M.Net(p)
    loss_fn = M.Trainer(p, net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.from_numpy(_photo(24, 24, 7)).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1)
    losses = []
    for _ in range(3 if p.channels < 128 else 2):
        loss = loss_fn(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and 0 < losses[0] < 17
    inet = M.IntNet.from_net(net)  # every profile exports and codes (K > 1: per-symbol integer tables)
    px = _photo(8, 12, 8)
    stats = {}
    payload = coder.encode(inet, px, check_reference=(p.mixtures > 1), stats=stats)
    assert np.array_equal(coder.decode(inet, payload), px)
    if p.mixtures > 1:  # the integer mixture tables code what the training loss says (within 3 %)
        with torch.no_grad():
            est = float(loss_fn(torch.from_numpy(px).permute(2, 0, 1)[None].float())) * px.size
        assert abs(stats["bits"] - est) < 0.03 * est + 64


@pytest.mark.parametrize("profile", ["cpu-fb", "cpu-fb2"])
def test_error_feedback_profile_codes_what_training_estimates(profile):
    """The feedback profiles' extra inputs (this scale's coding errors so far; cpu-fb2 also the coarser scale's,
    carried) are built the same way by the trainer and the coder: payload version 1 (no per-image adaptation)
    costs what the training loss says; the fast path equals the integer reference and every version
    round-trips."""
    p = M.resolve(profile)
    torch.manual_seed(4)
    net = M.Net(p)
    with torch.no_grad():
        net.head_p.weight.mul_(20)
    inet = M.IntNet.from_net(net)
    px = _photo(40, 56, 5)
    stats = {}
    payloads = [coder.encode(inet, px, version=v, check_reference=(v == 1), stats=stats if v == 1 else None)
                for v in coder.PAYLOAD_VERSIONS]
    assert stats["reference_checks"] > 0
    for payload in payloads:
        assert np.array_equal(coder.decode(inet, payload), px)
    with torch.no_grad():
        est = float(M.Trainer(p, net)(torch.from_numpy(px).permute(2, 0, 1)[None].float())) * px.size
    assert abs(stats["bits"] - est) < 0.01 * est
    # the feedback inputs matter: the same weights without them code differently
    layers = {**inet.layers, "conv_in": _drop_inputs(inet.layers["conv_in"], 12)}
    no_fb = M.IntNet(M.resolve("cpu-fb:feedback=0"), layers)
    assert coder.encode(no_fb, px, version=1) != payloads[0]
    if p.carry:  # and so do the carried errors
        assert coder.encode(M.IntNet(M.resolve("cpu-fb"), inet.layers), px, version=1) != payloads[0]


def test_carried_errors_start_each_scale():
    """With carry, a scale's error map starts with the coarser scale's map at the known pixels (phase (1,1)),
    cropped to this scale's size; without it the map starts at zero."""
    coarser = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6) - 50  # padded 3 x 5 -> 4 x 6
    X = torch.zeros(2, 3, 6, 10)  # this scale: 6 x 10, its known pixels are the coarser scale's 3 x 5
    err = M.start_errors(M.resolve("cpu-fb2"), X, coarser)
    assert torch.equal(err[:, :, 1::2, 1::2], coarser[:, :, :3, :5])
    err[:, :, 1::2, 1::2] = 0
    assert not err.any()
    assert not M.start_errors(M.resolve("cpu-fb"), X, coarser).any()
    assert M.start_errors(M.resolve("cpu-small"), X, coarser) is None
    with pytest.raises(ValueError, match="carry needs feedback"):
        M.resolve("cpu-small:carry=1")


def _drop_inputs(layer, n):
    from dataclasses import replace as dc_replace

    return dc_replace(layer, w=layer.w[:, :-n], in_max=layer.in_max[:-n])


@pytest.mark.parametrize("source,target", [("cpu-small", "cpu-fb"), ("cpu-small", "cpu-small:blocks=2"),
                                           ("cpu-fb2", "cpu-fb2:channels=48"),
                                           ("cpu-fb2", "cpu-fb2:channels=48,blocks=2")])
def test_warm_start_begins_where_the_source_was(source, target):
    """A warm-started profile (new inputs, wider layers, an extra residual block) first computes what its source
    did: the same up to float summation order when it only adds inputs or channels (they start with zero weights),
    almost with a new block."""
    torch.manual_seed(2)
    src = M.Net(M.PROFILES[source])
    dst = M.Net(M.resolve(target))
    fresh = dst.warm_start(src.state_dict())
    new_block = "blocks=2" in target
    assert fresh and all(("blocks.1" in n and new_block) or "(widened)" in n for n in fresh)
    x = torch.from_numpy(_photo(32, 32, 6)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        a = float(M.Trainer(src.p, src)(x))
        b = float(M.Trainer(dst.p, dst)(x))
    assert abs(a - b) < (0.01 if new_block else 1e-5) * a
    if "channels" in target:  # the new channels are live: training can use them
        h = dst.conv_in(torch.rand(1, M.n_inputs(dst.p), 8, 8) * 64 * IN_STEP)
        assert h[:, src.p.channels:].abs().sum() > 0


def test_train_warm_start_resume_and_export(tmp_path):
    """pixark train: a few steps of cpu-small; cpu-fb warm-started from that checkpoint (--init) records where it
    came from, resumes from its own checkpoint, and its export names the warm start on the model card."""
    from PIL import Image
    from pixark.codec.msr import model as RM
    from pixark.codec.training import TrainingError, checkpoint, export_checkpoint, train

    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):
        Image.fromarray(_photo(48, 48, k)).save(data / f"img {k}.png")
    quiet = {"data": str(data), "dev": None, "batch": 2, "crop": 32, "threads": 1, "log": lambda m: None}
    train(codec="mspsm", profile="cpu-small", out=str(tmp_path / "small"), steps=2, **quiet)
    ck = str(tmp_path / "small")  # a run directory names its checkpoint
    s = train(codec="mspsm", profile="cpu-fb", out=str(tmp_path / "fb"), steps=2, init=ck, lr=3e-4, **quiet)
    assert s["steps"] == 2
    state = checkpoint.load(checkpoint.path(tmp_path / "fb"))[0]["state"]
    assert state["init"].startswith("cpu-small step 2")
    s = train(codec="mspsm", profile="cpu-fb", out=str(tmp_path / "fb"), steps=3, init=ck, resume=True, **quiet)
    assert s["steps"] == 3  # resumed (its own checkpoint wins over --init)
    assert checkpoint.load(checkpoint.path(tmp_path / "fb"))[0]["lr"] == 3e-4  # the run's learning rate, not the profile default
    r = export_checkpoint("mspsm", "cpu-fb", str(tmp_path / "fb"), str(tmp_path / "w.npz"), None)
    assert r["steps"] == 3 and "warm start from cpu-small step 2" in (tmp_path / "w.md").read_text()
    net, _ = M.STORE.read(str(tmp_path / "w.npz"), "cpu-fb")
    assert net.p.feedback
    with pytest.raises(TrainingError, match="no checkpoint"):  # nothing to resume and nothing to start from
        train(codec="mspsm", profile="cpu-fb", out=str(tmp_path / "none"), steps=1, resume=True, **quiet)
    with pytest.raises(TrainingError, match="cannot warm-start"):
        train(codec="msr", profile="small", out=str(tmp_path / "msr"), steps=1, init=ck, **quiet)
    # --init from a weights file: training goes on (here widened) from the exported integers
    s = train(codec="mspsm", profile="cpu-fb:channels=40", out=str(tmp_path / "fbw"), steps=1,
              init=str(tmp_path / "w.npz"), **quiet)
    state = checkpoint.load(checkpoint.path(tmp_path / "fbw"))[0]["state"]
    model_id = M.STORE.read(str(tmp_path / "w.npz"))[1]
    assert s["steps"] == 1 and state["init"].startswith(f"cpu-fb weights {model_id[:12]}")
    with pytest.raises(TrainingError, match="is for mspsm/cpu-fb:channels=40, not cpu-fb"):
        export_checkpoint("mspsm", "cpu-fb", str(tmp_path / "fbw"), str(tmp_path / "w2.npz"), None)
    # a training variant that builds the same model as a named profile exports under that name
    train(codec="mspsm", profile="cpu-small:blocks=1", out=str(tmp_path / "same"), steps=1, **quiet)
    export_checkpoint("mspsm", "cpu-small", str(tmp_path / "same"), str(tmp_path / "w3.npz"), None)
    assert M.STORE.read(str(tmp_path / "w3.npz"), "cpu-small")[0].p.name == "cpu-small"
    assert "trained as `cpu-small:blocks=1`" in (tmp_path / "w3.md").read_text()
    msr_weights = RM.STORE.path("cpu")
    with pytest.raises(TrainingError, match="not an mspsm weights file"):
        train(codec="mspsm", profile="cpu-fb", out=str(tmp_path / "x"), steps=1, init=str(msr_weights), **quiet)
    with pytest.raises(TrainingError, match="not an msr weights file"):
        train(codec="msr", profile="small", out=str(tmp_path / "msr"), steps=1, init=str(tmp_path / "w.npz"), **quiet)


@pytest.mark.parametrize("profile", [p for p in sorted(M.PROFILES) if os.path.exists(M.STORE.path(p))])
def test_shipped_weights_give_back_a_training_network(profile):
    """IntNet.to_net (pixark train --init <weights.npz>, for when a checkpoint is gone) builds a float network that
    exports to exactly the shipped integers."""
    inet, _ = M.STORE.read(M.STORE.path(profile), profile)
    a, b = inet.to_arrays(), M.IntNet.from_net(inet.to_net()).to_arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_network_from_exported_weights_has_the_trained_loss():
    """A trained float network, exported and turned back into a float network (IntNet.to_net), has the same
    training loss: training goes on from where it stopped."""
    torch.manual_seed(3)
    net = M.Net(M.resolve("cpu-fb2:channels=24"))
    with torch.no_grad():  # outputs that vary, as in a trained network
        net.head_p.weight.mul_(20)
    back = M.IntNet.from_net(net).to_net()
    x = torch.from_numpy(_photo(48, 48, 5)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        a, b = float(M.Trainer(net.p, net)(x)), float(M.Trainer(back.p, back)(x))
        fresh = float(M.Trainer(net.p, M.Net(net.p))(x))
    assert abs(a - b) < 1e-3 * a and abs(a - fresh) > 0.05 * a


def test_bf16_trunk_training_tracks_the_float32_loss(tmp_path):
    """--bf16 runs the trunk's convolutions in bfloat16: the loss of a photo batch stays within 0.5 % of the
    float32 loss, the step trains, dev estimates stay float32, and a resumed run keeps the setting."""
    from PIL import Image
    from pixark.codec.training import checkpoint, train

    torch.manual_seed(3)
    net = M.Net(M.PROFILES["cpu-fb2"])
    tr = M.Trainer(net.p, net)
    x = torch.from_numpy(np.stack([_photo(64, 64, k) for k in range(2)]).transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        f32 = float(tr(x))
        net.bf16 = True
        b16 = float(tr(x))
    assert abs(b16 - f32) < 0.005 * f32
    loss = tr(x)
    loss.backward()
    assert net.conv_in.weight.grad.abs().sum() > 0 and net.head_p.weight.grad.abs().sum() > 0
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(48, 48, 1)).save(data / "a.png")
    quiet = {"data": str(data), "dev": None, "batch": 2, "crop": 32, "threads": 1, "log": lambda m: None}
    train(codec="mspsm", profile="cpu-small", out=str(tmp_path / "r"), steps=1, bf16=True, **quiet)
    train(codec="mspsm", profile="cpu-small", out=str(tmp_path / "r"), steps=2, resume=True, **quiet)
    meta = checkpoint.load(checkpoint.path(tmp_path / "r"))[0]
    assert meta["bf16"] is True and meta["state"]["step"] == 2


def _half_grey(px: np.ndarray) -> np.ndarray:
    """The photo with its left half turned grey (R = G = B) and one column of its right half a flat colour."""
    out = px.copy()
    w = px.shape[1]
    out[:, :w // 2] = px[:, :w // 2].mean(axis=2, keepdims=True).astype(np.uint8)
    out[:, -3] = (90, 140, 30)
    return out


def test_stage_inputs_match_the_trainer_and_a_direct_reading_of_the_copy_rule():
    """The coder's one-pass stage inputs (``coder.stage_inputs``): the network input and base16 as the trainer's
    torch functions compute them; copy flag where the known pixels of base16's neighbour set (4-neighbours, else
    diagonals) all have one difference R - 0, G - R or B - G, and that difference as the centre's offset."""
    rng = np.random.default_rng(3)
    p = M.PROFILES["cpu-fb2"]
    for trial in range(20):
        H, W = 2 * rng.integers(1, 6, size=2)
        X = rng.integers(0, 4, size=(1, 3, H, W)).astype(np.float32) * 60  # few values: equal differences happen
        known = (rng.random((1, 1, H, W)) < rng.random()).astype(np.float32)
        known[:, :, 1::2, 1::2] = 1  # phase (1,1): the coarser scale, always known
        Xt, Kt = torch.from_numpy(X), torch.from_numpy(known)
        z = torch.from_numpy(rng.integers(0, 128, size=(1, p.context, H // 2, W // 2)).astype(np.float32))
        err = torch.from_numpy(rng.integers(-127, 128, size=(1, 3, H, W)).astype(np.float32))
        inp, b16, flag, diff = coder.stage_inputs(p, Xt, Kt, z, err, 3, [0, 1, 2])
        ref16 = M.base16(Xt, Kt)
        assert torch.equal(inp, M.net_input(p, Xt, Kt, ref16, z, 3, err))
        unknown = M.unknown_phases(Kt.expand_as(Xt)) == 0
        assert torch.equal(b16[unknown], M.unknown_phases(ref16)[unknown])
        for ph, (py, px) in enumerate(M.PHASES[:3]):
            for y in range(py, H, 2):
                for x in range(px, W, 2):
                    for ci in range(3):
                        sets = [[(y + dy, x + dx) for dy, dx in offs if 0 <= y + dy < H and 0 <= x + dx < W
                                 and known[0, 0, y + dy, x + dx]] for offs in
                                (((-1, 0), (1, 0), (0, -1), (0, 1)), ((-1, -1), (-1, 1), (1, -1), (1, 1)))]
                        nb = sets[0] or sets[1]
                        ds = {float(X[0, ci, a, b] - (X[0, ci - 1, a, b] if ci else 0)) for a, b in nb}
                        got = bool(flag[0, ph, ci, y // 2, x // 2])
                        assert got == (len(ds) == 1), (trial, ph, y, x, ci)
                        if got:
                            assert float(diff[0, ph, ci, y // 2, x // 2]) == ds.pop()
        one = int(rng.integers(0, 3))  # a group's phases only: the same values there, nothing elsewhere
        _, _, f1, d1 = coder.stage_inputs(p, Xt, Kt, z, err, 3, [one])
        assert torch.equal(f1[:, one], flag[:, one]) and torch.equal(d1[:, one], diff[:, one])
        assert not f1[:, [p for p in range(3) if p != one]].any()


def test_copy_model_codes_grey_pixels_cheaply():
    """Payload version 3 against version 2 with the shipped weights: far fewer bits where an image is grey, the
    same bits within 1 % on a colour photo, every stream round-trips."""
    if not os.path.exists(M.STORE.path(M.DEFAULT_PROFILE)):
        pytest.skip("no shipped weights for the default profile")
    net, _ = M.STORE.read(M.STORE.path(M.DEFAULT_PROFILE))
    colour = _photo(96, 96, 4)
    grey = _half_grey(colour)
    sizes = {}
    for name, px in (("colour", colour), ("grey", grey)):
        for v in (2, 3):
            payload = coder.encode(net, px, version=v)
            assert payload[4] == v and np.array_equal(coder.decode(net, payload), px)
            sizes[name, v] = len(payload)
    assert sizes["grey", 3] < 0.95 * sizes["grey", 2]  # measured: -9 % on this 96x96 crop
    assert abs(sizes["colour", 3] - sizes["colour", 2]) <= 0.01 * sizes["colour", 2]
    with pytest.raises(ValueError, match="version 5"):
        coder.encode(net, colour, version=5)


def test_mean_corrections_cost_what_the_recentred_tables_cost():
    """Payload version 4's search for mean corrections (compiled, per cell of scale indices) against coding each
    candidate's recentred means directly."""
    rows = M.tables()["cost"].rows
    rng = np.random.default_rng(3)
    n = 500
    s, mu0 = rng.integers(0, 64, n), rng.integers(0, 4081, n)  # means in range, split as the coder splits them
    cn = (mu0 + 8) // 16
    f8 = mu0 - 16 * cn + 8
    x, e = rng.integers(0, 256, n), rng.integers(-2000, 2000, n)
    key, weight = rng.integers(0, 3, n), rng.integers(1, 4, n)  # steps laid end to end, sampled symbols weighted
    out = np.zeros((3, 64 // coder.CORR_BUCKET, len(coder.CORR)), np.int64)
    coder._correction_costs(rows, key, weight, s, 16 * cn + f8 - 8, x, e, coder.CORR_BUCKET, coder.CORR, out)
    for k, a in enumerate(coder.CORR):
        c, f = coder._recentre(cn, f8, e, int(a))
        mu = np.clip(16 * cn + f8 - 8 + np.floor((a * e + 32) / 64).astype(np.int64), 0, 4080)
        assert np.array_equal(16 * c + f - 8, mu) and f.min() >= 0 and f.max() <= 15
        got = rows[s, f * 256 + ((x - c) & 255)] * weight
        for kk in range(3):
            want = np.bincount(s[key == kk] // coder.CORR_BUCKET, got[key == kk], minlength=out.shape[1])
            assert np.array_equal(out[kk, :, k], want)
    per = coder.CORR[rng.integers(0, len(coder.CORR), n)]  # one correction per symbol, as the coder applies
    c, f = coder._recentre(cn, f8, e, per)
    assert np.array_equal(16 * c + f - 8, np.clip(mu0 + (per * e + 32) // 64, 0, 4080))
    # steps laid end to end (the search's form) as each step alone: a step whose corrections are all zero keeps
    # its means even out of 0..4080, where moving them would clip
    cn[:170] += 300
    lens = [50, 120, 1, 200, 129]
    starts = np.cumsum([0] + lens[:-1])
    per[50:170] = 0
    c, f = coder._recentre_steps(cn, f8, e, per, starts, lens)
    for a, b in zip(starts, starts + lens):
        want = coder._recentre(cn[a:b], f8[a:b], e[a:b], per[a:b])
        assert np.array_equal(c[a:b], want[0]) and np.array_equal(f[a:b], want[1])


def test_transmitted_shifts_code_a_photo_shorter_and_a_tiny_image_as_before():
    """Payload version 4: each tile is coded with the causal correction of version 3 or with scale shifts and
    mean corrections chosen on the whole tile, whichever is shorter (the tile's first symbol says which). On a
    photo those win; on a tiny image they cost more than they save, so the tile stays causal at one bit more than
    version 3."""
    from pixark.codec.entropy import Decoder

    if not os.path.exists(M.STORE.path(M.DEFAULT_PROFILE)):
        pytest.skip("no shipped weights for the default profile")
    net, _ = M.STORE.read(M.STORE.path(M.DEFAULT_PROFILE))
    keys = net.p.scales * net.p.groups
    for px, transmitted in ((_photo(384, 384, 2), True), (_photo(12, 10, 3), False)):
        v3, v4 = coder.encode(net, px, version=3), coder.encode(net, px, version=4)
        assert v4[4] == 4 and np.array_equal(coder.decode(net, v4), px)
        tile = coder._TileDecoder(Decoder(v4[25:]), 4, keys)  # one tile: its stream at 21 + 4
        assert (tile.shifts is not None) == transmitted
        if transmitted:
            assert len(v4) < len(v3)
        else:
            assert len(v4) <= len(v3) + 4  # the mode symbol; streams grow in 32-bit words


SHIPPED_GOLDEN = "mspsm-{}-photo.pxk"  # per profile with shipped weights; later weights versions add -<id12>


def _shipped_goldens(profile: str) -> list:
    import re

    pattern = re.escape(SHIPPED_GOLDEN.format(profile)).replace("photo", "([0-9a-f]{12}-)?photo")
    return sorted(p for p in GOLDEN.iterdir() if re.fullmatch(pattern, p.name))


@pytest.mark.parametrize("profile", sorted(M.PROFILES))
def test_shipped_weights_keep_their_streams(profile):
    """Every stream made with a version of a profile's shipped weights (current or retired) decodes
    (tests/test_golden.py) and encodes again with that version to the same payload, and the current version has
    one: a change to the network input, feedback, coder or weights that alters those streams fails here."""
    import pixark.codec as pc
    from pixark.codec import container, modelstore

    paths = _shipped_goldens(profile)
    if profile not in M.STORE.shipped():
        assert not paths, f"{paths[0].name} exists but {profile} ships no weights"
        return
    ids = set()
    for path in paths:
        header, _, payload = container.unpack(path.read_bytes())
        px = pc.decode(path.read_bytes()).pixels
        net, model_id = M.STORE.load(profile, header.model_id)
        assert coder.encode(net, px, tile=header.params["tile"], version=payload[4]) == payload, path.name
        ids.add(model_id)
    assert modelstore.model_id(M.STORE.path(profile)) in ids, \
        f"no golden stream for the current {profile} weights (python tests/test_mspsm.py --make-golden)"


def test_codec_registry_and_missing_weights():
    from pixark.codec import registry
    from pixark.codec.errors import UnsupportedStream
    import pixark.codec.mspsm as mspsm

    c = registry.get("mspsm")
    d = c.describe()
    assert set(d["profiles"]) == set(M.PROFILES)
    missing = [n for n in M.PROFILES if not d["profiles"][n]["weights"]]
    if missing:
        with pytest.raises(UnsupportedStream, match="has no weights in this build"):
            M.STORE.load(missing[0])
    from pixark.codec.image import DecodedImage

    assert c.supports(DecodedImage.from_array(np.zeros((4, 4), np.uint8)))  # grayscale: refused with a reason


def test_codec_round_trip_with_shipped_weights():
    import pixark.codec as pc

    if not os.path.exists(M.STORE.path(M.DEFAULT_PROFILE)):
        pytest.skip("no shipped weights for the default profile")
    px = _photo(48, 64, 9)
    data = pc.encode(px, codec="mspsm")
    assert np.array_equal(pc.decode(data).pixels, px)
    # tile is the largest side: 70x50 with tile=32 splits into 3 x 2 tiles of side 25, not 32 + 32 + 6 / 32 + 18
    px = _photo(70, 50, 3)
    data = pc.encode(px, codec="mspsm:tile=32")
    assert pc.info(data)["params"]["tile"] == 25 == coder.balanced_tile(70, 50, 32)
    assert np.array_equal(pc.decode(data).pixels, px)


@pytest.mark.parametrize("h, w, most, want", [(576, 576, 512, 288), (512, 512, 512, 512), (100, 700, 512, 350),
                                              (1080, 1920, 512, 480), (1, 1, 512, 1), (513, 17, 512, 257)])
def test_balanced_tile_never_exceeds_the_maximum(h, w, most, want):
    t = coder.balanced_tile(h, w, most)
    assert t == want and t <= most
    assert len(tiling.grid(h, w, t, t)) == len(tiling.grid(h, w, most, most))  # as many tiles, more even


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (torch.cuda.is_available() "
                    "is False): the GPU path is tested only where CUDA exists")
def test_gpu_streams_equal_cpu_streams(inet):  # pragma: no cover - runs on GPU machines
    """Through the coder's ``device`` argument: a CPU stream decodes bit-exact on CUDA, and CUDA encoding gives the
    same bytes with the fast path equal to the int64 reference at every stage, even in a process that asked for
    TF32 and cuDNN autotuning (the int path has no float arithmetic for them to change). K = 1, and K > 1."""
    from precision import reduced_precision

    with reduced_precision():
        px = _photo(40, 40, 10)
        payload = coder.encode(inet, px, tile=24)
        assert np.array_equal(coder.decode(inet, payload, device="cuda"), px)
        assert coder.encode(inet, px, tile=24, device="cuda", check_reference=True) == payload
        mix = _seeded_net("normal", seed=2)
        small = _photo(8, 12, 8)
        payload = coder.encode(mix, small)
        assert np.array_equal(coder.decode(mix, payload, device="cuda"), small)
        assert coder.encode(mix, small, device="cuda", check_reference=True) == payload


def make_golden() -> None:
    """Write goldens for the payload version this build writes (older versions' files and the weights stay)."""
    GOLDEN.mkdir(exist_ok=True)
    if not GOLDEN_WEIGHTS.exists():
        M.STORE.save(_seeded_net("cpu-small", seed=5), str(GOLDEN_WEIGHTS))
    net, _ = M.STORE.read(str(GOLDEN_WEIGHTS))
    for name, px, tile in [("photo", _photo(40, 48, 11), 512), ("tiled", _photo(35, 30, 12), 16),
                           ("tiny", np.arange(9, dtype=np.uint8).reshape(1, 3, 3) * 28, 512),
                           ("grey", _half_grey(_photo(40, 40, 13)), 512)]:
        payload = coder.encode(net, px, tile=tile)
        stem = f"mspsm-golden-v{payload[4]}-{name}"
        (GOLDEN / f"{stem}.bin").write_bytes(payload)
        (GOLDEN / f"{stem}.sha256").write_text(
            f"{hashlib.sha256(px.tobytes()).hexdigest()} {px.shape[0]} {px.shape[1]} {tile}\n")
    # shipped profiles: a container each, added once (never regenerated) and listed for tests/test_golden.py
    import json

    import pixark.codec as pc
    from pixark.codec.mspsm import shipped

    manifest_path = GOLDEN / "golden.json"
    manifest = json.loads(manifest_path.read_text())
    px = _half_grey(_photo(40, 56, 14))
    for profile in shipped():
        have = [pc.info(p.read_bytes())["model_id"] for p in _shipped_goldens(profile)]
        data = pc.encode(px, "mspsm", profile=profile)
        mid = pc.info(data)["model_id"]
        if mid not in have:  # the current weights' stream, beside those of earlier versions
            name = SHIPPED_GOLDEN.format(f"{profile}-{mid[:12]}" if have else profile)
            (GOLDEN / name).write_bytes(data)
            manifest[name] = {"codec": "mspsm", "pixel_sha256": pc.pixel_sha256(px),
                              "stream_sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and "--make-golden" in sys.argv:
    make_golden()

