"""Export a trained network to its integer weights file and model card, measuring dev with the real coder.

Weights file codec/weights/mspsm-<profile>.npz (``model.STORE``, codec/modelstore.py) holds the integer layers
(int8 weights, integer biases, multipliers and shifts) and the profile; the model id is the sha256 of the file's
bytes. Earlier versions are kept under codec/weights/retired/.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..training.data import list_images, load_rgb
from . import model as M

def measure(net: M.IntNet, paths: list[str], tile: int | None = None, verify: bool = True, log=None) -> dict:
    """Real coded size (payload bytes) and speed on images, tiled as the codec tiles them (default: the codec's
    tile); every round trip checked when verify."""
    from . import coder
    tile = tile or coder.DEFAULT_TILE
    bits = 0
    subpx = 0
    t_enc = t_dec = 0.0
    per = []
    for pth in paths:
        px = load_rgb(pth)
        t0 = time.time()
        payload = coder.encode(net, px, tile=coder.balanced_tile(*px.shape[:2], tile))
        t1 = time.time()
        t_enc += t1 - t0
        if verify:
            back = coder.decode(net, payload)
            t_dec += time.time() - t1
            if not np.array_equal(back, px):
                raise AssertionError(f"round trip failed on {pth}")
        b = 8 * len(payload)
        bits += b
        subpx += px.size
        per.append((os.path.basename(pth), b / px.size))
        if log:
            log(f"{pth}: {b / px.size:.4f} bpsp")
    mp = subpx / 3 / 1e6
    return {"images": len(paths), "bpsp": bits / max(subpx, 1), "enc_mps": mp / max(t_enc, 1e-9),
            "dec_mps": (mp / t_dec) if verify and t_dec else None, "per_image": per}


def export_weights(profile: str, net, weights_file: str, card_path: str, dev_dirs: list[str], info: dict,
                   limit: int | None = None, log=print) -> dict:
    """Export a trained torch Net to the integer weights file, measure every dev image with the real coder
    (round trip checked) and write the model card."""
    model_id = M.STORE.save(M.IntNet.from_net(net), weights_file)  # an earlier version there is retired
    inet, _ = M.STORE.read(weights_file, profile)
    res = {"model_id": model_id, "params": M.count_params(inet.p), "macs_per_pixel": M.macs_per_pixel(inet.p)}
    for d in dev_dirs:
        paths = list_images(d)[:limit] if limit else list_images(d)
        if paths:
            r = measure(inet, paths, log=log)
            res[os.path.basename(d.rstrip("/"))] = {k: v for k, v in r.items() if k != "per_image"}
    p = inet.p
    lines = [f"# mspsm-{profile}", "",
             f"Profile `{profile}`: {p.note}. Scales M={p.scales}, grouping {p.grouping} ({p.groups} groups), "
             f"C={p.channels}, {p.blocks} residual blocks, context {p.context} channels, K={p.mixtures}.",
             f"Parameters: {res['params']:,}; network multiply-accumulates per pixel: {res['macs_per_pixel']:,.0f}.",
             f"Model id (sha256 of the weights file): `{model_id}`", "",
             "## Training", "",
             f"- data: {info.get('data')} (random {info.get('crop')}x{info.get('crop')} crops, flips, transposes)",
             *([f"- trained as `{info['trained_as']}` (the same model)"] if info.get("trained_as") else []),
             *([f"- warm start from {info['init']}"] if info.get("init") else []),
             f"- steps: {info.get('steps')}, batch {info.get('batch')}, Adam lr {info.get('lr')} cosine-decayed, "
             f"training time {float(info.get('minutes') or 0):.1f} min on 2 shared CPU cores",
             f"- last training loss (25-step mean): {info.get('train_loss_last')}; float estimate on 8 dev centre "
             f"crops: {info.get('dev_bpsp_est')}",
             f"- dev images measured per set: {info.get('measure_limit') or 'all'}", "",
             "## Dev results (real integer coder, payload bytes, every image round-tripped bit-exact)", "",
             "| set | images | bpsp | encode MP/s | decode MP/s |", "|---|---|---|---|---|"]
    for k, v in res.items():
        if isinstance(v, dict):
            lines.append(f"| dev/{k} | {v['images']} | {v['bpsp']:.4f} | {v['enc_mps']:.3f} | "
                         f"{(v['dec_mps'] or 0):.3f} |")
    lines += ["", "Speeds measured with the codec's default tiling while other jobs shared the 2 cores: indicative "
              "only.", ""]
    with open(card_path, "w") as f:
        f.write("\n".join(lines))
    return res
