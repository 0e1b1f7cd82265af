"""pixark.codec.training: images by pixels with honest augmentation, the batch loader, plain-data checkpoints
that resume on any device and export the same integers, hostile checkpoints refused, the thin CLI."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixark.codec.mspsm import model as M
from pixark.codec.training import TrainingError, checkpoint, export_checkpoint, list_images, load_rgb, train
from pixark.codec.training.data import CropSampler, Loader, dihedral

torch.set_num_threads(1)


def _noise(h, w, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(base.repeat(8, 0).repeat(8, 1)[:h, :w])


@pytest.fixture
def data(tmp_path):
    """One large lossless JPEG XL photo stand-in and four small PNGs, in nested folders with spaces."""
    import imagecodecs

    root = tmp_path / "train data"
    (root / "big set").mkdir(parents=True)
    (root / "small").mkdir()
    big = _noise(96, 160, 0)
    (root / "big set" / "a photo.jxl").write_bytes(imagecodecs.jpegxl_encode(big, lossless=True))
    for k in range(4):
        Image.fromarray(_noise(40, 40, k + 1)).save(root / "small" / f"img {k}.PNG")
    (root / "small" / "notes.txt").write_text("not an image")
    return root, big


def test_images_listed_recursively_and_jxl_decoded_losslessly(data):
    root, big = data
    paths = list_images(str(root))
    assert [os.path.basename(p) for p in paths] == ["a photo.jxl"] + [f"img {k}.PNG" for k in range(4)]
    assert np.array_equal(load_rgb(paths[0]), big)
    grey = root / "grey.png"
    Image.fromarray(big[:, :, 0]).save(grey)
    assert np.array_equal(load_rgb(str(grey)), np.repeat(big[:, :, :1], 3, axis=2))


def test_crops_are_drawn_in_proportion_to_pixels(data):
    """The big image holds 96*160 / (96*160 + 4*40*40) = 70.6 % of the pixels: it gives about that share of the
    crops, not the 1/5 a draw by file would give."""
    root, big = data
    s = CropSampler(list_images(str(root)), 32)
    assert s.pixels == 96 * 160 + 4 * 1600
    crops = s.batch(2000, np.random.default_rng(0))
    assert crops.shape == (2000, 3, 32, 32) and crops.dtype == np.uint8
    # a crop comes from the big image when one of its symmetries is a window of it
    wins = {big[y:y + 32, x:x + 32].tobytes() for y in range(96 - 31) for x in range(160 - 31)}
    from_big = [any(dihedral(c.transpose(1, 2, 0), k).tobytes() in wins for k in range(8)) for c in crops[:400]]
    share = sum(from_big) / 400
    assert 0.63 < share < 0.78, share


def test_augmentation_is_the_dihedral_group():
    """The 8 transforms are the 4 turns and 4 mirrors of the square, all distinct, and a sampler uses every one."""
    c = _noise(16, 16, 5)
    mine = {dihedral(c, k).tobytes() for k in range(8)}
    turns = [np.rot90(c, r) for r in range(4)]
    assert mine == {t.tobytes() for t in turns + [t[:, ::-1] for t in turns]} and len(mine) == 8
    s = CropSampler.__new__(CropSampler)
    s.imgs, s.weights, s.crop, s.jpeg = [c], np.array([1.0]), 16, 0.0
    seen = {b.transpose(1, 2, 0).tobytes() for b in s.batch(200, np.random.default_rng(1))}
    assert seen == mine


def test_a_share_of_crops_gets_a_jpeg_history():
    """With jpeg=0.5 about half the crops come back from a JPEG pass: near the source (quality >= 70) but not it."""
    y, x = np.mgrid[0:32, 0:32]
    c = np.stack([y * 7 % 256, x * 5 % 256, (y + x) * 3 % 256], -1).astype(np.uint8)
    s = CropSampler.__new__(CropSampler)
    s.imgs, s.weights, s.crop, s.jpeg = [c], np.array([1.0]), 32, 0.5
    mine = {dihedral(c, k).tobytes() for k in range(8)}
    crops = [b.transpose(1, 2, 0) for b in s.batch(200, np.random.default_rng(2))]
    passed = [b for b in crops if b.tobytes() not in mine]
    assert 70 <= len(passed) <= 130, len(passed)
    near = [min(np.abs(b.astype(int) - dihedral(c, k).astype(int)).mean() for k in range(8)) for b in passed]
    assert max(near) < 12, max(near)


def test_loader_workers_fill_batches_ahead(data):
    root, _ = data
    s = CropSampler(list_images(str(root)), 24)
    ld = Loader(s, 5, seed=3, workers=2)
    try:
        bs = [ld.next() for _ in range(6)]
    finally:
        ld.close()
    assert all(b.shape == (5, 3, 24, 24) and b.dtype == torch.float32 for b in bs)
    assert not any(t.is_alive() for t in ld.threads)
    a, b = Loader(s, 4, seed=9), Loader(s, 4, seed=9)  # without workers: reproducible from the seed
    assert torch.equal(a.next(), b.next())


QUIET = {"dev": None, "batch": 2, "crop": 32, "threads": 1, "log": lambda m: None}


def test_checkpoint_is_plain_data_and_export_gives_the_same_integers(data, tmp_path):
    """A run's checkpoint holds only arrays and JSON; exporting it later gives exactly the integers the run
    exported at its end; a resumed run carries on with the optimizer's state."""
    root, _ = data
    run = tmp_path / "run"
    s = train(codec="mspsm", profile="cpu-small", data=str(root), out=str(run), steps=2,
              export_to=str(tmp_path / "end.npz"), loader_workers=2, **QUIET)
    assert s["steps"] == 2
    with zipfile.ZipFile(checkpoint.path(run)) as z:
        assert all(n.endswith(".npy") for n in z.namelist())
    meta, state, opt = checkpoint.load(checkpoint.path(run))
    assert meta["codec"] == "mspsm" and meta["state"]["step"] == 2 and meta["device"] == "cpu"
    assert set(opt["state"]) == set(range(len(list(M.Net(M.PROFILES["cpu-small"]).parameters()))))
    export_checkpoint("mspsm", "cpu-small", str(run), str(tmp_path / "later.npz"), None)
    a, b = M.STORE.read(str(tmp_path / "end.npz"))[0].to_arrays(), M.STORE.read(str(tmp_path / "later.npz"))[0]
    assert all(np.array_equal(v, b.to_arrays()[k]) for k, v in a.items())
    net = M.Net(M.PROFILES["cpu-small"])
    checkpoint.fit(net, state, "x")
    assert all(np.array_equal(v, M.IntNet.from_net(net).to_arrays()[k]) for k, v in a.items())
    train(codec="mspsm", profile="cpu-small", data=str(root), out=str(run), steps=3, resume=True, **QUIET)
    meta3, state3, opt3 = checkpoint.load(checkpoint.path(run))
    assert meta3["state"]["step"] == 3 and float(opt3["state"][0]["step"]) == 3.0
    assert not torch.equal(state3["conv_in.weight"], state["conv_in.weight"])


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_hostile_checkpoints_are_refused(data, tmp_path):
    root, _ = data
    run = tmp_path / "run"
    train(codec="mspsm", profile="cpu-small", data=str(root), out=str(run), steps=1, **QUIET)
    good = Path(checkpoint.path(run)).read_bytes()
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        members = {n[:-4]: np.load(io.BytesIO(z.read(n))) for n in z.namelist()}

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    huge_header = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge_header, {"descr": "<f4", "fortran_order": False,
                                                       "shape": (1 << 40,)})
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("meta.npy", _npy(members["meta"]))
        z.writestr("model/conv_in.weight.npy", huge_header.getvalue() + b"\0" * 16)
    wrong_shape = dict(members)
    wrong_shape["model/conv_in.weight"] = np.zeros((3, 3), np.float32)
    wrong_dtype = dict(members)
    wrong_dtype["model/conv_in.weight"] = members["model/conv_in.weight"].astype(np.float64)
    bad_meta = dict(members)
    bad_meta["meta"] = np.frombuffer(json.dumps({"codec": "mspsm"}).encode(), np.uint8)
    cases = {
        "a pickle": (pickle.dumps({"model": Boom()}), "not an .npz"),
        "an object array": (_npz(meta=members["meta"], x=np.array([Boom()], object)), "not plain numbers"),
        "a huge array": (zbuf.getvalue(), "header says"),
        "a wrong shape": (_npz(**wrong_shape), "conv_in.weight is torch.float32 \\(3, 3\\)"),
        "a wrong dtype": (_npz(**wrong_dtype), "conv_in.weight is torch.float64"),
        "no run description": (_npz(**{k: v for k, v in members.items() if k != "meta"}), "no run description"),
        "a bad run description": (_npz(**bad_meta), "lacks format"),
        "garbage": (b"\x00" * 100, "not an .npz"),
    }
    for what, (blob, msg) in cases.items():
        Path(checkpoint.path(run)).write_bytes(blob)
        with pytest.raises(TrainingError, match=msg):
            train(codec="mspsm", profile="cpu-small", data=str(root), out=str(run), steps=2, resume=True, **QUIET)
        with pytest.raises(TrainingError):
            export_checkpoint("mspsm", "cpu-small", str(run), str(tmp_path / "w.npz"), None)
    assert not (tmp_path / "pwned").exists()


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_run_resumes_on_cpu_and_back_with_the_same_export(data, tmp_path):
    """A bf16 run on CUDA with a large batch and loader workers, resumed on the CPU and again on CUDA; the export
    of its checkpoint is the export of its float weights, wherever they were trained."""
    root, _ = data
    run = tmp_path / "run"
    kw = {**QUIET, "batch": 64}
    train(codec="mspsm", profile="cpu-fb2", data=str(root), out=str(run), steps=2, device="cuda", bf16=True,
          loader_workers=4, **kw)
    assert checkpoint.load(checkpoint.path(run))[0]["device"].startswith("cuda")
    train(codec="mspsm", profile="cpu-fb2", data=str(root), out=str(run), steps=3, resume=True, **kw)
    s = train(codec="mspsm", profile="cpu-fb2", data=str(root), out=str(run), steps=4, resume=True, device="cuda",
              export_to=str(tmp_path / "end.npz"), **kw)
    assert s["steps"] == 4
    export_checkpoint("mspsm", "cpu-fb2", str(run), str(tmp_path / "later.npz"), None)
    assert M.STORE.read(str(tmp_path / "end.npz"))[1] == M.STORE.read(str(tmp_path / "later.npz"))[1]


def test_cli_trains_and_reports_errors(data, tmp_path):
    root, _ = data
    pixark = [sys.executable, "-m", "pixark.jobs.train"]
    r = subprocess.run(pixark + ["--profile", "cpu-small", "--data", str(root), "--dev", "", "--out",
                                 str(tmp_path / "run"), "--steps", "1", "--batch", "2", "--crop", "32", "--threads",
                                 "1", "--loader-workers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 1 and "train codec=mspsm" in r.stderr
    if not torch.cuda.is_available():
        r = subprocess.run(pixark + ["--out", str(tmp_path / "gpu"), "--steps", "1", "--device", "cuda"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "no CUDA device" in r.stderr and not r.stdout
    r = subprocess.run(pixark + ["--out", str(tmp_path / "none"), "--steps", "1", "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no checkpoint" in r.stderr
