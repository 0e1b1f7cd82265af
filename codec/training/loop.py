"""The training loop of the learned codecs: random crops (``data``), Adam with a cosine-decayed learning rate,
optional bfloat16 trunk, on the CPU or a CUDA device, plain-data checkpoints (``checkpoint``) with resume on any
device, a log file, and export of the integer model (always on the CPU, in float64, so the integers do not
depend on where the run trained)."""

from __future__ import annotations

import json
import math
import os
import time

import torch

from . import checkpoint
from .data import CropSampler, Loader, TrainingError, dev_crops, list_images
from .hooks import trainable


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise TrainingError(f"bad device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r}: this machine has no CUDA device (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise TrainingError(f"device {name!r}: training runs on cpu or cuda")
    return dev


def _init_source(codec: str, init: str) -> tuple[str, dict]:
    """What ``--init`` names: a training checkpoint, or a shipped weights file, whose integers give back a float
    network (the codec's ``IntNet.to_net``): training goes on from shipped weights when their checkpoint is gone.
    Returns (a description for the model card, the float state dict)."""
    if os.path.isdir(init):
        init = checkpoint.path(init)
    if not init.endswith(checkpoint.NAME):
        try:
            return trainable(codec).from_weights(init)
        except (OSError, ValueError) as e:
            raise TrainingError(f"cannot warm-start from {init}: {e}") from None
    meta, state, _ = checkpoint.load(init)
    if meta["codec"] != codec:
        raise TrainingError(f"cannot warm-start a {codec} model from {init} ({meta['codec']})")
    return f"{meta['profile']} step {meta['state']['step']}", state


def train(codec: str = "mspsm", profile: str = "cpu", data: str = "../shared/data/train",
          dev: str | None = "../shared/data/dev", out: str = "/work/runs/mspsm-cpu", steps: int | None = None,
          minutes: float | None = None, resume: bool = False, batch: int | None = None, lr: float | None = None,
          crop: int = 128, threads: int = 2, seed: int = 0, ckpt_minutes: float = 5.0,
          dev_minutes: float = 10.0, export_to: str | None = None, init: str | None = None, bf16: bool = False,
          device: str = "cpu", loader_workers: int = 0, jpeg: float = 0.0, log=print) -> dict:
    """Train ``codec``/``profile`` on ``device``; stop after ``steps`` steps or ``minutes`` of training time
    (whichever first; both counted over resumed runs). ``init``: a checkpoint (or weights file,
    ``_init_source``) of this or another profile of the same codec to warm-start a new run from
    (``Net.warm_start``; ignored on resume, the run's own checkpoint wins). ``loader_workers``: threads cutting
    crops ahead of the step; ``jpeg``: the fraction of crops passed through JPEG first (``data.jpeg_history``). Returns a summary dict. Exports the integer model at the end when ``export_to`` (a
    weights .npz path) is given. TrainingError when it cannot start."""
    hooks = trainable(codec)
    dev_ = _device(device)
    if steps is None and minutes is None:
        raise TrainingError("give steps and/or minutes")
    try:
        cfg = hooks.profile_cfg(profile)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    batch = batch or cfg.batch
    lr0 = lr or cfg.lr
    os.makedirs(out, exist_ok=True)
    ckpt_path = checkpoint.path(out)
    if resume and not os.path.exists(ckpt_path) and not init:
        # a run stopped before its first checkpoint: starting a fresh network at the profile's defaults here
        # would silently throw away what the user meant to continue
        raise TrainingError(f"--resume: no checkpoint in {out} (give --init to start from weights instead)")
    logf = open(os.path.join(out, "train.log"), "a", buffering=1)

    def say(msg):
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {msg}"
        logf.write(line + "\n")
        log(line)

    net = hooks.make_model(profile)
    state = {"step": 0, "elapsed": 0.0, "history": []}
    opt_state = None
    if resume and os.path.exists(ckpt_path):
        meta, model_state, opt_state = checkpoint.load(ckpt_path)
        if meta["profile"] != profile or meta["codec"] != codec:
            raise TrainingError(f"checkpoint {ckpt_path} is for {meta['codec']}/{meta['profile']}")
        checkpoint.fit(net, model_state, ckpt_path)
        state.update(meta["state"])
        if minutes is None:
            minutes = meta.get("minutes")
        if lr is None and meta.get("lr"):  # the run's own schedule, not the profile default
            lr0 = meta["lr"]
        bf16 = bf16 or bool(meta.get("bf16"))
        jpeg = jpeg or float(meta.get("jpeg") or 0.0)
        say(f"resumed from {ckpt_path} at step {state['step']} ({state['elapsed'] / 60:.1f} min trained, "
            f"saved on {meta.get('device', 'cpu')})")
    elif init:
        src, weights = _init_source(codec, init)
        if not hasattr(net, "warm_start"):
            raise TrainingError(f"cannot warm-start a {codec} model")
        try:
            fresh = net.warm_start(weights)
        except ValueError as e:
            raise TrainingError(f"cannot warm-start from {init}: {e}") from None
        state["init"] = f"{src} ({init})"  # for the model card
        say(f"warm start from {init} ({src}); new: {', '.join(fresh)}")
    net.to(dev_)
    loss_fn = hooks.make_loss(profile, net)
    opt = torch.optim.Adam(net.parameters(), lr=lr0)
    if opt_state is not None:
        try:
            opt.load_state_dict(opt_state)  # moves the moments to the parameters' device
        except (ValueError, KeyError, RuntimeError) as e:
            raise TrainingError(f"checkpoint {ckpt_path}: optimizer state does not fit ({e})") from None
    if dev_.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest convolutions once
    paths = list_images(data)
    if not paths:
        raise TrainingError(f"no images under {data}")
    sampler = CropSampler(paths, crop, workers=max(1, loader_workers), log=say, jpeg=jpeg)
    loader = Loader(sampler, batch, seed + state["step"], loader_workers, dev_)
    devx = dev_crops(dev, 8, 256) if dev else None
    devx = devx.to(dev_) if devx is not None else None
    say(f"train codec={codec} profile={profile} images={len(sampler.imgs)} ({sampler.pixels / 1e6:.1f} Mpx) "
        f"batch={batch} crop={crop} lr={lr0} steps={steps} minutes={minutes} threads={threads} bf16={int(bf16)} "
        f"device={dev_} loader_workers={loader_workers} jpeg={jpeg} params={sum(p.numel() for p in net.parameters())}")
    net.bf16 = bf16

    def lr_at(progress: float) -> float:
        # cosine decay to 2% of lr0
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
        meta = {"codec": codec, "profile": profile, "state": state, "minutes": minutes, "data": data,
                "batch": batch, "crop": crop, "lr": lr0, "bf16": bf16, "device": str(dev_), "jpeg": jpeg}
        checkpoint.save(ckpt_path, meta, net.state_dict(), opt.state_dict())

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
    run_loss, run_n = torch.zeros((), device=dev_), 0  # summed on the device: no sync per step
    t_prev = time.time()
    try:
        while progress() < 1.0:
            for g in opt.param_groups:
                g["lr"] = lr_at(progress())
            x = loader.next()
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            run_loss += loss.detach()
            run_n += 1
            state["step"] += 1
            log_now = state["step"] % 25 == 0
            if log_now or dev_.type == "cpu":
                loss_v = float(run_loss)  # on CUDA: waits for the queued steps, so elapsed counts them
            now = time.time()
            state["elapsed"] += now - t_prev
            t_prev = now
            if log_now:
                say(f"step {state['step']} loss_bpsp {loss_v / run_n:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                    f"elapsed_min {state['elapsed'] / 60:.1f}")
                state["history"].append((state["step"], loss_v / run_n))
                run_loss.zero_()
                run_n = 0
            if devx is not None and now - last_dev > 60 * dev_minutes:
                d = dev_eval()
                state["last_dev"] = d
                say(f"dev step {state['step']} dev_bpsp_est {d:.4f} (float estimate, {len(devx)} centre crops 256)")
                last_dev = t_prev = time.time()
            if now - last_ckpt > 60 * ckpt_minutes:
                save()
                say(f"checkpoint step {state['step']}")
                last_ckpt = t_prev = time.time()
    finally:
        loader.close()
    d = dev_eval()
    state["last_dev"] = d
    save()
    say(f"done step {state['step']} elapsed_min {state['elapsed'] / 60:.1f} dev_bpsp_est {d}")
    summary = {"codec": codec, "profile": profile, "steps": state["step"], "minutes": state["elapsed"] / 60,
               "dev_bpsp_est": d, "data": data, "batch": batch, "crop": crop, "lr": lr0, "device": str(dev_), "jpeg": jpeg}
    if export_to:
        net.to("cpu")
        card = os.path.splitext(export_to)[0] + ".md"
        summary["export"] = hooks.export(profile, net, export_to, card, _dev_dirs(dev), summary)
        say(f"exported {export_to}: {json.dumps(summary['export'])}")
    logf.close()
    return summary


def _dev_dirs(dev: str | None) -> list[str]:
    return [os.path.join(dev, s) for s in sorted(os.listdir(dev))] if dev and os.path.isdir(dev) else []


def export_checkpoint(codec: str, profile: str, out: str, export_to: str, dev: str | None,
                      limit: int | None = None, log=print) -> dict:
    """Export the integer model of the checkpoint in ``out`` (made on any device) to ``export_to`` as ``profile``
    (the checkpoint's own profile, or a name for the same model: a run of ``cpu-fb2:channels=96`` ships as
    ``cpu-fb2-96``) and measure dev with the real coder."""
    hooks = trainable(codec)
    try:
        meta, model_state, _ = checkpoint.load(checkpoint.path(out))
        same = meta["codec"] == codec and (meta["profile"] == profile or
                                           hooks.profile_cfg(meta["profile"]).model == hooks.profile_cfg(profile).model)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if not same:
        raise TrainingError(f"checkpoint in {out} is for {meta['codec']}/{meta['profile']}, not {profile}")
    net = hooks.make_model(profile)
    checkpoint.fit(net, model_state, checkpoint.path(out))
    net.eval()
    st = meta["state"]
    hist = st.get("history") or []
    info = {"codec": codec, "profile": profile, "steps": st["step"], "minutes": st["elapsed"] / 60,
            "train_loss_last": hist[-1][1] if hist else None, "data": meta.get("data", "../shared/data/train"),
            "batch": meta.get("batch"), "crop": meta.get("crop", 128), "lr": meta.get("lr"),
            "dev_bpsp_est": st.get("last_dev"), "measure_limit": limit, "init": st.get("init"),
            "trained_as": meta["profile"] if meta["profile"] != profile else None, "device": meta.get("device")}
    card = os.path.splitext(export_to)[0] + ".md"
    res = hooks.export(profile, net, export_to, card, _dev_dirs(dev), info, limit=limit, log=log)
    return {**info, "export": res}

