"""The codec API's ``device`` argument. Here (any machine): device='cpu' gives exactly the default streams for
classical and learned codecs; a bad device or a GPU this machine lacks is a clear ValueError, never reported as a
damaged stream; the CUDA guard (cuDNN and TF32 off) holds around every network call off the CPU and is undone
after; a Ray worker's GPU maps to the right torch device. Where CUDA exists: streams made on the GPU equal the
CPU's and CPU streams decode bit-exact on the GPU (skipped elsewhere, with the reason)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pixark.codec as pc
from images import photo_array
from pixark.codec.nn import quant

torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: see tests/test_mspsm.py

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine (torch.cuda.is_available() is "
                                "False): the GPU path is tested only where CUDA exists")
BAD_DEVICE = "use 'cpu', 'cuda' or 'cuda:N'"


def _learned(name: str) -> str:
    codec = pc.get(name) if name in pc.names() else None
    if codec is None or not codec.available():
        pytest.skip(f"{name} is not in this build or has no shipped weights")
    return name


@pytest.fixture(scope="module")
def px() -> np.ndarray:
    return photo_array(40)[:, :36].copy()


def _missing_gpu() -> str:
    """A CUDA device this machine does not have."""
    return f"cuda:{torch.cuda.device_count()}" if HAS_CUDA else "cuda"


# ------------------------------------------------------------------------------------------------ any machine
@pytest.mark.parametrize("spec", ["png", "jxl-ll", "auto", "mspsm:tile=16", "msr:T=2"])
def test_explicit_cpu_device_gives_the_default_stream(px, spec):
    name = spec.partition(":")[0]
    if name in ("mspsm", "msr"):
        _learned(name)
    default = pc.encode(px, spec)
    assert pc.encode(px, spec, device="cpu") == default
    assert pc.encode(px, spec, verify=True, device=torch.device("cpu")) == default
    assert np.array_equal(pc.decode(default, device="cpu").pixels, px)


@pytest.mark.parametrize("bad", ["tpu", "gpu", "cuda:x", "cuda:-1", "CUDA", "mps", "", 0])
def test_unknown_device_is_a_clear_value_error(px, bad):
    stream = pc.encode(px, "png")
    with pytest.raises(ValueError, match=BAD_DEVICE):
        pc.encode(px, "png", device=bad)
    with pytest.raises(ValueError, match=BAD_DEVICE):
        pc.decode(stream, device=bad)


@pytest.mark.parametrize("name", ["mspsm", "msr"])
def test_learned_codec_on_a_missing_gpu_is_a_value_error_not_a_corrupt_stream(px, name):
    _learned(name)
    stream = pc.encode(px, name)
    missing = _missing_gpu()
    with pytest.raises(ValueError, match="CUDA"):
        pc.encode(px, name, device=missing)
    with pytest.raises(ValueError, match="CUDA") as exc:
        pc.decode(stream, device=missing)
    assert not isinstance(exc.value, pc.CodecError)
    # classical codecs run on the CPU whatever the device: a well-formed device name they ignore
    png = pc.encode(px, "png", device=missing)
    assert np.array_equal(pc.decode(png, device=missing).pixels, px)


def test_exact_cuda_switches_cudnn_and_tf32_off_and_restores_them():
    flags = ("cuda.matmul.allow_tf32", "cudnn.enabled", "cudnn.allow_tf32", "cudnn.benchmark")

    def state():
        b = torch.backends
        return (b.cuda.matmul.allow_tf32, b.cudnn.enabled, b.cudnn.allow_tf32, b.cudnn.benchmark)

    before = state()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the worst a process may set
    torch.backends.cudnn.enabled = torch.backends.cudnn.benchmark = True
    try:
        with quant.exact_cuda():
            assert state()[:3] == (False, False, False), dict(zip(flags, state()))
        assert state() == (True, True, True, True)
        with pytest.raises(RuntimeError), quant.exact_cuda():
            raise RuntimeError("a failing network call")
        assert state() == (True, True, True, True)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = before


def test_network_calls_off_the_cpu_run_under_the_guard_with_per_device_weights():
    """``run_on`` with a non-CPU device: the input moves there, the call runs under exact_cuda, outputs come back to
    the CPU; each layer copies its tensors to a device once. A CPU-only torch has one other device, 'meta' (shapes,
    no values): enough to show the routing and the caching here; the CUDA tests show the arithmetic."""
    from pixark.codec.mspsm import model as M

    torch.manual_seed(0)
    layer = M.IntNet.from_net(M.Net(M.PROFILES["cpu-small"])).layers["conv_in"]
    cpu = layer._torch_params()
    assert layer._torch_params("cpu") is cpu
    meta = layer._torch_params("meta")
    assert meta is layer._torch_params(torch.device("meta")) and meta[1].device.type == "meta"
    assert cpu[1].device.type == "cpu" and layer._torch_params() is cpu

    seen = []

    def net(x):
        y = layer.forward_torch(x)  # runs with the layer's copy on x's device
        seen.append((x.device.type, y.device.type, torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.enabled))
        # meta tensors hold no values to bring back: return CPU stand-ins of the outputs
        return torch.zeros(y.shape), torch.zeros(2)

    x = torch.zeros(1, M.n_inputs(M.PROFILES["cpu-small"]), 4, 4, dtype=torch.float64)
    out, extra = quant.run_on("meta", net, x)
    assert seen[-1] == ("meta", "meta", False, False)
    assert out.device.type == "cpu" and out.shape == (1, layer.w.shape[0], 4, 4) and extra.device.type == "cpu"
    quant.run_on("cpu", net, x)
    assert seen[-1][:2] == ("cpu", "cpu")


def test_ray_gpu_ids_map_to_torch_devices():
    from pixark.pipeline.workers import torch_device

    assert torch_device([], {}) == "cpu"
    assert torch_device([3], {"CUDA_VISIBLE_DEVICES": "3"}) == "cuda:0"  # Ray's default: only its GPU is visible
    assert torch_device(["2"], {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == "cuda:2"
    assert torch_device([5, 6], {"CUDA_VISIBLE_DEVICES": "6,5"}) == "cuda:1"
    assert torch_device([1], {}) == "cuda:1"
    assert torch_device(["GPU-1a2b"], {"CUDA_VISIBLE_DEVICES": "GPU-0f0f,GPU-1a2b"}) == "cuda:1"


# ------------------------------------------------------------------------------------------------ CUDA machines
@needs_cuda
@pytest.mark.parametrize("spec", ["mspsm:tile=16", "msr:T=2"])
def test_gpu_streams_equal_cpu_streams_through_the_api(px, spec):  # pragma: no cover - runs on GPU machines
    _learned(spec.partition(":")[0])
    cpu = pc.encode(px, spec)
    assert np.array_equal(pc.decode(cpu, device="cuda").pixels, px)
    assert np.array_equal(pc.decode(cpu, device="cuda:0").pixels, px)
    assert pc.encode(px, spec, device="cuda", verify=True) == cpu


def test_decode_tasks_ask_for_a_gpu_share_only_where_the_cluster_has_gpus():
    """verify/restore give learned-codec decode tasks the cluster's GPUs spread over its CPU slots (so no slot
    idles and each network call runs on a GPU); a CPU-only cluster, like this machine's, gets plain CPU tasks."""
    from pixark.pipeline.catalog import gpu_share

    assert gpu_share({"CPU": 2.0}) == 0.0
    assert gpu_share({"CPU": 2.0, "GPU": 0.0}) == 0.0
    assert gpu_share({"CPU": 32.0, "GPU": 4.0}) == 0.125
    assert gpu_share({"CPU": 2.0, "GPU": 4.0}) == 1.0  # never more than one GPU per task
    assert gpu_share({"GPU": 1.0}) == 1.0


def test_only_learned_records_get_the_gpu_share():
    import ray

    from pixark.pipeline.catalog import decode_task

    task = ray.remote(lambda rows: rows)  # a real remote function; no cluster is needed to set its options
    assert decode_task(task, [{"codec": "jxl-ll"}], 0.5) is task
    assert decode_task(task, [{"codec": "mspsm"}], 0.0) is task
    assert decode_task(task, [{"codec": "mspsm"}], 0.5) is not task
