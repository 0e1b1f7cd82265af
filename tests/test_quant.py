"""The integer layers' CPU path (uint8 activations, oneDNN int8 convolution or its float fallback, compiled
requantization) against the float path used on other devices and the int64 reference, on the extreme values of
every bound."""

import numpy as np
import pytest
import torch

from pixark.codec.nn import quant
from pixark.codec.mspsm import model as MM
from pixark.codec.msr import model as RM


@pytest.fixture(params=["onednn-int8", "float-fallback"])
def conv_mode(request, monkeypatch):
    if request.param == "onednn-int8":
        if not quant.qconv_ok():
            pytest.skip("this torch has no exact oneDNN int8 convolution (the float fallback is tested instead)")
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


def test_first_layer_on_packed_input_equals_reference_and_float_path(conv_mode):
    """A first layer whose inputs are bounded by 127 (taken whole), 128 and 254 (split into halves): the packed
    uint8 path gives the reference integers exactly, at the borders too, with every input at its bounds."""
    bounds = [127] * 5 + [128] * 4 + [254] * 3
    layer = _layer(len(bounds), 16, 3, bounds, "relu", 0)
    assert layer.cpu_ok and len(layer.src) == 5 + 2 * 7
    x = _extremes(np.random.default_rng(1), bounds, (2, len(bounds), 11, 9))
    want = layer.forward_numpy(x)
    got = layer.forward_cpu(layer.pack(torch.from_numpy(x).float()), zp=128)
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), want)
    assert np.array_equal(layer.forward_torch(torch.from_numpy(x).float()).numpy(), want)
    assert 0 < (want == 0).mean() < 1 and (want == 127).any()  # both clamps were exercised


def test_block_layers_and_residual_equal_reference(conv_mode):
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
    assert not wide.cpu_ok  # such a network runs the float path (run_trunk)
    with pytest.raises(ValueError):
        wide.pack(torch.zeros(1, 2, 3, 3))


@pytest.mark.parametrize("which", ["mspsm", "msr"])
def test_whole_networks_cpu_path_equals_float_path_and_reference(which, conv_mode):
    """Both learned codecs' networks (seeded weights, every input at its bounds): the CPU path, the float path
    (what CUDA runs) and the int64 reference give the same integers."""
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
    flt = quant.trunk_float(net.layers, p.blocks, xt, heads)
    for r, c, f in zip(ref, cpu, flt):
        assert np.array_equal(c.numpy(), r) and np.array_equal(f.numpy(), r)
