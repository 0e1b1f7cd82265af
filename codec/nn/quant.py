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
arrays). Three ways to run one, which must agree exactly:
- ``IntConv.forward_cpu`` (the CPU path, ``run_trunk``): activations as uint8, oneDNN's int8 convolution with int32
  accumulators (AMX / VNNI where the CPU has them), requantization in one compiled integer pass (numba);
- ``IntConv.forward_int`` (GPUs, and CPUs without an exact oneDNN int8 convolution): explicit im2col and an int8
  matrix product with int32 accumulators (``torch._int_mm``: tensor cores on GPUs), requantization in int64. No
  float arithmetic, so no precision setting of the host process (TF32, cuDNN, reduced-precision matmul flags) can
  change a result; each device's kernels are also checked against the reference when a layer first runs there;
- ``IntConv.forward_numpy``: the slow pure-integer int64 reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DeviceError

ACT_MAX = 127
ACT_STEP = 1.0 / 32
IN_STEP = 1.0 / 64
W_MAX = 127
M_BITS = 15
F32_EXACT = 1 << 24
I32_EXACT = 1 << 31
ALIGN = 16            # torch._int_mm on CUDA wants K and N multiples of 8 and M > 16: padded with zeros here
INT_POSITIONS = 1 << 18  # output positions per int8 matrix product: bounds the im2col buffer (2**18 x 864 B)


def run_on(device: str, fn, x: torch.Tensor):
    """``fn(x)`` (an integer network) with ``x`` on ``device`` ('cpu', 'cuda', 'cuda:N'); the output tensor, or
    tuple of tensors, comes back on the CPU for entropy coding. The layers keep one copy of their tensors per
    device (``IntConv._int_params``), so the weights move once, not per call. A device that runs out of memory
    raises ``DeviceError`` (never a damaged-stream error)."""
    if device is None or str(device) == "cpu":
        return fn(x)
    try:
        out = fn(x.to(device))
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()
    except torch.OutOfMemoryError as e:
        raise DeviceError(f"{device} ran out of memory in the codec's network ({e}); use a smaller tile_batch or "
                          "tile, or device='cpu'") from None


