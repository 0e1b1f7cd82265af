"""Design study for mspsm (the direction of the paper's Tables 1 and 2 on our dev set, with small models).

    python -m pixark.jobs.ablation --out /work/runs/ablation --steps 1000 --dev ../shared/data/dev

Trains one small variant per grouping method (3 network-coded scales) and per number of scales (pattern a), all
with the same data, seed, steps and schedule, then measures each on every dev image with the training model's
exact code length (the K=1 path charges the stored integer table's bits, as the coder does). Each variant trains
in its own run directory, so an interrupted study resumes where it stopped. Prints a markdown table and writes
``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from pixark.codec.training import checkpoint, list_images, load_rgb, train

BASE = "cpu-small"
GROUPING = [f"{BASE}:scales=3,grouping={g}" for g in ("random", "a", "b", "dynamic")]
SCALES = [f"{BASE}:scales={m},grouping=a" for m in (2, 3, 4, 5)]


def variants() -> list[str]:
    return list(dict.fromkeys(GROUPING + SCALES))


def run_dir(out: str, spec: str) -> str:
    return os.path.join(out, spec.replace(":", "_").replace(",", "_").replace("=", ""))


def evaluate(spec: str, ckpt: str, dev: str) -> dict:
    """Bits per subpixel per dev set (total bits / total subpixels), every image whole."""
    from pixark.codec.mspsm import model as M

    p = M.resolve(spec)
    net = M.Net(p)
    checkpoint.fit(net, checkpoint.load(ckpt)[1], ckpt)
    net.eval()
    loss = M.Trainer(p, net)
    out = {}
    for sub in sorted(os.listdir(dev)):
        bits = n = 0.0
        for path in list_images(os.path.join(dev, sub)):
            x = torch.from_numpy(load_rgb(path)).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                bits += float(loss(x)) * x.numel()
            n += x.numel()
        if n:
            out[sub] = bits / n
    return out


def table(results: dict) -> str:
    sets = sorted({s for r in results.values() for s in r["dev"]})
    lines = ["| variant | steps | " + " | ".join(f"dev/{s}" for s in sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for spec, r in results.items():
        lines.append(f"| `{spec}` | {r['steps']} | " + " | ".join(f"{r['dev'].get(s, float('nan')):.4f}"
                                                                   for s in sets) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="../shared/data/train")
    ap.add_argument("--dev", default="../shared/data/dev")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", action="append", help="run just these variants (repeatable)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    res_path = os.path.join(a.out, "results.json")
    results = json.load(open(res_path)) if os.path.exists(res_path) else {}
    for spec in a.only or variants():
        if spec in results and results[spec]["steps"] >= a.steps:
            continue
        d = run_dir(a.out, spec)
        s = train(codec="mspsm", profile=spec, data=a.data, dev=None, out=d, steps=a.steps,
                  resume=os.path.exists(checkpoint.path(d)), crop=a.crop, threads=a.threads, ckpt_minutes=3.0)
        results[spec] = {"steps": s["steps"], "minutes": s["minutes"],
                         "dev": evaluate(spec, checkpoint.path(d), a.dev)}
        with open(res_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(res_path + ".tmp", res_path)
        print(table(results), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
