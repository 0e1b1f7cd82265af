"""Integer-exact quantized layers shared by pixark's learned codecs.

Number formats (fixed for every model built from these layers)
- Activations after ReLU: unsigned integers 0..127 standing for ``a * ACT_STEP`` (ACT_STEP = 1/32).
- Network inputs: signed integers standing for ``a * IN_STEP`` (IN_STEP = 1/64); the caller chooses them.
- Weights: int8 in -127..127 with one float scale per output channel used only at export time.
- Biases: integers in accumulator units (weight scale x input step).
- Requantization: ``out = floor(((acc + bias) * M + 2**(sh - 1)) / 2**sh)`` with integers M (< 2**15) and sh,
  i.e. round half up, the one rounding rule of the integer path. Training (fake quantization) uses
  ``floor(x + 0.5)`` on the same quantities with a straight-through gradient.

Training uses ``QConv2d`` (float, fake-quantized). ``export_conv`` turns one into an ``IntConv`` (plain integer
arrays). ``IntConv.forward_torch`` is the fast path (conv2d in float32 when every partial sum is provably
an integer below 2**24, else float64; requantization in float64, exact below 2**53) and
``IntConv.forward_numpy`` is the slow pure-integer int64 reference. The two must agree exactly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_MAX = 127
ACT_STEP = 1.0 / 32
IN_STEP = 1.0 / 64
W_MAX = 127
M_BITS = 15
F32_EXACT = 1 << 24


@contextmanager
def exact_cuda():
    """CUDA settings under which ``IntConv.forward_torch`` stays integer-exact, restored on exit (process-global
    flags: hold this only around the network call). Why: the fast path is exact because every float32 partial sum
    is an integer below 2**24 (so any summation order gives the same value) and the float64 requantization
    products are exact (so FMA or not gives the same value). cuDNN may pick Winograd or FFT convolutions, which
    transform the operands and round, and TF32 keeps only 10 mantissa bits: either changes the integers. With
    cuDNN disabled conv2d runs PyTorch's own im2col + cuBLAS GEMM, with TF32 off in full float32/float64."""
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32


