"""Weights versions: new weights retire the old file instead of replacing it, and a stream decodes with the model
that coded it, current or retired; a stream whose model this build lacks is a clear error."""

import os

import numpy as np
import pytest
import torch

import pixark.codec as pc
from pixark.codec import modelstore
from pixark.codec.errors import UnsupportedStream
from pixark.codec.mspsm import model as M
from pixark.codec.msr import export as RE, model as RM


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
    monkeypatch.setattr(modelstore, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(M.STORE, "_cache", {})
    px = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    id_a = M.STORE.save(_net(1), M.STORE.path("cpu-small"))
    old = pc.encode(px, codec="mspsm:profile=cpu-small")
    id_b = M.STORE.save(_net(2), M.STORE.path("cpu-small"))
    new = pc.encode(px, codec="mspsm:profile=cpu-small")
    assert id_a != id_b and old != new
    assert pc.info(old)["model_id"] == id_a and pc.info(new)["model_id"] == id_b
    assert np.array_equal(pc.decode(old).pixels, px) and np.array_equal(pc.decode(new).pixels, px)
    os.remove(tmp_path / "retired" / f"mspsm-cpu-small-{id_a[:12]}.npz")
    monkeypatch.setattr(M.STORE, "_cache", {})  # a new process: nothing loaded yet
    with pytest.raises(UnsupportedStream, match=f"{id_a[:12]}.*it has {id_b[:12]}"):
        pc.decode(old)


def test_msr_streams_decode_after_the_weights_change(tmp_path, monkeypatch):
    monkeypatch.setattr(modelstore, "WEIGHTS_DIR", str(tmp_path))
    px = np.random.default_rng(1).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    streams, ids = [], []
    for seed in (3, 4):
        torch.manual_seed(seed)
        ids.append(RE.save_weights(RM.Net(RM.PROFILES["cpu"]), RM.STORE.path("cpu")))
        streams.append(pc.encode(px, codec="msr"))
    assert ids[0] != ids[1] and [pc.info(s)["model_id"] for s in streams] == ids
    for s in streams:
        assert np.array_equal(pc.decode(s).pixels, px)
    os.remove(tmp_path / "retired" / f"msr-cpu-{ids[0][:12]}.npz")
    with pytest.raises(UnsupportedStream, match=f"model ffffffffffff .*it has {ids[1][:12]}\\)"):
        RM.STORE.load("cpu", "f" * 64)  # an id never seen (the one just removed may still be in the process cache)


def _weights_with(tmp_path, name, **change) -> str:
    """The shipped-style arrays of a small mspsm network with some entries replaced (None: removed)."""
    import io

    arrs = {**_net(5).to_arrays(), "format": np.array(1, np.int64)}
    for k, v in change.items():
        if v is None:
            arrs.pop(k)
        else:
            arrs[k] = v
    buf = io.BytesIO()
    np.savez(buf, **arrs)
    path = tmp_path / name
    path.write_bytes(buf.getvalue())
    return str(path)


def test_hostile_weights_files_are_refused_with_clear_errors(tmp_path):
    """A weights file is data: the profile it records is a literal checked field by field (never evaluated), its
    arrays plain numbers of the shapes and ranges the profile gives, checked before anything is allocated; each
    bad file is a BadModelFile saying what is wrong, and `pixark train --init` refuses it the same way."""
    import io
    import pickle
    import zipfile

    from pixark.codec.training import TrainingError, train

    marker = tmp_path / "ran"
    escape = f"().__class__.__base__.__subclasses__() or open({str(marker)!r}, 'w')"
    good = _net(5).to_arrays()
    prof = str(good["profile"])

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge, {"descr": "|i1", "fortran_order": False, "shape": (1 << 40,)})
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("conv_in.w.npy", huge.getvalue())
    (tmp_path / "huge.npz").write_bytes(zbuf.getvalue())
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"profile": Boom()}))
    cases = {
        _weights_with(tmp_path, "code.npz", profile=np.array(escape)): "not a literal",
        _weights_with(tmp_path, "call.npz", profile=np.array(prof.replace("'cpu-small'", "print('x')"))):
            "not a literal",
        str(tmp_path / "pickle.npz"): "not an .npz",
        _weights_with(tmp_path, "object.npz", profile=np.array([Boom()], object)): "not plain numbers",
        str(tmp_path / "huge.npz"): "header says",
        _weights_with(tmp_path, "wide.npz", profile=np.array(prof.replace("'channels': 32", "'channels': 10**9"))):
            "not a literal",
        _weights_with(tmp_path, "wide2.npz", profile=np.array(prof.replace("'channels': 32", "'channels': 99999"))):
            "channels = 99999 is outside 1..512",
        _weights_with(tmp_path, "field.npz", profile=np.array(prof.replace("'name'", "'__init__': 1, 'name'"))):
            "may have",
        _weights_with(tmp_path, "type.npz", profile=np.array(prof.replace("'blocks': 1", "'blocks': '1'"))):
            "blocks is str",
        _weights_with(tmp_path, "shape.npz", **{"conv_in.w": good["conv_in.w"][:, :5]}): "layer conv_in.w is int8",
        _weights_with(tmp_path, "dtype.npz", **{"head_p.w": good["head_p.w"].astype(np.float32)}): "head_p.w is float32",
        _weights_with(tmp_path, "range.npz", **{"b0.c1.m": good["b0.c1.m"] * 0 + (1 << 20)}): "multipliers",
        _weights_with(tmp_path, "missing.npz", **{"head_z.b": None}): "head_z has no b",
        _weights_with(tmp_path, "format.npz", format=np.array(7, np.int64)): "format 7",
        _weights_with(tmp_path, "noprof.npz", profile=None): "records no profile",
        RM.STORE.path("cpu"): "needs",  # an msr file is not an mspsm one
    }
    for path, msg in cases.items():
        with pytest.raises(modelstore.BadModelFile, match=msg):
            M.STORE.read(path)
    quiet = {"data": str(tmp_path), "dev": None, "steps": 1, "threads": 1, "log": lambda m: None}
    for name in ("code.npz", "pickle.npz", "object.npz"):
        with pytest.raises(TrainingError, match="cannot warm-start"):
            train(codec="mspsm", profile="cpu-small", out=str(tmp_path / "run"), init=str(tmp_path / name), **quiet)
    assert not marker.exists()
    assert M.STORE.read(_weights_with(tmp_path, "fine.npz"))[0].p.name == "cpu-small"  # the unchanged file loads
