"""The network shape both learned codecs build on, in its two forms: ``TrunkNet`` (float, fake-quantized, for
training) and ``IntTrunk`` (the exported integers that code). A 3x3 ``conv_in`` (ReLU), ``blocks`` residual
blocks of two 3x3 convolutions (ReLU, then signed, added to the block input and clipped to 0..127), and 1x1
heads named by the codec. A codec subclasses both, naming its heads, its input bounds and its profile type; the
integer layers are stored as ``conv_in``, ``b{i}.c1``, ``b{i}.c2`` and the heads' names (``quant.IntConv``)."""

from __future__ import annotations

import ast
from dataclasses import MISSING, asdict, fields

import numpy as np
import torch
import torch.nn as nn

from .quant import ACT_MAX, ACT_STEP, IN_STEP, W_MAX, IntConv, QConv2d, bf16_trunk, export_conv, import_conv, \
    run_trunk


class TrunkNet(nn.Module):
    """Float training form: ``conv_in`` and ``blocks``; subclasses add their heads (attributes named in
    ``HEADS``) and call ``trunk`` in ``forward``."""

    HEADS: tuple[str, ...] = ()

    def __init__(self, p, n_in: int):
        super().__init__()
        self.p = p
        self.bf16 = False  # training option (pixark train --bf16, quant.bf16_trunk)
        c = p.channels
        self.conv_in = QConv2d(n_in, c, 3, IN_STEP, ACT_STEP, "relu")
        self.blocks = nn.ModuleList()
        for _ in range(p.blocks):
            self.blocks.append(nn.ModuleList([QConv2d(c, c, 3, ACT_STEP, ACT_STEP, "relu"),
                                              QConv2d(c, c, 3, ACT_STEP, ACT_STEP, "signed")]))

    def trunk(self, inp: torch.Tensor) -> torch.Tensor:
        """The activations the heads read (float32; the convolutions in bfloat16 with ``bf16``)."""
        with bf16_trunk(inp, self.bf16):
            a = self.conv_in(inp * IN_STEP)
            for c1, c2 in self.blocks:
                a = (a + c2(c1(a))).clamp(0, ACT_MAX * ACT_STEP)
        return a.float()  # the heads stay float32 (bf16_trunk)

    def layers(self) -> list[tuple[str, QConv2d]]:
        """Each integer layer's name with its training layer."""
        blocks = [(f"b{i}.c{j + 1}", c) for i, blk in enumerate(self.blocks) for j, c in enumerate(blk)]
        return [("conv_in", self.conv_in), *blocks, *((h, getattr(self, h)) for h in self.HEADS)]


