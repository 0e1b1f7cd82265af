"""Training checkpoints as plain data: one .npz holding the network's and the optimizer's tensors (float32
arrays) and a JSON document (``meta``: the run's settings, progress and the optimizer's hyperparameters). No
pickle: loading one runs no code, and a run saved on one device resumes on any other."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from .. import modelstore
from .data import TrainingError

NAME = "checkpoint.npz"
FORMAT = 1
MAX_META = 1 << 22
_META_KEYS = {"format": int, "codec": str, "profile": str, "state": dict, "opt_groups": list}


def path(run_dir: str) -> str:
    return os.path.join(run_dir, NAME)


def save(file: str, meta: dict, model: dict, opt: dict) -> None:
    """Atomically write ``meta`` (JSON-able) with a model state dict and an optimizer state dict."""
    arrays = {f"model/{k}": v.detach().cpu().numpy() for k, v in model.items()}
    for i, st in opt["state"].items():
        for k, v in st.items():
            arrays[f"opt/{i}/{k}"] = torch.as_tensor(v).detach().cpu().numpy()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
    doc = json.dumps({**meta, "format": FORMAT, "opt_groups": groups}).encode()
    arrays["meta"] = np.frombuffer(doc, np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = file + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, file)


def load(file: str) -> tuple[dict, dict, dict]:
    """(meta, model state dict, optimizer state dict) of a checkpoint, as CPU tensors. TrainingError when it is
    not one."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TrainingError(f"cannot read checkpoint {file}: {e}") from None
    try:
        arrs = modelstore.read_npz(data, file)
    except modelstore.BadModelFile as e:
        raise TrainingError(f"not a pixark training checkpoint: {e}") from None
    meta = _meta(arrs.pop("meta", None), file)
    state = {k[6:]: torch.from_numpy(v) for k, v in arrs.items() if k.startswith("model/")}
    opt_state: dict = {}
    for k, v in arrs.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/", 2)
            if not i.isdigit():
                raise TrainingError(f"checkpoint {file}: bad optimizer entry {k!r}")
            opt_state.setdefault(int(i), {})[name] = torch.from_numpy(v)
        elif not k.startswith("model/"):
            raise TrainingError(f"checkpoint {file}: unknown entry {k!r}")
    groups = meta.pop("opt_groups")
    for g in groups:
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or \
                not all(isinstance(p, int) for p in g["params"]):
            raise TrainingError(f"checkpoint {file}: bad optimizer parameter group")
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return meta, state, {"state": opt_state, "param_groups": groups}


def fit(model: torch.nn.Module, state: dict, file: str) -> None:
    """Load a checkpoint's model ``state`` into ``model``: every tensor must match its parameter or buffer in
    name, shape and dtype (TrainingError naming the first that does not)."""
    own = model.state_dict()
    if set(own) != set(state):
        raise TrainingError(f"checkpoint {file} holds another network (tensors {sorted(set(state) ^ set(own))[:4]} "
                            f"differ)")
    for k, v in state.items():
        if v.shape != own[k].shape or v.dtype != own[k].dtype:
            raise TrainingError(f"checkpoint {file}: {k} is {v.dtype} {tuple(v.shape)}, the network's "
                                f"{own[k].dtype} {tuple(own[k].shape)}")
    model.load_state_dict(state)


def _meta(a: np.ndarray | None, file: str) -> dict:
    if a is None or a.dtype != np.uint8 or a.ndim != 1 or a.size > MAX_META:
        raise TrainingError(f"{file} is not a pixark training checkpoint (no run description)")
    try:
        meta = json.loads(a.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise TrainingError(f"checkpoint {file}: unreadable run description ({e})") from None
    if not isinstance(meta, dict):
        raise TrainingError(f"checkpoint {file}: the run description is not an object")
    for k, t in _META_KEYS.items():
        if not isinstance(meta.get(k), t):
            raise TrainingError(f"checkpoint {file}: run description lacks {k} ({t.__name__})")
    if meta["format"] != FORMAT:
        raise TrainingError(f"checkpoint {file}: format {meta['format']} unknown to this build")
    st = meta["state"]
    if not isinstance(st.get("step"), int) or not isinstance(st.get("elapsed"), (int, float)):
        raise TrainingError(f"checkpoint {file}: run state lacks step / elapsed")
    return meta