def bf16_trunk(x: torch.Tensor, enabled: bool):
    """Training only: the convolutions inside run in bfloat16 (about 4x faster on CPUs with AMX / AVX512-BF16,
    accumulating in float32); the fake quantization after each one still rounds in float32. Networks use it for
    their trunk, never for the heads (offsets up to 4095 need more than bfloat16's 8 significant bits). On the
    shipped cpu-fb2 weights the loss moves by 0.02 % (2.5722 -> 2.5728 bpsp on 10 dev crops)."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled)


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


# ---------------- the CPU path's compiled integer kernels ----------------
@numba.njit(cache=True, nogil=True)
def _requant(acc, b, m, sh, lo, hi, res, out):
    """out = clip(floor(((acc + b) * m + 2**(sh - 1)) / 2**sh), lo, hi), the one rounding rule, in int64 (exact:
    |acc + b| * m < 2**52 is checked at load). ``acc`` and ``out`` (rows, C): channels-last memory; ``acc`` float32
    holding integers. With a non-empty ``res`` (rows, C) the output is the residual sum clip(res + q, 0, 127)."""
    n_pos, n_ch = acc.shape
    add = np.empty(n_ch, np.int64)
    for c in range(n_ch):
        add[c] = b[c] * m[c] + (np.int64(1) << (sh[c] - 1))
    if res.shape[0]:
        for i in range(n_pos):
            for c in range(n_ch):
                q = min(max((np.int64(acc[i, c]) * m[c] + add[c]) >> sh[c], lo), hi)
                out[i, c] = min(max(q + res[i, c], 0), ACT_MAX)
    else:
        for i in range(n_pos):
            for c in range(n_ch):
                out[i, c] = min(max((np.int64(acc[i, c]) * m[c] + add[c]) >> sh[c], lo), hi)


@numba.njit(cache=True, nogil=True)
def _pack(x, src, part, out):
    """The uint8 input of a layer with zero point 128: out[n, y, x, j] = 128 + v with v the input channel src[j]
    (part 0), or its halves floor(v / 2) (part 1) and v - floor(v / 2) (part 2) for channels bounded by 128..254.
    Returns False if a value does not fit (a caller bug: the bounds are the layer's ``in_max``)."""
    n_img, _, h, w = x.shape
    ok = True
    for n in range(n_img):
        for y in range(h):
            for j in range(src.shape[0]):  # row by row: contiguous reads, the strided writes stay in cache
                s, p = src[j], part[j]
                for xx in range(w):
                    v = np.int64(x[n, s, y, xx])
                    if p == 1:
                        v = v >> 1
                    elif p == 2:
                        v = v - (v >> 1)
                    ok &= -128 <= v <= 127
                    out[n, y, xx, j] = v + 128
    return ok


_NO_RES = np.zeros((0, 0), np.uint8)
_QCONV = None


def _rows(t: torch.Tensor) -> np.ndarray:
    """A channels-last (N, C, H, W) tensor's memory as a (N * H * W, C) array (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).numpy()


def _qconv(a, packed, zp: int, pad: int) -> torch.Tensor:
    """oneDNN's int8 convolution of uint8 ``a`` (zero point ``zp``) with prepacked int8 weights: the int32
    accumulators converted to float32 (exact below 2**24; scales 1, no bias), channels-last."""
    w, ones, zeros = packed
    return torch.ops.onednn.qconv2d_pointwise(a, 1.0, zp, w, ones, zeros, None, [1, 1], [pad, pad], [1, 1], 1,
                                              1.0, 0, torch.float32, "none", [], "")


def _prepack(w: torch.Tensor):
    o = w.shape[0]
    ones, zeros = torch.ones(o), torch.zeros(o, dtype=torch.int64)
    p = w.shape[-1] // 2
    return torch.ops.onednn.qconv_prepack(w, ones, 1.0, 0, [1, 1], [p, p], [1, 1], 1, None), ones, zeros


def qconv_ok() -> bool:
    """Whether this torch has oneDNN's int8 convolution and it computes exactly here, checked once per process
    against float64 on the cases where an int8 kernel could go wrong: the largest products (inputs 0 and 255
    under both zero points, weights +-127, which would saturate the 16-bit pair sums of a pre-VNNI kernel), zero
    padding at the borders, 3x3 and 1x1. Else ``IntConv.forward_cpu`` convolves in float (slower, same integers)."""
    global _QCONV
    if _QCONV is None:
        _QCONV = False
        try:
            g = torch.Generator().manual_seed(0)
            for k in (3, 1):
                w = torch.randint(-127, 128, (16, 24, k, k), generator=g, dtype=torch.int8)
                w[:4] = 127
                w[4:8] = -127
                x = torch.randint(0, 256, (2, 24, 9, 7), generator=g).to(torch.uint8)
                x[0, :, :4] = 255
                x[1, :, :4] = 0
                packed = _prepack(w)
                for zp in (0, 128):
                    got = _qconv(x, packed, zp, k // 2).double()
                    want = F.conv2d(x.double() - zp, w.double(), padding=k // 2)
                    if not torch.equal(got, want):
                        return False
            _QCONV = True
        except Exception:  # no oneDNN int8 ops in this torch build
            pass
    return _QCONV


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
            raise ValueError("integer layer out of the exact int64 requantization range (|acc + b| * m >= 2**52)")
        if bound.max() >= I32_EXACT:
            raise ValueError("integer layer out of the int32 accumulator range (sum |w| * in_max >= 2**31)")
        # The int8 input layout: channel c, bounded by B, as n = ceil(B / 127) parts floor((v + k) / n), k < n,
        # which add up to v (Hermite's identity) and each fit -127..127; the weights repeat per part.
        # For B <= 254 the parts are floor(v / 2) and ceil(v / 2): the CPU path's halves (part 1, part 2).
        n = np.maximum(1, -(-self.in_max // ACT_MAX))
        self.split_src = np.repeat(np.arange(len(n)), n)
        self.split_add = np.concatenate([np.arange(k) for k in n]).astype(np.int64)
        self.split_div = np.repeat(n, n).astype(np.int64)
        self._t: dict = {}  # torch.device -> the int path's tensors there (``_int_params``)
        # The CPU path's uint8 input layout: channel src[j], whole (part 0) or halves (parts 1, 2) as above, so
        # every packed value fits -128..127, i.e. 0..255 with zero point 128.
        self.src = self.split_src
        self.part = np.where(self.split_div == 1, 0, 1 + self.split_add)
        # float32 accumulators (oneDNN's int8 convolution's output) are exact only below 2**24
        self.cpu_ok = bool(self.in_max.max() <= 254) and self.f32_ok
        self._cpu = None  # prepacked int8 weights over the packed input channels

    # ---------------- int path (torch; GPUs, and CPUs without an exact oneDNN int8 convolution) ----------------
    def _int_params(self, device=None):
        """The layer's int path tensors on ``device`` (default CPU), built once per device and checked there
        against the int64 reference before first use (``DeviceError`` if that device's kernels disagree)."""
        dev = torch.device("cpu") if device is None else torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # the key tensors report: cuda:N
            dev = torch.device("cuda", torch.cuda.current_device())
        t = self._t.get(dev)
        if t is None:
            w = self.w[:, self.split_src].reshape(self.w.shape[0], -1)  # (cout, K): columns in (part, dy, dx) order
            kp, np_ = _up(w.shape[1], ALIGN), _up(w.shape[0], ALIGN)
            wm = np.zeros((np_, kp), np.int8)
            wm[:w.shape[0], :w.shape[1]] = w
            half = np.left_shift(np.int64(1), self.sh - 1)
            i64 = [torch.from_numpy(np.ascontiguousarray(v, np.int64)).to(dev)
                   for v in (self.split_src, self.split_add, self.split_div, self.b, self.m, self.sh, half)]
            # (K, N) as the transpose of a row-major (N, K): the column-major operand cuBLAS's int8 GEMM wants
            t = (torch.from_numpy(wm).to(dev).t(), bool((self.split_div == 1).all()), *i64)
            self._t[dev] = t
            self._prove(dev)
        return t

    def _prove(self, dev: torch.device) -> None:
        """Run this layer on ``dev`` once on inputs at their bounds (borders, both signs, zeros) and compare with
        the int64 reference: a device whose int8 kernels or integer ops differ is refused before it codes."""
        g = np.random.default_rng(0)
        hi = self.in_max[None, :, None, None]
        x = g.integers(-hi, hi + 1, size=(2, len(self.in_max), 7, 5))
        x[0, :, :2] = hi[0]
        x[1, :, :2] = -hi[0]
        want = self.forward_numpy(x)
        got = self.forward_int(torch.from_numpy(x).to(dev, torch.int32)).cpu().numpy()
        if not np.array_equal(got, want):
            del self._t[dev]
            raise DeviceError(f"the integer convolution on {dev} differs from the int64 reference "
                              f"(torch {torch.__version__}): this device cannot code exactly; use device='cpu'")

    def forward_int(self, x: torch.Tensor, res: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on integer input ``x`` (N, cin, H, W), any integer-valued dtype, on any device: int32
        output (N, cout, H, W) (a channels-last view); with ``res`` the block's residual sum clip(res + out,
        0, 127). Output positions go through the int8 matrix product in chunks of at most INT_POSITIONS."""
        wt, whole, src, add, div, b, m, sh, half = self._int_params(x.device)
        x = x.to(torch.int32)
        parts = x[:, src] if whole else torch.div(x[:, src] + add[:, None, None], div[:, None, None],
                                                   rounding_mode="floor")
        n, c, h, w = parts.shape
        k, p, cout = self.k, self.k // 2, self.w.shape[0]
        xp = F.pad(parts.to(torch.int8), (p, p, p, p))
        lo, hi = (0, ACT_MAX) if self.mode == "relu" else (-self.out_clamp, self.out_clamp)
        out = torch.empty(n, h, w, cout, dtype=torch.int32, device=x.device)
        for i0, i1, y0, y1 in _chunks(n, h, w):
            rows = (i1 - i0) * (y1 - y0) * w
            cols = torch.zeros(max(rows, ALIGN + 1), wt.shape[0], dtype=torch.int8, device=x.device)
            taps = [xp[i0:i1, :, y0 + dy:y1 + dy, dx:dx + w] for dy in range(k) for dx in range(k)]
            cols[:rows, :c * k * k].view(i1 - i0, y1 - y0, w, c, k * k).copy_(
                torch.stack(taps, dim=2).permute(0, 3, 4, 1, 2))
            acc = torch._int_mm(cols, wt)[:rows, :cout].long()
            q = ((acc + b) * m + half).bitwise_right_shift_(sh).clamp_(lo, hi)
            out[i0:i1, y0:y1] = q.view(i1 - i0, y1 - y0, w, cout)
        out = out.permute(0, 3, 1, 2)
        return out if res is None else (out + res).clamp_(0, ACT_MAX)

    # ---------------- CPU path ----------------
    def _need_cpu_ok(self) -> None:
        if not self.cpu_ok:
            raise ValueError("this layer's inputs (bounds above 254) or sums (2**24 and more) need the int path")

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """A float input (N, cin, H, W) holding integers within ``in_max`` as this layer's uint8 input, zero
        point 128 (``forward_cpu(.., zp=128)``), channels-last."""
        self._need_cpu_ok()
        n, _, h, w = x.shape
        out = torch.empty(n, len(self.src), h, w, dtype=torch.uint8, memory_format=torch.channels_last)
        if not _pack(x.contiguous().numpy(), self.src, self.part, out.permute(0, 2, 3, 1).numpy()):
            raise ValueError("network input outside the layer's bounds")
        return out

    def forward_cpu(self, a: torch.Tensor, zp: int = 0, res: torch.Tensor | None = None,
                    dtype=torch.uint8) -> torch.Tensor:
        """The layer on uint8 input ``a`` (values + ``zp``; the previous layer's activations have zp 0, ``pack``
        gives zp 128): the accumulators from oneDNN's int8 convolution (or a float convolution where
        ``qconv_ok`` is false), then one integer requantization pass. Returns a channels-last ``dtype`` tensor
        (uint8 for 'relu' layers; with ``res``, the block's residual sum clip(res + out, 0, 127)). Channels-last
        stays: torch's copy to the default layout costs more than the layer."""
        self._need_cpu_ok()
        if not qconv_ok():
            raise ValueError("this torch has no exact oneDNN int8 convolution here: use forward_int")
        if self._cpu is None:
            self._cpu = _prepack(torch.from_numpy(np.ascontiguousarray(self.w[:, self.src])))
        acc = _qconv(a, self._cpu, zp, self.k // 2)
        acc = acc.contiguous(memory_format=torch.channels_last)  # a no-op for oneDNN's output
        n, c, h, w = acc.shape
        out = torch.empty((n, c, h, w), dtype=dtype, memory_format=torch.channels_last)
        lo, hi = (0, ACT_MAX) if self.mode == "relu" else (-self.out_clamp, self.out_clamp)
        r = _NO_RES if res is None else _rows(res)
        _requant(_rows(acc), self.b, self.m, self.sh, lo, hi, r, _rows(out))
        return out

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


def run_trunk(layers: dict, blocks: int, inp: torch.Tensor, heads: tuple, dtype=torch.float32) -> tuple:
    """The integer network shape both learned codecs use: ``conv_in``, ``blocks`` residual blocks (``b{i}.c1``
    relu, ``b{i}.c2`` signed, added to the block input and clipped to 0..127), then the 1x1 ``heads``; returns the
    heads' outputs as ``dtype`` (integers). On a CPU with an exact oneDNN int8 convolution the uint8 path
    (``forward_cpu``), elsewhere the int path (``trunk_int``); the integers are the same."""
    if inp.device.type != "cpu" or not qconv_ok() or not all(layer.cpu_ok for layer in layers.values()):
        return trunk_int(layers, blocks, inp, heads, dtype)
    a = layers["conv_in"].forward_cpu(layers["conv_in"].pack(inp), zp=128)
    for i in range(blocks):
        a = layers[f"b{i}.c2"].forward_cpu(layers[f"b{i}.c1"].forward_cpu(a), res=a)
    return tuple(layers[h].forward_cpu(a, dtype=dtype) for h in heads)


def trunk_int(layers: dict, blocks: int, inp: torch.Tensor, heads: tuple, dtype=torch.float32) -> tuple:
    """``run_trunk``'s int path (any device)."""
    a = layers["conv_in"].forward_int(inp)
    for i in range(blocks):
        a = layers[f"b{i}.c2"].forward_int(layers[f"b{i}.c1"].forward_int(a), res=a)
    return tuple(layers[h].forward_int(a).to(dtype) for h in heads)


def _up(n: int, k: int) -> int:
    return -(-n // k) * k


def _chunks(n: int, h: int, w: int):
    """(image start, image end, row start, row end) covering n images of h x w, each chunk at most
    INT_POSITIONS output positions (at least one row)."""
    per_img = h * w
    if per_img <= INT_POSITIONS:
        step = INT_POSITIONS // per_img
        for i in range(0, n, step):
            yield i, min(n, i + step), 0, h
        return
    rows = max(1, INT_POSITIONS // w)
    for i in range(n):
        for y in range(0, h, rows):
            yield i, i + 1, y, min(h, y + rows)


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


def import_conv(layer: QConv2d, ic: IntConv) -> None:
    """The inverse of ``export_conv``: set ``layer``'s float weights so that it fake-quantizes to ``ic`` (the
    requantization ratio m / 2**sh gives the weight scale to 15 bits). Lets training go on from shipped integer
    weights when the float checkpoint is gone; exporting the result gives ``ic`` back (tests/test_mspsm.py)."""
    if ic.w.shape != tuple(layer.weight.shape):
        raise ValueError(f"integer layer {ic.w.shape} does not fit {tuple(layer.weight.shape)}")
    with torch.no_grad():
        ratio = torch.from_numpy(ic.m.astype(np.float64) * np.exp2(-ic.sh.astype(np.float64)))
        sw = ratio * layer.out_step.double() / layer.in_step
        gain = layer.gain.double()
        layer.weight.copy_(torch.from_numpy(ic.w.astype(np.float64)) * (sw / gain)[:, None, None, None])
        layer.bias.copy_(torch.from_numpy(ic.b.astype(np.float64)) * sw * layer.in_step / gain)
