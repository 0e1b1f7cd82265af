"""Export a trained msr network to integer weights plus a model card whose dev numbers come from the real coder
(``pixark train --codec msr --export-only``)."""

from __future__ import annotations

import os
import time

import numpy as np

from ..training.data import list_images, load_rgb
from . import model as M


def save_weights(net: M.Net, weights_path: str) -> str:
    return M.STORE.save(M.IntNet.from_net(net), weights_path)  # an earlier version there is retired


def measure(inet: M.IntNet, dirs: list[str], q: int = 90, k: int = 5, T: int = 4, limit: int | None = None) -> dict:
    """Real stream sizes (and a decode check) per dev folder."""
    from . import coder

    out = {}
    for d in dirs:
        files = list_images(d)[:limit]
        bits = sub = 0
        t_enc = t_dec = 0.0
        for f in files:
            x = load_rgb(f)
            t0 = time.perf_counter()
            payload = coder.encode(x, inet, q, k, T)
            t1 = time.perf_counter()
            back = coder.decode(payload, inet)
            t2 = time.perf_counter()
            if not np.array_equal(back, x):
                raise AssertionError(f"round trip failed on {f}")
            bits += 8 * len(payload)
            sub += x.size
            t_enc += t1 - t0
            t_dec += t2 - t1
        if files:
            out[os.path.basename(d.rstrip("/"))] = {
                "images": len(files), "bpsp_payload": round(bits / sub, 4),
                "encode_mps": round(sub / 3e6 / t_enc, 3), "decode_mps": round(sub / 3e6 / t_dec, 3)}
    return out


def write_card(card_path: str, profile: str, model_id: str, info: dict, dev: dict, q: int, k: int, T: int) -> None:
    p = M.PROFILES[profile]
    lines = [
        f"# msr-{profile} model card", "",
        f"- codec: `msr`, profile `{profile}` ({p.note})",
        f"- model id (sha256 of the .npz): `{model_id}`",
        f"- network: {M.count_params(p)} parameters, {M.macs_per_pixel(p):.0f} MACs per pixel per iteration; "
        "int8 weights, 7-bit activations, integer requantization (codec/nn/quant.py)",
        f"- training data: {info.get('data')} (random {info.get('crop')}x{info.get('crop')} crops, flips and "
        "transposes; WebP base of each crop at a random quality 75..100; random k in 4..6, T in 1..8)",
        f"- training: {info.get('steps')} steps, batch {info.get('batch')}, Adam lr {info.get('lr')} cosine decay, "
        f"{info.get('minutes', 0):.1f} minutes on 1 thread of a shared 2-core CPU (niced)",
        f"- training-loop dev estimate (8 centre crops, float model): {info.get('dev_bpsp_est')}",
        "", f"## Dev bits per subpixel with the real coder (q={q}, k={k}, T={T}; payload only, container adds "
        "~0.5 kB per image)", "",
        "| set | images | bpsp | encode MP/s | decode MP/s |", "|---|---|---|---|---|"]
    for name, r in dev.items():
        lines.append(f"| {name} | {r['images']} | {r['bpsp_payload']} | {r['encode_mps']} | {r['decode_mps']} |")
    lines += ["", "Every image round-tripped bit-exact. Full benchmarks and where msr wins or loses: docs/MSR.md.", ""]
    with open(card_path, "w") as f:
        f.write("\n".join(lines))


def export_weights(profile, net, weights_path, card_path, dev_dirs, info, q=90, k=5, T=4, limit=None) -> dict:
    model_id = save_weights(net, weights_path)
    inet, _ = M.STORE.read(weights_path, profile)
    dev = measure(inet, dev_dirs, q, k, T, limit)
    write_card(card_path, profile, model_id, info, dev, q, k, T)
    return {"model_id": model_id, "dev": dev}

