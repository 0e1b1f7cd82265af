"""How much fine-tuning the default mspsm on one set of photos gains on that kind of photo (issue 21's question):
train PART of the shipped network on random crops of half a set (the even-numbered files), then measure the float
training loss (bits per subpixel) on 256x256 centre crops of both halves before and after; with ``--real``, also
code the held-out half with the real integer coder (payload version 4, with its per-image corrections) before and
after, and give the adapted weights file's size, whole and as a difference from the shipped weights.

    nice python infra/adapt_probe.py SET --part all --steps 300 --lr 3e-4 [--real]

PART: ``all`` (every parameter), ``head`` (the two output layers and every bias), ``inhead`` (those and the input
layer). One thread, batch 8 of 128x128 crops with the 8 symmetries, cosine-decayed learning rate.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch

from pixark.codec.mspsm import coder, model as M
from pixark.codec.training.data import CropSampler, Loader, list_images, load_rgb

PARTS = {
    "all": lambda n: True,
    "head": lambda n: n.startswith("head_") or n.endswith("bias"),
    "inhead": lambda n: n.startswith(("head_", "conv_in")) or n.endswith("bias"),
}


def centre_crops(paths: list[str], size: int = 256) -> torch.Tensor:
    out = []
    for q in paths:
        im = load_rgb(q)
        y, x = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
        out.append(im[y:y + size, x:x + size])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


def real_bpsp(net, paths: list[str]) -> float:
    bits = sub = 0
    for q in paths:
        px = load_rgb(q)
        bits += 8 * len(coder.encode(net, px, tile=coder.balanced_tile(*px.shape[:2], coder.DEFAULT_TILE)))
        sub += px.size
    return bits / sub


def npz_bytes(arrays: dict) -> int:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return len(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set")
    ap.add_argument("--part", choices=sorted(PARTS), default="all")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--real", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base, _ = M.STORE.load(M.DEFAULT_PROFILE)
    net = base.to_net()
    chosen = PARTS[a.part]
    params = [t for n, t in net.named_parameters() if chosen(n)]
    for n, t in net.named_parameters():
        t.requires_grad_(chosen(n))
    paths = list_images(a.set)
    fit, held = paths[0::2], paths[1::2]
    crops = {"fit": centre_crops(fit), "held": centre_crops(held)}
    loss_fn = M.Trainer(base.p, net)

    def estimate(x):
        net.eval()
        with torch.no_grad():
            v = float(sum(loss_fn(x[i:i + 4]) * len(x[i:i + 4]) for i in range(0, len(x), 4)) / len(x))
        net.train()
        return v

    before = {k: estimate(v) for k, v in crops.items()}
    loader = Loader(CropSampler(fit, 128), a.batch, 0, 0)
    opt = torch.optim.Adam(params, lr=a.lr)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        for g in opt.param_groups:
            g["lr"] = a.lr * 0.5 * (1 + np.cos(np.pi * step / a.steps))
        loss = loss_fn(loader.next())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    seconds = time.time() - t0
    after = {k: estimate(v) for k, v in crops.items()}
    out = {"set": a.set, "part": a.part, "steps": a.steps, "lr": a.lr, "batch": a.batch, "train_seconds": round(seconds),
           "trainable": sum(t.numel() for t in params), "fit_images": len(fit), "held_images": len(held),
           **{f"float_{k}": [round(before[k], 4), round(after[k], 4), round(after[k] / before[k] - 1, 4)]
              for k in crops}}
    if a.real:
        adapted = M.IntNet.from_net(net.eval())
        r0, r1 = real_bpsp(base, held), real_bpsp(adapted, held)
        new, old = adapted.to_arrays(), base.to_arrays()
        delta = {k: (v.astype(np.int64) - old[k].astype(np.int64)) for k, v in new.items() if v.dtype.kind in "iu"}
        out.update(real_held=[round(r0, 4), round(r1, 4), round(r1 / r0 - 1, 4)], model_bytes=npz_bytes(new),
                   delta_bytes=npz_bytes(delta), held_megapixels=round(sum(load_rgb(q).size for q in held) / 3e6, 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
