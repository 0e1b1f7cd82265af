"""MSPSM: multi-scale progressive statistical model (profiles, network, and the one pipeline shared by training,
encoding and decoding).

Geometry. Scale 0 is the image (tile). Scale i (size H_i x W_i) is padded by edge replication to even size
2h x 2w and x^(i+1) = padded[1::2, 1::2] (size h x w). x^(M) is coded with a uniform model. Scales are coded
coarse to fine; inside a scale the three other phases of every 2x2 block, (0,0), (0,1), (1,0), are coded in
groups (pattern 'a': 3 groups by phase as in Fig. 3a; 'b': 6 groups with a 2x4 period as Fig. 3b; 'random':
seeded; 'dynamic': hardest first by the integer entropy bound). The network works in space-to-depth form on
the h x w grid: inputs are the 4 phases of x-hat (true values where known, integer neighbour-average
prediction elsewhere), the 4 phase masks, a scale channel and the context z of the previous stage (at the start
of a scale: the last context of the coarser scale, nearest-upsampled), and with error feedback (profile cpu-fb)
the errors of this scale's subpixels coded so far (cpu-fb2: and, at the known pixels, the errors they had at the
coarser scale). It outputs, for each of the 3 unknown
phases, distribution parameters and the next context.

Distribution (K = 1, the coded path). Per subpixel: integer mean mu16 (1/16 pixel) =
base16 (neighbour average of known pixels, 1/16 px) + off + channel coupling (G: alpha*eR, B: beta*eR + gamma*eG,
coefficients in 1/64, e = 16*x - mu16 of the earlier channel, rounded by floor((v + 32) / 64));
mu16 clamped to 0..4080, c = floor((mu16 + 8) / 16), f = mu16 - 16 c in -8..7, scale index s in 0..63.
The symbol is d = (x - c) mod 256, coded with the stored integer table freq[s, f + 8] (codec/tables).
Training uses the same integers with straight-through rounding; the forward loss is the table's code length.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .. import modelstore
from ..adapt import CostBank
from ..entropy import bank
from ..nn import intnet
from ..nn.intnet import IntTrunk, TrunkNet
from ..nn.quant import QConv2d, floor_ste, ACT_STEP

TABLES_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tables", "logistic256.npz")

PHASES = [(0, 0), (0, 1), (1, 0), (1, 1)]  # space-to-depth order; phase 3 = (1,1) comes from the coarser scale
N_SCALE_IDX = 64
OFF_CLAMP = 4095
COUP_CLAMP = 255


@dataclass(frozen=True)
class Profile:
    name: str
    scales: int          # M: number of network-coded scales (x^(M) is coded uniform)
    grouping: str        # 'a', 'b', 'random', 'dynamic'
    channels: int        # C
    blocks: int          # residual blocks
    context: int         # channels of z
    mixtures: int        # K
    feedback: bool = False  # network input: the errors of this scale's subpixels coded so far (K = 1 only)
    carry: bool = False     # with feedback: each scale's error map starts with the coarser scale's errors
    batch: int = 8       # training batch (128x128 crops)
    lr: float = 2e-3
    note: str = ""

    @property
    def groups(self) -> int:
        return 6 if self.grouping == "b" else 3


PROFILES: dict[str, Profile] = {
    # CPU profiles (this project's design): space-to-depth, one shared small network, K = 1 (fast table bank path).
    "cpu": Profile("cpu", 6, "a", 48, 2, 16, 1, note="CPU profile, pattern (a), C=48, 2 blocks, K=1"),
    "cpu-b": Profile("cpu-b", 6, "b", 48, 2, 16, 1, note="CPU profile with pattern (b) (6 groups)"),
    "cpu-small": Profile("cpu-small", 6, "a", 32, 1, 16, 1,
                         note="smallest CPU profile, pattern (a), C=32, 1 block, K=1"),
    "cpu-fb": Profile("cpu-fb", 6, "a", 32, 1, 16, 1, feedback=True,
                      note="cpu-small plus error feedback (the network also sees this scale's coding errors so "
                           "far)"),
    "cpu-fb2": Profile("cpu-fb2", 6, "a", 32, 1, 16, 1, feedback=True, carry=True,
                       note="cpu-fb with the error map carried across scales (the known pixels bring the errors "
                            "they had at the coarser scale)"),
    "cpu-fb2-64": Profile("cpu-fb2-64", 6, "a", 64, 1, 16, 1, feedback=True, carry=True,
                          note="cpu-fb2 widened to C=64 (trained from cpu-fb2's weights, the new channels starting "
                               "unused)"),
    "cpu-fb2-96": Profile("cpu-fb2-96", 6, "a", 96, 1, 16, 1, feedback=True, carry=True,
                          note="default: cpu-fb2 widened to C=96 (trained from cpu-fb2-64's weights, the new "
                               "channels starting unused)"),
    "cpu-random": Profile("cpu-random", 6, "random", 48, 2, 16, 1, note="grouping study: random 3 groups"),
    "cpu-dynamic": Profile("cpu-dynamic", 6, "dynamic", 48, 2, 16, 1, note="grouping study: dynamic 3 groups"),
    # The paper's Table 3 profiles (GPU-sized; mixtures of K logistics).
    "normal": Profile("normal", 3, "a", 64, 3, 32, 5, batch=16, lr=2e-4, note="paper Table 3 normal"),
    "big": Profile("big", 3, "b", 64, 3, 32, 5, batch=16, lr=2e-4, note="paper Table 3 big"),
    "extra": Profile("extra", 4, "b", 128, 4, 32, 10, batch=8, lr=2e-4, note="paper Table 3 extra"),
}
# The best measured trade-off: on the dev sets its shipped weights code 1.3-2.4 % smaller than `cpu-fb2-64`'s
# (payload bytes, model cards), and with twice the network's multiply-accumulates it stays above 0.5 MP/s on 2
# cores (README: `pixark bench --workers 2`).
DEFAULT_PROFILE = "cpu-fb2-96"
_VARIANT_KEYS = {"scales": int, "grouping": str, "channels": int, "blocks": int, "context": int, "mixtures": int,
                 "feedback": lambda v: bool(int(v)), "carry": lambda v: bool(int(v))}


def resolve(spec: str) -> Profile:
    """A named profile, or a training variant of one for design studies: ``"cpu-small:grouping=b,scales=3"``.
    Variants train and evaluate like profiles but are never shipped (no weights path is registered for them)."""
    name, _, rest = spec.partition(":")
    if name not in PROFILES:
        raise ValueError(f"mspsm: unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    p = PROFILES[name]
    if not rest:
        return p
    kw = {}
    for item in rest.split(","):
        k, _, v = item.partition("=")
        if k not in _VARIANT_KEYS or not v:
            raise ValueError(f"mspsm: bad variant {item!r}; keys: {', '.join(_VARIANT_KEYS)}")
        kw[k] = _VARIANT_KEYS[k](v)
    if kw.get("grouping", p.grouping) not in ("a", "b", "random", "dynamic"):
        raise ValueError(f"mspsm: unknown grouping {kw['grouping']!r}")
    out = replace(p, name=spec, **kw)
    if out.feedback and out.mixtures > 1:
        raise ValueError("mspsm: error feedback is for K = 1 profiles")
    if out.carry and not out.feedback:
        raise ValueError("mspsm: carry needs feedback")
    return out


def n_inputs(p: Profile) -> int:
    return 12 + 4 + 1 + p.context + (12 if p.feedback else 0)


def n_params_out(p: Profile) -> int:
    return 3 * 10 * p.mixtures  # per unknown phase: K logits, 3K offsets, 3K scale indices, 3K couplings


def input_max(p: Profile) -> np.ndarray:
    return np.array([128] * 12 + [64] * 4 + [16 * p.scales] + [254] * p.context + [127] * (12 if p.feedback else 0),
                    np.int64)


def head_gain(p: Profile) -> torch.Tensor:
    k = p.mixtures
    per = [8.0] * k + [64.0] * 3 * k + [32.0] * 3 * k + [64.0] * 3 * k
    return torch.tensor(per * 3)


# ----------------------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------------------
class Net(TrunkNet):
    """Fake-quantized progressive prediction network (training form)."""

    HEADS = ("head_p", "head_z")

    def __init__(self, p: Profile):
        super().__init__(p, n_inputs(p))
        c = p.channels
        self.head_p = QConv2d(c, n_params_out(p), 1, ACT_STEP, 1.0, "signed", gain=head_gain(p))
        self.head_z = QConv2d(c, p.context, 1, ACT_STEP, ACT_STEP, "relu")
        with torch.no_grad():
            self.head_p.weight.mul_(0.05)
            k = p.mixtures
            b = torch.zeros(3, 10 * k)
            b[:, 4 * k:7 * k] = 28.0 / 32.0  # scale index ~28 (s ~ 2 pixels)
            if k > 1:  # spread the mixture scales
                for j in range(k):
                    b[:, 4 * k + j:7 * k:k] = (16.0 + 24.0 * j / (k - 1)) / 32.0
            # channel coupling (1/64 units): G += 0.75 eR, B += 0.375 eR + 0.5 eG
            b[:, 7 * k:8 * k], b[:, 8 * k:9 * k], b[:, 9 * k:10 * k] = 48 / 64.0, 24 / 64.0, 32 / 64.0
            self.head_p.bias.copy_(b.reshape(-1))

    def warm_start(self, state: dict) -> list[str]:
        """Start from another profile's trained weights (``state``: a state dict) with as many or more inputs,
        channels and residual blocks: each source tensor is copied into the leading part of its counterpart; inputs
        the source lacks (new network inputs, new channels) get zero weights, so new channels start unused;
        residual blocks the source lacks get their second convolution scaled down 64x. So the warm-started network
        first computes (almost) what the source did, and training only has to improve it.
        Returns the names of the parameters that were not (entirely) copied."""
        own, params = self.state_dict(), dict(self.named_parameters())
        copied, partial = set(), []
        with torch.no_grad():
            for name, v in state.items():
                t = own.get(name)
                if t is None or t.dim() != v.dim() or any(a < b for a, b in zip(t.shape, v.shape)) or \
                        (name not in params and t.shape != v.shape):  # buffers (gains, steps) fit the new shape
                    continue
                if name.endswith(".weight"):
                    t[:, v.shape[1]:] = 0  # inputs the source lacks start unused
                t[tuple(slice(0, n) for n in v.shape)] = v
                (copied.add if t.shape == v.shape else partial.append)(name)
            for i, (_, c2) in enumerate(self.blocks):
                if f"blocks.{i}.1.weight" not in copied | set(partial):
                    c2.weight.mul_(1 / 64)
                    c2.bias.zero_()
        return sorted(set(params) - copied - set(partial)) + [f"{n} (widened)" for n in partial]

    def forward(self, inp: torch.Tensor):
        a = self.trunk(inp)
        return self.head_p(a), self.head_z(a) / ACT_STEP  # head_p's out_step 1: already integer units


class IntNet(IntTrunk):
    """Exported integer network: ``__call__`` the fast path, ``reference`` the int64 numpy path; each returns
    (outputs P, next context z)."""

    NET = Net
    PROFILE = Profile

    @staticmethod
    def input_max(p: Profile) -> np.ndarray:
        return input_max(p)

    def __call__(self, inp: torch.Tensor):
        """Float32 holding integers (exact: every later use stays below 2**24)."""
        return self.run(inp)

    def reference(self, inp: np.ndarray):
        return self.run_reference(inp)


def count_params(p: Profile) -> int:
    return intnet.count_params(Net(p))


def macs_per_pixel(p: Profile) -> float:
    """Multiply-accumulates per full-resolution pixel (network only)."""
    c = p.channels
    per_cell = 9 * n_inputs(p) * c + p.blocks * 2 * 9 * c * c + c * (n_params_out(p) + p.context)
    # per scale: `groups` passes on a grid of 1/4 the pixels; scales shrink by 4
    return per_cell * p.groups / 4 * sum(4.0 ** -i for i in range(p.scales))


def _check_profile(p: Profile) -> None:
    if p.grouping not in ("a", "b", "random", "dynamic"):
        raise ValueError(f"unknown grouping {p.grouping!r}")
    if (p.feedback and p.mixtures > 1) or (p.carry and not p.feedback):
        raise ValueError("feedback is for K = 1 profiles, carry needs feedback")


# the shipped weights: codec/weights/mspsm-<profile>.npz (codec/modelstore.py)
STORE = modelstore.Store("mspsm", IntNet, PROFILES, check=_check_profile, limits={
    "scales": (1, 8), "channels": (1, 512), "blocks": (0, 16), "context": (1, 256), "mixtures": (1, 16),
    "batch": (0, 1 << 16), "lr": (0.0, 1.0)})


# ----------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------
_TABLES = None


def tables():
    global _TABLES
    if _TABLES is None:
        z = np.load(TABLES_PATH)
        freq = z["freq"].astype(np.int64)
        _TABLES = {"freq": freq, "scales": z["scales"], "s_min": float(z["s_min"]), "s_max": float(z["s_max"]),
                   "bits": torch.from_numpy(-np.log2(freq / 65536.0)).float(),
                   # validated once per process: coding uses ~40k short runs per megapixel
                   "bank": bank(freq.reshape(-1, 256)),
                   "cost": CostBank(freq, N_SCALE_IDX)}  # for the scale correction (codec/adapt.py)
    return _TABLES


# ----------------------------------------------------------------------------------------------------------
# pipeline pieces (all integer-valued; float32 in training is exact because every value is < 2**24)
# ----------------------------------------------------------------------------------------------------------
def pyramid_sizes(h: int, w: int, m: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    for _ in range(m):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def pad_even(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = h % 2, w % 2
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def s2d(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[:, :, py::2, px::2] for py, px in PHASES], dim=1)


def unknown_phases(t: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 3, C, h, w) for the three unknown phases."""
    return torch.stack([t[:, :, py::2, px::2] for py, px in PHASES[:3]], dim=1)


