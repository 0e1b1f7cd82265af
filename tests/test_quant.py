"""The integer layers' CPU path (uint8 activations, oneDNN int8 convolution, compiled requantization) and the int
path (im2col + int8 matrix product + int64 requantization: GPUs, and CPUs without an exact oneDNN int8 convolution)
against the int64 reference, on the extreme values of every bound; the int path's per-device check, its chunking,
and its independence from the host process's precision settings."""

import subprocess
import sys


import numpy as np
import pytest
import torch

from pixark.codec.nn import quant
from pixark.codec.mspsm import model as MM
from pixark.codec.msr import model as RM


from pixark.codec.errors import DeviceError

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine: the int path runs on the CPU here"))]


@pytest.fixture(params=["onednn-int8", "int-path"])
def conv_mode(request, monkeypatch):
    if request.param == "onednn-int8":
        if not quant.qconv_ok():
            pytest.skip("this torch has no exact oneDNN int8 convolution (the int path is tested instead)")
    else:
        monkeypatch.setattr(quant, "_QCONV", False)
    return request.param


def _layer(cin, cout, k, in_max, mode, seed):
    torch.manual_seed(seed)
    q = quant.QConv2d(cin, cout, k, quant.IN_STEP if k == 3 else quant.ACT_STEP, quant.ACT_STEP if k == 3 else 1.0,
                      mode)
    with torch.no_grad():
        q.weight.mul_(8)
        q.weight[0] = q.weight[0].abs()  # one output channel saturates high, one low
        q.weight[1] = -q.weight[1].abs()
        q.bias.normal_(0, 0.5)
    return quant.export_conv(q, in_max)


def _extremes(rng, bounds, shape, signed=True):
    """Integers within +-bound per channel (0..bound unsigned), a third of them at the bounds."""
    n, _, h, w = shape
    b = np.asarray(bounds)[None, :, None, None]
    lo = -b if signed else 0 * b
    x = rng.integers(lo, b + 1, size=shape)
    pick = rng.integers(0, 3, size=shape)
    x = np.where(pick == 0, b, np.where(pick == 1, lo, x))
    return x


def test_first_layer_on_packed_input_equals_reference_on_both_paths(conv_mode):
    """A first layer whose inputs are bounded by 127 (taken whole), 128 and 254 (split into halves): the packed
    uint8 path gives the reference integers exactly, at the borders too, with every input at its bounds."""
    bounds = [127] * 5 + [128] * 4 + [254] * 3
    layer = _layer(len(bounds), 16, 3, bounds, "relu", 0)
    assert layer.cpu_ok and len(layer.src) == 5 + 2 * 7
    x = _extremes(np.random.default_rng(1), bounds, (2, len(bounds), 11, 9))
    want = layer.forward_numpy(x)
    if conv_mode == "onednn-int8":
        got = layer.forward_cpu(layer.pack(torch.from_numpy(x).float()), zp=128)
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), want)
    else:
        with pytest.raises(ValueError, match="forward_int"):
            layer.forward_cpu(layer.pack(torch.from_numpy(x).float()), zp=128)
    got = layer.forward_int(torch.from_numpy(x).float())
    assert got.dtype == torch.int32 and np.array_equal(got.numpy(), want)
    assert 0 < (want == 0).mean() < 1 and (want == 127).any()  # both clamps were exercised


