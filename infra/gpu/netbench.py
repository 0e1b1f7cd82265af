"""Network-only throughput of a learned profile's integer network on a device (the int path), in the shapes a
batched coder would feed it: the ceiling for coding speed there once everything around the network keeps up.

    python infra/gpu/netbench.py [cuda] [--json]

Reports output positions per second and the image megapixels per second they are worth (an mspsm image of P
pixels costs P * groups / 4 * (1 + 1/4 + 1/16 ...) network positions)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from pixark.codec.mspsm import load_profile, model as M
from pixark.codec.nn import quant


def bench(device: str, shapes=((1, 128), (8, 256), (32, 256), (16, 512), (64, 512)), repeat: int = 5) -> list:
    net, model_id = load_profile(M.DEFAULT_PROFILE)
    p = net.p
    per_pixel = p.groups / 4 * sum(4.0 ** -i for i in range(p.scales))
    hi = torch.from_numpy(M.input_max(p))[None, :, None, None]
    g = torch.Generator().manual_seed(0)
    rows = []
    for b, s in shapes:
        x = ((torch.rand(b, len(hi[0]), s, s, generator=g) * 2 - 1) * hi).round().to(device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        quant.trunk_int(net.layers, p.blocks, x, ("head_p", "head_z"))  # per-device set-up and check
        sync()
        t = time.perf_counter()
        for _ in range(repeat):
            quant.trunk_int(net.layers, p.blocks, x, ("head_p", "head_z"))
        sync()
        dt = (time.perf_counter() - t) / repeat
        pos = b * s * s
        rows.append({"batch": b, "side": s, "seconds": round(dt, 5), "mpositions_per_s": round(pos / dt / 1e6, 2),
                     "image_mps_equiv": round(pos / dt / per_pixel / 1e6, 2), "profile": M.DEFAULT_PROFILE,
                     "model_id": model_id[:12], "device": device})
    return rows


if __name__ == "__main__":
    dev = next((a for a in sys.argv[1:] if not a.startswith("--")), "cuda")
    out = bench(dev)
    print(json.dumps(out, indent=1) if "--json" in sys.argv else
          "\n".join(f"{r['batch']:>3} x {r['side']}^2: {r['mpositions_per_s']:>8} Mpos/s = "
                    f"{r['image_mps_equiv']:>7} image MP/s" for r in out))
