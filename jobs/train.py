"""Train a learned codec on CPU (or GPU): random crops + flips, Adam with decaying learning rate, atomic
checkpoints with resume, a log file, and export of the integer model with a model card.

    python -m pixark.jobs.train --codec mspsm --profile cpu --data ../shared/data/train \
        --dev ../shared/data/dev --out /work/runs/mspsm-cpu --minutes 120 [--resume]

Generic part: ``train(codec=..., ...)`` looks the codec up in ``TRAINABLE``; a codec plugs in by providing
``make_model(profile) -> torch.nn.Module``, ``make_loss(profile, model) -> callable(batch uint8->float) -> bpsp``,
``export(profile, model, weights_path, card_path, dev_dirs, info)`` and ``profile_cfg(profile)`` (batch, lr, and
``model``: equal for two profile names that build the same model, e.g. a training variant and the named profile
it is shipped as).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import torch


# ------------------------------------------------------------------------------------------------ data
def list_images(root: str) -> list[str]:
    files = []
    for ext in ("png", "PNG", "ppm", "bmp", "tif", "tiff", "jpg", "jpeg", "webp"):
        files += glob.glob(os.path.join(glob.escape(root), "**", f"*.{ext}"), recursive=True)
    return sorted(set(files))


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode not in ("RGB", "L", "RGBA", "LA", "P"):
            im = im.convert("RGB")
        a = np.asarray(im.convert("RGB") if im.mode != "L" else im)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3].astype(np.uint8))


class CropSampler:
    def __init__(self, paths: list[str], crop: int, seed: int):
        self.imgs = [load_rgb(p) for p in paths]
        self.imgs = [im for im in self.imgs if im.shape[0] >= crop and im.shape[1] >= crop]
        if not self.imgs:
            raise SystemExit(f"no training image is at least {crop}x{crop}")
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.crop, self.crop, 3), np.uint8)
        for i in range(n):
            im = self.imgs[self.rng.integers(len(self.imgs))]
            y = self.rng.integers(im.shape[0] - self.crop + 1)
            x = self.rng.integers(im.shape[1] - self.crop + 1)
            c = im[y:y + self.crop, x:x + self.crop]
            if self.rng.random() < 0.5:
                c = c[:, ::-1]
            if self.rng.random() < 0.5:
                c = c[::-1]
            if self.rng.random() < 0.5:
                c = c.transpose(1, 0, 2)
            out[i] = c
        return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def dev_crops(dev_root: str, n: int, size: int) -> torch.Tensor | None:
    """A fixed small dev subset (centre crops) for the periodic estimate."""
    paths = []
    for sub in sorted(os.listdir(dev_root)) if os.path.isdir(dev_root) else []:
        paths += list_images(os.path.join(dev_root, sub))[: max(1, n // 2)]
    crops = []
    for p in paths[:n]:
        im = load_rgb(p)
        h, w = im.shape[:2]
        s = min(size, h, w)
        y, x = (h - s) // 2, (w - s) // 2
        if s == size:
            crops.append(im[y:y + s, x:x + s])
    if not crops:
        return None
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------------------------------------------ codecs
def _mspsm():
    from dataclasses import replace

    from pixark.codec.mspsm import model as M

    def make_model(profile):
        return M.Net(M.resolve(profile))

    def make_loss(profile, net):
        return M.Trainer(M.resolve(profile), net)

    def export(profile, net, weights_path, card_path, dev_dirs, info, **kw):
        from pixark.codec.mspsm import export as E

        return E.export_weights(profile, net, weights_path, card_path, dev_dirs, info, **kw)

    def profile_cfg(profile):
        p = M.resolve(profile)
        return {"batch": p.batch, "lr": p.lr, "model": replace(p, name="", note="", batch=0, lr=0.0)}

    def from_weights(path):
        from pixark.codec.mspsm import export as E

        inet, model_id = E.load_intnet(path)
        return f"{inet.p.name} weights {model_id[:12]}", inet.to_net().state_dict()

    return make_model, make_loss, export, profile_cfg, from_weights


def _msr():
    from pixark.codec.msr.train_hooks import hooks

    return hooks()


TRAINABLE = {"mspsm": _mspsm, "msr": _msr}


# ------------------------------------------------------------------------------------------------ loop
def _init_source(codec: str, init: str) -> tuple[str, dict]:
    """What ``--init`` names: a training checkpoint, or a shipped weights file, whose integers give back a float
    network (the codec's ``IntNet.to_net``): training goes on from shipped weights when their checkpoint is gone.
    Returns (a description for the model card, the float state dict)."""
    if init.endswith(".npz"):
        try:
            return TRAINABLE[codec]()[4](init)
        except (OSError, ValueError) as e:
            raise SystemExit(f"cannot warm-start from {init}: {e}")
    ck = torch.load(init, map_location="cpu", weights_only=False)
    if ck.get("codec") != codec:
        raise SystemExit(f"cannot warm-start a {codec} model from {init} ({ck.get('codec')})")
    return f"{ck.get('profile')} step {ck['state']['step']}", ck["model"]


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(codec: str = "mspsm", profile: str = "cpu", data: str = "../shared/data/train",
          dev: str | None = "../shared/data/dev", out: str = "/work/runs/mspsm-cpu", steps: int | None = None,
          minutes: float | None = None, resume: bool = False, batch: int | None = None, lr: float | None = None,
          crop: int = 128, threads: int = 2, seed: int = 0, ckpt_minutes: float = 5.0,
          dev_minutes: float = 10.0, export_to: str | None = None, init: str | None = None, bf16: bool = False,
          log=print) -> dict:
    """Train ``codec``/``profile``; stop after ``steps`` steps or ``minutes`` of training time (whichever first;
    both counted over resumed runs). ``init``: a checkpoint (or weights file, ``_init_source``) of this or another
    profile of the same codec to warm-start a new run from (``Net.warm_start``; ignored on resume, the run's own
    checkpoint wins). Returns a summary dict. Exports the integer model at the end when ``export_to`` (a weights
    .npz path) is given."""
    if codec not in TRAINABLE:
        raise SystemExit(f"unknown trainable codec {codec!r}; choose from {sorted(TRAINABLE)}")
    make_model, make_loss, export, profile_cfg, _ = TRAINABLE[codec]()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = profile_cfg(profile)
    batch = batch or cfg["batch"]
    lr0 = lr or cfg["lr"]
    os.makedirs(out, exist_ok=True)
    logf = open(os.path.join(out, "train.log"), "a", buffering=1)

    def say(msg):
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {msg}"
        logf.write(line + "\n")
        log(line)

    net = make_model(profile)
    loss_fn = make_loss(profile, net)
    opt = torch.optim.Adam(net.parameters(), lr=lr0)
    ckpt_path = os.path.join(out, "checkpoint.pt")
    state = {"step": 0, "elapsed": 0.0, "best_dev": None, "history": []}
    if resume and not os.path.exists(ckpt_path) and not init:
        # a run stopped before its first checkpoint: starting a fresh network at the profile's defaults here
        # would silently throw away what the user meant to continue
        raise SystemExit(f"--resume: no checkpoint in {out} (give --init to start from weights instead)")
    if resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("profile") != profile or ck.get("codec") != codec:
            raise SystemExit(f"checkpoint {ckpt_path} is for {ck.get('codec')}/{ck.get('profile')}")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state.update(ck["state"])
        if minutes is None:
            minutes = ck.get("minutes")
        if lr is None and ck.get("lr"):  # the run's own schedule, not the profile default
            lr0 = ck["lr"]
        bf16 = bf16 or ck.get("bf16", False)
        say(f"resumed from {ckpt_path} at step {state['step']} ({state['elapsed'] / 60:.1f} min trained)")
    elif init:
        src, weights = _init_source(codec, init)
        if not hasattr(net, "warm_start"):
            raise SystemExit(f"cannot warm-start a {codec} model")
        fresh = net.warm_start(weights)
        state["init"] = f"{src} ({init})"  # for the model card
        say(f"warm start from {init} ({src}); new: {', '.join(fresh)}")
    paths = list_images(data)
    if not paths:
        raise SystemExit(f"no images under {data}")
    sampler = CropSampler(paths, crop, seed + state["step"])
    devx = dev_crops(dev, 8, 256) if dev else None
    say(f"train codec={codec} profile={profile} images={len(sampler.imgs)} batch={batch} crop={crop} "
        f"lr={lr0} steps={steps} minutes={minutes} threads={threads} bf16={int(bf16)} "
        f"params={sum(p.numel() for p in net.parameters())}")
    net.bf16 = bf16

    def lr_at(progress: float) -> float:
        # warm start, then cosine decay to 2% of lr0
        progress = min(max(progress, 0.0), 1.0)
        return lr0 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    def progress() -> float:
        ps = []
        if steps:
            ps.append(state["step"] / steps)
        if minutes:
            ps.append(state["elapsed"] / (60 * minutes))
        return max(ps) if ps else 0.0

    def save():
        _atomic_save({"codec": codec, "profile": profile, "model": net.state_dict(), "opt": opt.state_dict(),
                      "state": state, "minutes": minutes, "data": data, "batch": batch, "crop": crop, "lr": lr0,
                      "bf16": bf16},
                     ckpt_path)

    def dev_eval():
        if devx is None:
            return None
        net.eval()
        net.bf16 = False  # the dev estimate stays float32, comparable across runs
        with torch.no_grad():
            v = float(sum(loss_fn(devx[i:i + 2]) * len(devx[i:i + 2]) for i in range(0, len(devx), 2)) / len(devx))
        net.train()
        net.bf16 = bf16
        return v

    last_ckpt = last_dev = time.time()
    run_loss, run_n = 0.0, 0
    t_prev = time.time()
    while progress() < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr_at(progress())
        x = sampler.batch(batch)
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        now = time.time()
        state["elapsed"] += now - t_prev
        t_prev = now
        state["step"] += 1
        run_loss += float(loss.detach())
        run_n += 1
        if state["step"] % 25 == 0:
            say(f"step {state['step']} loss_bpsp {run_loss / run_n:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"elapsed_min {state['elapsed'] / 60:.1f}")
            state["history"].append((state["step"], run_loss / run_n))
            run_loss, run_n = 0.0, 0
        if devx is not None and now - last_dev > 60 * dev_minutes:
            d = dev_eval()
            state["last_dev"] = d
            say(f"dev step {state['step']} dev_bpsp_est {d:.4f} (float estimate, {len(devx)} centre crops 256)")
            last_dev = t_prev = time.time()
        if now - last_ckpt > 60 * ckpt_minutes:
            save()
            say(f"checkpoint step {state['step']}")
            last_ckpt = t_prev = time.time()
    d = dev_eval()
    state["last_dev"] = d
    save()
    say(f"done step {state['step']} elapsed_min {state['elapsed'] / 60:.1f} dev_bpsp_est {d}")
    summary = {"codec": codec, "profile": profile, "steps": state["step"], "minutes": state["elapsed"] / 60,
               "dev_bpsp_est": d, "data": data, "batch": batch, "crop": crop, "lr": lr0}
    if export_to:
        card = os.path.splitext(export_to)[0] + ".md"
        dev_dirs = [os.path.join(dev, s) for s in sorted(os.listdir(dev))] if dev and os.path.isdir(dev) else []
        summary["export"] = export(profile, net, export_to, card, dev_dirs, summary)
        say(f"exported {export_to}: {json.dumps(summary['export'])}")
    return summary


def export_checkpoint(codec: str, profile: str, out: str, export_to: str, dev: str | None,
                      limit: int | None = None, log=print) -> dict:
    """Export the integer model of the checkpoint in ``out`` to ``export_to`` as ``profile`` (the checkpoint's own
    profile, or a name for the same model: a run of ``cpu-fb2:channels=96`` ships as ``cpu-fb2-96``) and measure
    dev with the real coder."""
    make_model, _, export, profile_cfg, _ = TRAINABLE[codec]()
    ck = torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)
    if ck.get("codec") != codec or (ck.get("profile") != profile and
                                    profile_cfg(ck.get("profile"))["model"] != profile_cfg(profile)["model"]):
        raise SystemExit(f"checkpoint in {out} is for {ck.get('codec')}/{ck.get('profile')}, not {profile}")
    net = make_model(profile)
    net.load_state_dict(ck["model"])
    net.eval()
    st = ck["state"]
    hist = st.get("history") or []
    info = {"codec": codec, "profile": profile, "steps": st["step"], "minutes": st["elapsed"] / 60,
            "train_loss_last": hist[-1][1] if hist else None, "data": ck.get("data", "../shared/data/train"),
            "batch": ck.get("batch"), "crop": ck.get("crop", 128), "lr": ck.get("lr"),
            "dev_bpsp_est": st.get("last_dev"), "measure_limit": limit, "init": st.get("init"),
            "trained_as": ck["profile"] if ck["profile"] != profile else None}
    card = os.path.splitext(export_to)[0] + ".md"
    dev_dirs = [os.path.join(dev, s) for s in sorted(os.listdir(dev))] if dev and os.path.isdir(dev) else []
    kw = {"limit": limit, "log": log} if codec == "mspsm" else {}  # other codecs' hooks take the base signature
    res = export(profile, net, export_to, card, dev_dirs, info, **kw)
    return {**info, "export": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pixark train", description=__doc__.split("\n")[0])
    ap.add_argument("--codec", default="mspsm")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--data", default="../shared/data/train")
    ap.add_argument("--dev", default="../shared/data/dev")
    ap.add_argument("--out", required=True, help="run directory (checkpoints, log); keep it outside git")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="warm-start from a checkpoint of this or another profile (e.g. cpu-fb from "
                    "cpu-small), or from shipped weights (mspsm: codec/weights/mspsm-<profile>.npz)")
    ap.add_argument("--bf16", action="store_true", help="the network trunk's convolutions in bfloat16: faster steps "
                    "on CPUs with AMX / AVX512-BF16 (1.3-1.9x here; kept on resume; dev estimates stay float32)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--dev-minutes", type=float, default=10.0)
    ap.add_argument("--export-only", action="store_true", help="export the checkpoint in --out and measure dev")
    ap.add_argument("--measure-limit", type=int, help="with --export-only: images per dev set to measure")
    ap.add_argument("--export", dest="export_to", help="weights path to write at the end, e.g. "
                    "codec/weights/mspsm-cpu.npz")
    a = ap.parse_args(argv)
    if a.export_only:
        if not a.export_to:
            ap.error("--export-only needs --export PATH")
        torch.set_num_threads(a.threads)
        r = export_checkpoint(a.codec, a.profile, a.out, a.export_to, a.dev, a.measure_limit,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
        print(json.dumps(r, default=str))
        return 0
    if a.steps is None and a.minutes is None:
        ap.error("give --steps and/or --minutes")
    s = train(codec=a.codec, profile=a.profile, data=a.data, dev=a.dev, out=a.out, steps=a.steps,
              minutes=a.minutes, resume=a.resume, batch=a.batch, lr=a.lr, crop=a.crop, threads=a.threads,
              seed=a.seed, ckpt_minutes=a.ckpt_minutes, dev_minutes=a.dev_minutes, export_to=a.export_to,
              init=a.init, bf16=a.bf16, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(s, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