def test_block_layers_and_residual_equal_reference():
    if not quant.qconv_ok():
        pytest.skip("this torch has no exact oneDNN int8 convolution (forward_cpu needs it)")
    rng = np.random.default_rng(2)
    a = _extremes(rng, [127] * 24, (1, 24, 10, 13), signed=False)
    at = torch.from_numpy(a.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
    relu = _layer(24, 24, 3, 127, "relu", 3)
    assert np.array_equal(relu.forward_cpu(at).numpy(), relu.forward_numpy(a))
    signed = _layer(24, 24, 3, 127, "signed", 4)
    r = signed.forward_numpy(a)
    assert np.abs(r).max() > 127  # the residual's clamp matters
    assert np.array_equal(signed.forward_cpu(at, res=at).numpy(), np.clip(a + r, 0, 127))
    head = _layer(24, 30, 1, 127, "signed", 5)
    out = head.forward_cpu(at, dtype=torch.float32)
    assert out.dtype == torch.float32 and np.array_equal(out.numpy(), head.forward_numpy(a))


def test_pack_refuses_values_outside_the_bounds():
    layer = _layer(3, 4, 3, [127, 128, 254], "relu", 6)
    with pytest.raises(ValueError, match="bounds"):
        layer.pack(torch.tensor([[[[0.0]], [[0.0]], [[256.0]]]]))
    wide = _layer(2, 4, 3, [127, 300], "relu", 7)
    assert not wide.cpu_ok  # such a network runs the int path (run_trunk)
    with pytest.raises(ValueError):
        wide.pack(torch.zeros(1, 2, 3, 3))


@pytest.mark.parametrize("dev", DEVICES)
def test_int_path_splits_wide_inputs_into_int8_parts(dev):
    """Inputs bounded by up to 1000 go through the int8 product as ceil(bound / 127) parts that add up to them."""
    bounds = [1, 127, 128, 254, 255, 1000]
    layer = _layer(len(bounds), 8, 3, bounds, "signed", 10)
    assert list(np.bincount(layer.split_src)) == [1, 1, 2, 2, 3, 8]
    x = _extremes(np.random.default_rng(11), bounds, (3, len(bounds), 9, 6))
    assert np.array_equal(layer.forward_int(torch.from_numpy(x).to(dev)).cpu().numpy(), layer.forward_numpy(x))


@pytest.mark.parametrize("which", ["mspsm", "msr"])
def test_whole_networks_cpu_path_equals_int_path_and_reference(which, conv_mode):
    """Both learned codecs' networks (seeded weights, every input at its bounds): the CPU path, the int path (what
    GPUs run) and the int64 reference give the same integers."""
    torch.manual_seed(8)
    if which == "mspsm":
        p = MM.PROFILES["cpu-fb2"]
        net, bounds, heads = MM.IntNet.from_net(MM.Net(p)), MM.input_max(p), ("head_p", "head_z")
    else:
        p = RM.PROFILES["small"]
        net, bounds, heads = RM.IntNet.from_net(RM.Net(p)), RM.input_max(), ("head",)
    x = _extremes(np.random.default_rng(9), bounds, (2, len(bounds), 12, 10))
    xt = torch.from_numpy(x).float()
    ref = net.reference(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    cpu = quant.run_trunk(net.layers, p.blocks, xt, heads)
    it = quant.trunk_int(net.layers, p.blocks, xt, heads)
    gpu = quant.run_on("cuda", lambda x: quant.run_trunk(net.layers, p.blocks, x, heads), xt) \
        if torch.cuda.is_available() else it
    for r, c, i, g in zip(ref, cpu, it, gpu):
        assert np.array_equal(c.numpy(), r) and np.array_equal(i.numpy(), r) and np.array_equal(g.numpy(), r)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("positions", [7, 40, 1000])
def test_int_path_in_chunks_equals_the_reference(monkeypatch, positions, dev):
    """Products over at most ``positions`` output positions (parts of a row band, whole rows, several images)
    give the same integers as one product."""
    monkeypatch.setattr(quant, "INT_POSITIONS", positions)
    assert sorted({(i1 - i0, y1 - y0) for i0, i1, y0, y1 in quant._chunks(3, 13, 10)}) == (
        [(1, 1)] if positions < 10 else [(1, 1), (1, 4)] if positions == 40 else [(3, 13)])
    layer = _layer(6, 8, 3, [200] * 6, "relu", 12)
    x = _extremes(np.random.default_rng(13), [200] * 6, (3, 6, 13, 10))
    assert np.array_equal(layer.forward_int(torch.from_numpy(x).to(dev)).cpu().numpy(), layer.forward_numpy(x))


def test_a_device_whose_products_differ_is_refused_before_it_codes(monkeypatch):
    """Each layer checks its int path against the int64 reference the first time it runs on a device: kernels
    whose products are off raise DeviceError (and stay refused), never a wrong prediction."""
    good = torch._int_mm

    def off(a, b):
        return good(a, b) * 2

    layer = _layer(4, 8, 3, [127] * 4, "relu", 14)
    monkeypatch.setattr(torch, "_int_mm", off)
    for _ in range(2):
        with pytest.raises(DeviceError, match="differs from the int64 reference"):
            layer.forward_int(torch.zeros(1, 4, 5, 5))
    monkeypatch.setattr(torch, "_int_mm", good)
    assert np.array_equal(layer.forward_int(torch.zeros(1, 4, 5, 5)).numpy(),
                          layer.forward_numpy(np.zeros((1, 4, 5, 5), np.int64)))


HOSTILE = """
import sys, torch
from pixark.codec.nn import quant
torch.backends.mkldnn.enabled = False   # the old float fallback then ran NNPACK's inexact Winograd on big batches
b = torch.backends
for obj, mode in ((b, "tf32"), (b.mkldnn.matmul, "bf16"), (b.mkldnn.conv, "bf16")):
    try:  # reduced-precision float32 wherever this torch lets a process ask for it
        obj.fp32_precision = mode
    except Exception:
        pass
import pixark.codec as pc
src = open(sys.argv[1], "rb").read()
for qconv in (None, False):  # oneDNN's int8 path where it is exact here, then the int path
    quant._QCONV = qconv
    sys.stdout.buffer.write(pc.encode(src, "mspsm", tile=16, tile_batch=36))
"""


def test_streams_do_not_depend_on_the_host_precision_settings(tmp_path):
    """A process that turned on every reduced-precision float mode it could, and disabled oneDNN, writes the same
    mspsm stream with 36 tiles per network call as a normal one, on oneDNN's int8 path and on the int path that
    CPUs without it use."""
    import pixark.codec as pc
    from images import photo_array, png_bytes

    src = tmp_path / "p.png"
    src.write_bytes(png_bytes(photo_array(64)[:48]))
    want = pc.encode(src.read_bytes(), "mspsm", tile=16)
    got = subprocess.run([sys.executable, "-c", HOSTILE, str(src)], capture_output=True, timeout=300)
    assert got.returncode == 0, got.stderr.decode()[-2000:]
    assert got.stdout == want + want
