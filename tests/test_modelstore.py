"""Weights versions: new weights retire the old file instead of replacing it, and a stream decodes with the model
that coded it, current or retired; a stream whose model this build lacks is a clear error."""

import os

import numpy as np
import pytest
import torch

import pixark.codec as pc
from pixark.codec import modelstore
from pixark.codec import mspsm
from pixark.codec.errors import UnsupportedStream
from pixark.codec.mspsm import export as E, model as M
from pixark.codec.msr import export as RE, model as RM, weights as RW


def test_write_retires_the_previous_version_with_its_card(tmp_path):
    path = str(tmp_path / "x-p.npz")
    a = modelstore.write(path, b"version a")
    (tmp_path / "x-p.md").write_text("card a")
    assert modelstore.write(path, b"version a") == a and modelstore.retired(path) == []  # same bytes: kept
    b = modelstore.write(path, b"version b")
    assert modelstore.retired(path) == [a[:12]]
    assert open(modelstore.find(path, a), "rb").read() == b"version a"
    assert (tmp_path / "retired" / f"x-p-{a[:12]}.md").read_text() == "card a"
    assert not (tmp_path / "x-p.md").exists()  # the new version's card is the exporter's to write
    assert modelstore.find(path, b) == path
    assert modelstore.find(path, "0" * 64) is None
    # a retired file whose bytes do not match the id in its name is not taken for that model
    (tmp_path / "retired" / f"x-p-{a[:12]}.npz").write_bytes(b"tampered")
    assert modelstore.find(path, a) is None


def _net(seed):
    torch.manual_seed(seed)
    net = M.Net(M.PROFILES["cpu-small"])
    with torch.no_grad():
        net.head_p.weight.mul_(20)
    return M.IntNet.from_net(net)


def test_mspsm_streams_decode_after_the_weights_change(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(mspsm, "_NETS", {})
    px = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    id_a = E.save_intnet(_net(1), E.weights_path("cpu-small"))
    old = pc.encode(px, codec="mspsm:profile=cpu-small")
    id_b = E.save_intnet(_net(2), E.weights_path("cpu-small"))
    new = pc.encode(px, codec="mspsm:profile=cpu-small")
    assert id_a != id_b and old != new
    assert pc.info(old)["model_id"] == id_a and pc.info(new)["model_id"] == id_b
    assert np.array_equal(pc.decode(old).pixels, px) and np.array_equal(pc.decode(new).pixels, px)
    os.remove(tmp_path / "retired" / f"mspsm-cpu-small-{id_a[:12]}.npz")
    monkeypatch.setattr(mspsm, "_NETS", {})  # a new process: nothing loaded yet
    with pytest.raises(UnsupportedStream, match=f"{id_a[:12]}.*it has {id_b[:12]}"):
        pc.decode(old)


def test_msr_streams_decode_after_the_weights_change(tmp_path, monkeypatch):
    monkeypatch.setattr(RW, "WEIGHTS_DIR", str(tmp_path))
    px = np.random.default_rng(1).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    streams, ids = [], []
    for seed in (3, 4):
        torch.manual_seed(seed)
        ids.append(RE.save_weights("cpu", RM.Net(RM.PROFILES["cpu"]), RW.path("cpu")))
        streams.append(pc.encode(px, codec="msr"))
    assert ids[0] != ids[1] and [pc.info(s)["model_id"] for s in streams] == ids
    for s in streams:
        assert np.array_equal(pc.decode(s).pixels, px)
    os.remove(tmp_path / "retired" / f"msr-cpu-{ids[0][:12]}.npz")
    with pytest.raises(UnsupportedStream, match=f"model ffffffffffff .*it has {ids[1][:12]}\\)"):
        RW.load("cpu", "f" * 64)  # an id never seen (the one just removed may still be in the process cache)