def run_on(device: str, fn, x: torch.Tensor):
    """``fn(x)`` (an integer network) with ``x`` on ``device`` ('cpu', 'cuda', 'cuda:N'); the output tensor, or
    tuple of tensors, comes back on the CPU for entropy coding. The layers keep one copy of their tensors per
    device (``IntConv._torch_params``), so the weights move once, not per call."""
    if device is None or str(device) == "cpu":
        return fn(x)
    with exact_cuda():
        out = fn(x.to(device))
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 0.5) forward, identity gradient (the integer path's rounding rule)."""
    return x + (torch.floor(x + 0.5) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


class QConv2d(nn.Module):
    """Fake-quantized convolution. ``mode``: 'relu' (output 0..127 activation units), 'signed' (integer output
    in out_step units, clamped to +-out_clamp), the float output returned is ``q * out_step``.
    ``gain`` (per output channel, constant) multiplies weights and bias; it only speeds up learning of outputs
    with large ranges and is folded into the integer weights at export."""

    def __init__(self, cin: int, cout: int, k: int, in_step: float, out_step, mode: str = "relu",
                 gain=None, out_clamp: int = 32767):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.in_step = float(in_step)
        self.mode = mode
        self.out_clamp = out_clamp
        out_step = torch.as_tensor(out_step, dtype=torch.float32).expand(cout).clone()
        self.register_buffer("out_step", out_step)
        gain = torch.ones(cout) if gain is None else torch.as_tensor(gain, dtype=torch.float32).expand(cout).clone()
        self.register_buffer("gain", gain)
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def quantized(self):
        w = self.weight * self.gain[:, None, None, None]
        b = self.bias * self.gain
        sw = (w.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / W_MAX)
        wq = round_ste(w / sw[:, None, None, None]).clamp(-W_MAX, W_MAX) * sw[:, None, None, None]
        bstep = sw * self.in_step
        bq = round_ste(b / bstep) * bstep
        return wq, bq, sw

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        wq, bq, _ = self.quantized()
        y = F.conv2d(a, wq, bq, padding=self.k // 2)
        lo, hi = (0, ACT_MAX) if self.mode == "relu" else (-self.out_clamp, self.out_clamp)
        return _RoundClamp.apply(y, self.out_step[None, :, None, None], lo, hi)


class _RoundClamp(torch.autograd.Function):
    """clamp(floor(y / step + 0.5), lo, hi) * step with the straight-through gradient inside the clamp range:
    what round_ste followed by clamp and the multiply compute, in one autograd node (training spent a quarter of
    its time in the backward passes of those small element-wise ops)."""

    @staticmethod
    def forward(ctx, y, step, lo, hi):
        r = torch.floor(y / step + 0.5)
        inside = (r >= lo) & (r <= hi)
        ctx.save_for_backward(inside)
        return r.clamp_(lo, hi).mul_(step)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


@dataclass
class IntConv:
    """An exported convolution: everything integer."""

    w: np.ndarray      # int8 (cout, cin, k, k)
    b: np.ndarray      # int64 (cout,)
    m: np.ndarray      # int64 (cout,) multiplier < 2**15
    sh: np.ndarray     # int64 (cout,) right shift
    mode: str          # 'relu' or 'signed'
    out_clamp: int
    in_max: np.ndarray  # int64 (cin,) bound on |input| per channel (for the float32 exactness proof)

    def __post_init__(self):
        self.k = int(self.w.shape[-1])
        bound = (np.abs(self.w.astype(np.int64)) * self.in_max[None, :, None, None]).sum(axis=(1, 2, 3))
        self.f32_ok = bool((bound + np.abs(self.b)).max() < F32_EXACT)
        if ((bound + np.abs(self.b)) * self.m).max() >= (1 << 52):
            raise ValueError("integer layer out of the exact float64 range (|acc + b| * m >= 2**52)")
        self._t: dict = {}  # torch.device -> (dtype, weights, requant multiplier, requant offset)

    # ---------------- fast path (torch) ----------------
    def _torch_params(self, device=None):
        """The layer's torch tensors on ``device`` (default CPU), built once per device: the CPU copy from the
        integer arrays, any other as a copy of the CPU tensors (same values, so the same integers)."""
        dev = torch.device("cpu") if device is None else torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # the key tensors report: cuda:N
            dev = torch.device("cuda", torch.cuda.current_device())
        t = self._t.get(dev)
        if t is None:
            if dev.type == "cpu":
                dt = torch.float32 if self.f32_ok else torch.float64
                w = torch.from_numpy(self.w.astype(np.float64)).to(dt)
                # requantization q = floor((acc + b) * r + 0.5) with r = m / 2**sh: (acc + b) * m < 2**53 (checked
                # below), so acc * r and b * r + 0.5 are exact float64 values on the 2**-sh grid and so is their sum.
                r = self.m.astype(np.float64) * np.exp2(-self.sh.astype(np.float64))
                c = self.b.astype(np.float64) * r + 0.5
                t = (dt, w, torch.from_numpy(r)[None, :, None, None], torch.from_numpy(c)[None, :, None, None])
            else:
                dt, *rest = self._torch_params()
                t = (dt, *[x.to(dev) for x in rest])
            self._t[dev] = t
        return t

    def acc_torch(self, a: torch.Tensor) -> torch.Tensor:
        """Integer accumulator without bias (float tensor holding exact integers), shape (B, cout, H, W), on
        ``a``'s device. conv2d on CPU runs oneDNN's direct convolution (no Winograd/FFT); on CUDA the caller
        holds ``exact_cuda()`` (no cuDNN, no TF32). With every partial sum an integer below 2**24 any summation
        order is exact. tests/test_mspsm.py checks it against the int64 reference."""
        dt, w, _, _ = self._torch_params(a.device)
        return F.conv2d(a.to(dt), w, padding=self.k // 2)

    def forward_torch(self, a: torch.Tensor) -> torch.Tensor:
        _, _, r, c = self._torch_params(a.device)
        # acc * r and + c are each exact in float64 (see _torch_params); two in-place passes run about twice as
        # fast as one mixed float32/float64 addcmul
        q = self.acc_torch(a).to(torch.float64).mul_(r).add_(c).floor_()
        if self.mode == "relu":
            return q.clamp_(0, ACT_MAX)
        return q.clamp_(-self.out_clamp, self.out_clamp)

    # ---------------- reference (numpy int64) ----------------
    def forward_numpy(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a).astype(np.int64)
        bsz, cin, h, wd = a.shape
        p = self.k // 2
        ap = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
        w = self.w.astype(np.int64)
        acc = np.zeros((bsz, w.shape[0], h, wd), np.int64)
        for dy in range(self.k):
            for dx in range(self.k):
                acc += np.einsum("oc,bchw->bohw", w[:, :, dy, dx], ap[:, :, dy:dy + h, dx:dx + wd])
        acc += self.b[None, :, None, None]
        m = self.m[None, :, None, None]
        sh = self.sh[None, :, None, None]
        q = (acc * m + (np.int64(1) << (sh - 1))) >> sh
        if self.mode == "relu":
            return np.clip(q, 0, ACT_MAX)
        return np.clip(q, -self.out_clamp, self.out_clamp)

    def to_arrays(self, prefix: str) -> dict:
        return {f"{prefix}.w": self.w, f"{prefix}.b": self.b, f"{prefix}.m": self.m, f"{prefix}.sh": self.sh,
                f"{prefix}.mode": np.array(self.mode), f"{prefix}.clamp": np.array(self.out_clamp, np.int64),
                f"{prefix}.inmax": self.in_max}

    @classmethod
    def from_arrays(cls, arrs, prefix: str) -> "IntConv":
        return cls(w=np.asarray(arrs[f"{prefix}.w"], np.int8), b=np.asarray(arrs[f"{prefix}.b"], np.int64),
                   m=np.asarray(arrs[f"{prefix}.m"], np.int64), sh=np.asarray(arrs[f"{prefix}.sh"], np.int64),
                   mode=str(arrs[f"{prefix}.mode"]), out_clamp=int(arrs[f"{prefix}.clamp"]),
                   in_max=np.asarray(arrs[f"{prefix}.inmax"], np.int64))


def export_conv(layer: QConv2d, in_max) -> IntConv:
    """Export a trained QConv2d to integers (deterministic given the float weights)."""
    with torch.no_grad():
        w = (layer.weight * layer.gain[:, None, None, None]).double()
        b = (layer.bias * layer.gain).double()
        sw = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / W_MAX
        wi = torch.floor(w / sw[:, None, None, None] + 0.5).clamp(-W_MAX, W_MAX)
        bi = torch.floor(b / (sw * layer.in_step) + 0.5)
        ratio = (sw * layer.in_step / layer.out_step.double()).numpy()
    m = np.zeros(layer.cout, np.int64)
    sh = np.zeros(layer.cout, np.int64)
    for o, r in enumerate(ratio):
        s = int(M_BITS - 1 - math.floor(math.log2(r)))
        s = max(s, 1)
        mm = int(math.floor(r * 2.0 ** s + 0.5))
        while mm >= (1 << M_BITS):
            s -= 1
            mm = int(math.floor(r * 2.0 ** s + 0.5))
        m[o], sh[o] = max(mm, 1), s
    in_max = np.broadcast_to(np.asarray(in_max, np.int64), (layer.cin,)).copy()
    return IntConv(w=wi.numpy().astype(np.int8), b=bi.numpy().astype(np.int64), m=m, sh=sh, mode=layer.mode,
                   out_clamp=int(layer.out_clamp), in_max=in_max)