def base16(X: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Integer neighbour-average prediction in 1/16 pixel: mean of known 4-neighbours, else of known diagonal
    neighbours, else 128. X (B,3,H,W) pixel values, known (B,1,H,W) 0/1. Computed in float32, which is exact
    here (numerators below 2**15; a correctly rounded quotient by 1..4 floors to the integer quotient) and about
    three times faster than float64; returned in X's dtype."""
    dt = X.dtype
    known = known.float()
    V = F.pad(X.float() * known, (1, 1, 1, 1))
    K = F.pad(known, (1, 1, 1, 1))

    def cross(T):
        return T[..., :-2, 1:-1] + T[..., 2:, 1:-1] + T[..., 1:-1, :-2] + T[..., 1:-1, 2:]

    def diag(T):
        return T[..., :-2, :-2] + T[..., :-2, 2:] + T[..., 2:, :-2] + T[..., 2:, 2:]

    s4, n4, sd, nd = cross(V), cross(K), diag(V), diag(K)
    b4 = torch.floor((16 * s4 + torch.floor(n4 / 2)) / n4.clamp(min=1))
    bd = torch.floor((16 * sd + torch.floor(nd / 2)) / nd.clamp(min=1))
    return torch.where(n4 > 0, b4, torch.where(nd > 0, bd, torch.full_like(b4, 2048.0))).to(dt)


def net_input(p: Profile, X: torch.Tensor, known: torch.Tensor, b16: torch.Tensor, z: torch.Tensor, scale: int,
              err: torch.Tensor | None) -> torch.Tensor:
    """The network's input on the h x w grid: x-hat's 4 phases (known pixels, else the rounded neighbour
    average) - 128, the known mask's phases x 64, the scale, the context x 2, and with feedback the error map's
    phases (``err``, see ``feedback_errors``)."""
    fill = torch.where(known > 0, X, torch.floor((b16 + 8) / 16))
    parts = [s2d(fill) - 128, s2d(known) * 64, torch.full_like(z[:, :1], 16.0 * scale), z * 2]
    if p.feedback:
        parts.append(s2d(err))
    return torch.cat(parts, dim=1)


def start_errors(p: Profile, X: torch.Tensor, coarser: torch.Tensor | None) -> torch.Tensor | None:
    """The error map at the start of a scale (None without feedback): zero, except with ``carry`` at the known
    pixels (phase (1,1)), which get the errors they had at the coarser scale (``coarser``, that scale's map),
    so the first group already sees where the coarser picture was hard to predict."""
    if not p.feedback:
        return None
    err = torch.zeros_like(X)
    if p.carry and coarser is not None:
        h, w = err[:, :, 1::2, 1::2].shape[-2:]
        err[:, :, 1::2, 1::2] = coarser[:, :, :h, :w]
    return err


def feedback_errors(err: torch.Tensor, sel: torch.Tensor, e16: torch.Tensor, phases=(0, 1, 2)) -> None:
    """Add a just-coded group to the error map ``err`` (B,3,2h,2w), in place: its subpixels' errors 16 x - mu16
    (``e16``, (B,n,3col,h,w), 1/16 px, for the n unknown phases listed in ``phases``) in quarter pixels, rounded
    and clamped to +-127; zero where nothing of this scale has been coded (the known mask tells the network which
    pixels came from the coarser scale). In place is safe in training too: the network saw the map through
    ``net_input``'s concatenated copy."""
    q = torch.floor((e16 + 2) / 4).clamp(-127, 127)
    for k, ph in enumerate(phases):
        py, px = PHASES[ph]
        err[:, :, py::2, px::2] = torch.where(sel[:, ph][:, None], q[:, k], err[:, :, py::2, px::2])


def group_phases(sel: torch.Tensor) -> list[int]:
    """The unknown phases that a group's selection ``sel`` (B,3,h,w) touches (pattern a: one)."""
    return [ph for ph in range(3) if bool(sel[:, ph].any())]


def group_map(p: Profile, scale: int, h: int, w: int) -> torch.Tensor | None:
    """Static group index (3, h, w) of the three unknown phases, or None for dynamic grouping."""
    g = np.zeros((3, h, w), np.int64)
    if p.grouping == "a":
        g[0], g[1], g[2] = 0, 1, 2
    elif p.grouping == "b":
        odd = (np.arange(w) % 2 == 1)[None, :]
        g[0] = np.where(odd, 1, 4)   # phase (0,0): grid col odd -> group 2, even -> group 5 (Fig. 3b, 1-based)
        g[1] = np.where(odd, 3, 2)   # phase (0,1): odd -> 4, even -> 3
        g[2] = np.where(odd, 0, 5)   # phase (1,0): odd -> 1, even -> 6
    elif p.grouping == "random":
        rng = np.random.Generator(np.random.PCG64([7477, scale, h, w]))
        g = rng.integers(0, 3, size=(3, h, w), dtype=np.int64)
    elif p.grouping == "dynamic":
        return None
    else:
        raise ValueError(f"unknown grouping {p.grouping!r}")
    return torch.from_numpy(g)


def split_params(P: torch.Tensor, k: int):
    """P (B, 3*10k, h, w) -> logits (B,3,k,h,w), off/sidx (B,3,3col,k,h,w), coup (B,3,3,k,h,w)."""
    b, _, h, w = P.shape
    P = P.reshape(b, 3, 10 * k, h, w)
    logits = P[:, :, :k]
    off = P[:, :, k:4 * k].reshape(b, 3, 3, k, h, w).clamp(-OFF_CLAMP, OFF_CLAMP)
    sidx = P[:, :, 4 * k:7 * k].reshape(b, 3, 3, k, h, w).clamp(0, N_SCALE_IDX - 1)
    coup = P[:, :, 7 * k:10 * k].reshape(b, 3, 3, k, h, w).clamp(-COUP_CLAMP, COUP_CLAMP)
    return logits, off, sidx, coup


def channel_mu16(col: int, base: torch.Tensor, off: torch.Tensor, coup: torch.Tensor, e: list, fl):
    """Integer mean (1/16 px) of channel `col`, given the errors e of earlier channels."""
    mu = base + off[:, :, col]
    if col == 1:
        mu = mu + fl((coup[:, :, 0] * e[0] + 32) / 64)
    elif col == 2:
        mu = mu + fl((coup[:, :, 1] * e[0] + coup[:, :, 2] * e[1] + 32) / 64)
    return mu.clamp(0, 4080)


def dynamic_select(sidx: torch.Tensor, logits: torch.Tensor, remaining: torch.Tensor, n_groups_left: int):
    """Hardest-first selection: key = sum over channels of the scale index (of the most probable component),
    an integer monotone in the entropy bound of Eq. 11; ties by position (phase-major raster). Returns a bool
    mask (B,3,h,w) of the next group: ceil(remaining / groups_left) positions."""
    b, _, _, k, h, w = sidx.shape
    if k > 1:
        top = logits.argmax(dim=2, keepdim=True)  # (B,3,1,h,w)
        s = torch.gather(sidx, 3, top[:, :, None].expand(b, 3, 3, 1, h, w))[:, :, :, 0]
    else:
        s = sidx[:, :, :, 0]
    key = s.sum(dim=2).to(torch.float64)  # (B,3,h,w) 0..189
    n = 3 * h * w
    pos = torch.arange(n, dtype=torch.float64, device=sidx.device).reshape(1, 3, h, w)
    score = torch.where(remaining, key * (1 << 22) + (n - pos), torch.full_like(key, -1.0)).reshape(b, -1)
    out = torch.zeros(b, n, dtype=torch.bool, device=sidx.device)
    for i in range(b):
        r = int(remaining[i].sum())
        cnt = -(-r // n_groups_left)
        if cnt:
            idx = torch.topk(score[i], cnt).indices
            out[i, idx] = True
    return out.reshape(b, 3, h, w)


# ----------------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------------
class Trainer:
    """Bits of a training batch. x: (B,3,H,W) float pixel values 0..255. Returns bits per subpixel (tensor)."""

    def __init__(self, p: Profile, net):
        self.p, self.net = p, net
        t = tables()
        self.bits_tab = t["bits"]
        self.log_smin = math.log(t["s_min"])
        self.dlog = (math.log(t["s_max"]) - math.log(t["s_min"])) / (N_SCALE_IDX - 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        bsz, _, H, W = x.shape
        sizes = pyramid_sizes(H, W, p.scales)
        pyr = [x]
        for _ in range(p.scales):
            pyr.append(pad_even(pyr[-1])[:, :, 1::2, 1::2])
        dev = x.device
        total = torch.zeros((), dtype=torch.float32, device=dev)
        total = total + 8.0 * pyr[-1].numel()  # uniform coarsest scale
        z = err = None
        for i in reversed(range(p.scales)):
            h, w = sizes[i + 1]
            X = pad_even(pyr[i])
            known = torch.zeros(bsz, 1, 2 * h, 2 * w, device=dev)
            known[:, :, 1::2, 1::2] = 1
            z = torch.zeros(bsz, p.context, h, w, device=dev) if z is None else \
                z.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :h, :w]
            gmap_cpu = group_map(p, i, h, w)
            gmap = None if gmap_cpu is None else gmap_cpu.to(dev)
            xt = unknown_phases(X)  # (B,3ph,3col,h,w)
            remaining = torch.ones(bsz, 3, h, w, dtype=torch.bool, device=dev)
            err = start_errors(p, X, err)
            for j in range(p.groups):
                b16 = base16(X, known)
                P, z = self.net(net_input(p, X, known, b16, z, i, err))
                logits, off, sidx, coup = split_params(P, p.mixtures)
                if gmap is None:
                    sel = dynamic_select(sidx.detach(), logits.detach(), remaining, p.groups - j)
                else:
                    sel = (gmap == j)[None].expand(bsz, 3, h, w)
                # only the phases this group codes (pattern a: one): the same loss and gradients, less work
                ph = group_phases(sel) if gmap is None else \
                    [k for k in range(3) if bool((gmap_cpu[k] == j).any())]  # no device sync
                bits, e16 = self.group_bits(*(t[:, ph] for t in (unknown_phases(b16), xt, logits, off, sidx, coup)))
                total = total + (bits * sel[:, ph]).sum()
                remaining = remaining & ~sel
                if p.feedback:
                    feedback_errors(err, sel, e16.detach(), ph)
                # mark the group known
                selk = torch.zeros(bsz, 1, 2 * h, 2 * w, dtype=torch.bool, device=dev)
                for ph, (py, px) in enumerate(PHASES[:3]):
                    selk[:, 0, py::2, px::2] = sel[:, ph]
                known = torch.where(selk, torch.ones_like(known), known)
        return total / (bsz * H * W * 3)

    def _bits(self, device) -> torch.Tensor:
        """The code-length table on ``device`` (copied there once)."""
        if self.bits_tab.device != device:
            self.bits_tab = self.bits_tab.to(device)
        return self.bits_tab

    def group_bits(self, base, xt, logits, off, sidx, coup):
        k = self.p.mixtures
        base = base[:, :, :, None]  # (B,3ph,3col,1,h,w)
        xt = xt[:, :, :, None]
        e = []
        logp = 0.0
        for col in range(3):
            mu = channel_mu16(col, base[:, :, col], off, coup, e, floor_ste)  # (B,3,k,h,w)
            c = torch.floor((mu.detach() + 8) / 16)
            f = mu - 16 * c
            xv = xt[:, :, col]
            d = torch.remainder(xv - c, 256)
            ds = d - 256 * (d >= 128).float()
            s = sidx[:, :, col]
            scale = torch.exp(self.log_smin + self.dlog * s)
            t = ds - f / 16
            pc = torch.sigmoid((t + 0.5) / scale) - torch.sigmoid((t - 0.5) / scale)
            lp = torch.log2(pc.clamp_min(0) + 2.0 ** -17)
            if k == 1:
                tb = self._bits(d.device)[s.detach().long(), (f.detach() + 8).long(), d.long()]
                lp = lp + (-tb - lp).detach()
            logp = logp + lp
            e.append(16 * xv - mu)
        e16 = torch.cat(e, dim=2) if self.p.feedback else None  # (B,3ph,3col,h,w): the errors for feedback
        if k == 1:
            return -logp[:, :, 0], e16
        lw = torch.log_softmax(logits / 8.0, dim=2) / math.log(2)
        return -torch.logsumexp((logp + lw) * math.log(2), dim=2) / math.log(2), e16
