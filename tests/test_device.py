"""The codec API's ``device`` argument. Here (any machine): device='cpu' gives exactly the default streams for
classical and learned codecs; a bad device or a GPU this machine lacks is a clear ValueError, never reported as a
damaged stream; network calls off the CPU route their tensors there and back and touch no process-wide switch; a
device that runs out of memory is a DeviceError; a Ray worker's GPU maps to the right torch device. Where CUDA exists: streams made on the GPU equal the
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


def test_network_calls_off_the_cpu_move_the_input_there_and_bring_the_outputs_back():
    """``run_on`` with a non-CPU device: the input moves there and the outputs come back to the CPU, with no
    process-wide switch touched (the int path needs none). A CPU-only torch has one other device, 'meta' (shapes,
    no values): enough to show the routing here; the CUDA tests show the arithmetic."""
    seen = []

    class Out(torch.Tensor):  # a meta tensor holds no values to copy: stand in for the copy back
        def cpu(self):
            return torch.zeros(self.shape)

    def net(x):
        seen.append(x.device.type)
        return torch.zeros(x.shape[0], 3, device=x.device).as_subclass(Out), torch.zeros(2)

    flags = (torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled)
    out, extra = quant.run_on("meta", net, torch.zeros(2, 4))
    assert seen == ["meta"] and out.device.type == "cpu" and out.shape == (2, 3) and extra.device.type == "cpu"
    assert (torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled) == flags
    quant.run_on("cpu", net, torch.zeros(1, 4))
    assert seen[-1] == "cpu"


def test_a_device_out_of_memory_is_a_device_error_not_a_damaged_stream(px, monkeypatch):
    """A GPU that runs out of memory in the network says so (DeviceError), and the API passes that on: never
    reported as a damaged stream, never silently coded without the learned codec by auto."""
    def oom(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(pc.DeviceError, match="meta ran out of memory"):
        quant.run_on("meta", oom, torch.zeros(1))
    _learned("mspsm")
    stream = pc.encode(px, "mspsm:tile=16")
    from pixark.codec.mspsm import coder

    monkeypatch.setattr(coder, "run_on", lambda device, fn, x: quant.run_on("meta", oom, x))
    with pytest.raises(pc.DeviceError):
        pc.decode(stream)
    with pytest.raises(pc.DeviceError):
        pc.encode(px, "auto")


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
    from precision import reduced_precision

    _learned(spec.partition(":")[0])
    cpu = pc.encode(px, spec)
    with reduced_precision():
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