class IntTrunk:
    """Exported integer form. Subclasses set ``NET`` (their ``TrunkNet``), ``PROFILE`` (their profile dataclass)
    and ``input_max(p)``; ``__call__`` is the fast path (``quant.run_trunk``), ``reference`` the int64 numpy
    path; both return the heads' outputs in ``NET.HEADS`` order."""

    NET: type = TrunkNet
    PROFILE: type = object
    OUT_DTYPE = torch.float32

    def __init__(self, p, layers: dict[str, IntConv]):
        self.p = p
        self.layers = layers

    @staticmethod
    def input_max(p) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def names(cls, p) -> list[str]:
        return ["conv_in"] + [f"b{i}.c{j}" for i in range(p.blocks) for j in (1, 2)] + list(cls.NET.HEADS)

    @classmethod
    def from_net(cls, net: TrunkNet) -> "IntTrunk":
        return cls(net.p, {n: export_conv(c, cls.input_max(net.p) if n == "conv_in" else ACT_MAX)
                           for n, c in net.layers()})

    def to_net(self) -> TrunkNet:
        """A training network that fake-quantizes to these integers (``import_conv``): training goes on from
        shipped weights (``pixark train --init <weights.npz>``)."""
        net = self.NET(self.p)
        for n, c in net.layers():
            import_conv(c, self.layers[n])
        return net

    def to_arrays(self) -> dict:
        out = {}
        for k, v in self.layers.items():
            out.update(v.to_arrays(k))
        out["profile"] = np.array(repr(asdict(self.p)))
        return out

    @classmethod
    def from_arrays(cls, p, arrs) -> "IntTrunk":
        """The network of profile ``p`` from a weights file's arrays, each checked against the shape the profile
        gives it (ValueError naming the first that does not fit)."""
        with torch.device("meta"):  # shapes only: nothing allocated
            shapes = {n: tuple(c.weight.shape) for n, c in cls.NET(p).layers()}
        return cls(p, {n: _int_conv(arrs, n, shapes[n]) for n in cls.names(p)})

    @classmethod
    def profile_from(cls, text: str, limits: dict):
        """The profile recorded in a weights file (``repr`` of its fields), read as a literal, never run: its
        fields the profile type's (those with defaults may be missing), each of the field's type and, for numbers, within ``limits``
        (name -> (lo, hi)). ValueError otherwise."""
        try:
            d = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise ValueError(f"the profile is not a literal ({type(e).__name__})") from None
        want = {f.name: f.type for f in fields(cls.PROFILE)}
        need = {f.name for f in fields(cls.PROFILE) if f.default is MISSING}  # older files lack newer fields
        if not isinstance(d, dict) or not need <= set(d) <= set(want):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"the profile has fields {got}; it needs {sorted(need)} and may have {sorted(want)}")
        types = {"int": int, "str": str, "bool": bool, "float": (float, int)}
        for k, v in d.items():
            t = types[want[k] if isinstance(want[k], str) else want[k].__name__]
            if not isinstance(v, t) or (t is int and isinstance(v, bool)):
                raise ValueError(f"profile field {k} is {type(v).__name__}, not {want[k]}")
            lo, hi = limits.get(k, (None, None))
            if lo is not None and not lo <= v <= hi:
                raise ValueError(f"profile field {k} = {v} is outside {lo}..{hi}")
            if isinstance(v, str) and len(v) > 1000:
                raise ValueError(f"profile field {k} is too long")
        return cls.PROFILE(**d)

    def on_device(self, device) -> "IntTrunk":
        """This network with its layers' torch tensors also copied to ``device`` (e.g. 'cuda') now rather than on
        first use. Each layer keeps one copy per device and picks the one its input is on, so the same network
        serves the CPU and GPUs (the coders' ``device`` argument; ``quant``'s integer path)."""
        for conv in self.layers.values():
            conv._int_params(device)
        return self

    def run(self, inp: torch.Tensor) -> tuple:
        return run_trunk(self.layers, self.p.blocks, inp, self.NET.HEADS, self.OUT_DTYPE)

    def run_reference(self, inp: np.ndarray) -> tuple:
        L = self.layers
        a = L["conv_in"].forward_numpy(inp)
        for i in range(self.p.blocks):
            a = np.clip(a + L[f"b{i}.c2"].forward_numpy(L[f"b{i}.c1"].forward_numpy(a)), 0, ACT_MAX)
        return tuple(L[h].forward_numpy(a) for h in self.NET.HEADS)


def count_params(net: nn.Module) -> int:
    return sum(t.numel() for t in net.parameters())


def _int_conv(arrs, name: str, shape: tuple) -> IntConv:
    """One integer layer from a weights file's arrays, its types, shapes and ranges checked first."""
    cout, cin = shape[:2]
    want = {"w": (shape, "i"), "b": ((cout,), "i"), "m": ((cout,), "i"), "sh": ((cout,), "i"),
            "inmax": ((cin,), "i"), "clamp": ((), "i"), "mode": ((), "U")}
    for key, (shp, kind) in want.items():
        a = arrs.get(f"{name}.{key}")
        if a is None:
            raise ValueError(f"layer {name} has no {key}")
        a = np.asarray(a)
        if a.shape != shp or a.dtype.kind != kind:
            raise ValueError(f"layer {name}.{key} is {a.dtype} {a.shape}, not {kind} {shp}")
    g = {key: np.asarray(arrs[f"{name}.{key}"]) for key in want}
    checks = [(np.abs(g["w"]).max(initial=0) <= W_MAX, "weights beyond +-127"),
              (((g["m"] >= 1) & (g["m"] < 1 << 15)).all(), "multipliers outside 1..2**15-1"),
              (((g["sh"] >= 1) & (g["sh"] <= 62)).all(), "shifts outside 1..62"),
              (((g["inmax"] >= 0) & (g["inmax"] <= 1 << 15)).all(), "input bounds outside 0..2**15"),
              (np.abs(g["b"]).max(initial=0) < 1 << 40, "biases beyond 2**40"),
              (0 <= int(g["clamp"]) <= 1 << 15, "clamp outside 0..2**15"),
              (str(g["mode"]) in ("relu", "signed"), "mode not relu or signed")]
    for ok, what in checks:
        if not ok:
            raise ValueError(f"layer {name}: {what}")
    return IntConv.from_arrays(arrs, name)
