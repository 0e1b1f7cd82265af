"""Shipped msr weights: codec/weights/msr-<profile>.npz (integer arrays), identified by the sha256 of the file."""

from __future__ import annotations

import ast
import hashlib
import io
import os
from functools import lru_cache

import numpy as np

from .. import modelstore
from ..errors import UnsupportedStream
from . import model as M

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def path(profile: str) -> str:
    return os.path.join(WEIGHTS_DIR, f"msr-{profile}.npz")


def exists(profile: str) -> bool:
    return os.path.isfile(path(profile))


def load(profile: str, model_id: str | None = None) -> tuple[M.IntNet, str]:
    """(integer network, model id) of a profile's shipped weights: the current version, or with ``model_id`` the
    version with that id (current or retired, ``codec/modelstore.py``)."""
    if profile not in M.PROFILES:
        raise UnsupportedStream(f"msr has no profile {profile!r}; this build has {sorted(M.PROFILES)}")
    p = path(profile)
    if model_id is None:
        if not os.path.isfile(p):
            raise UnsupportedStream(f"msr profile {profile!r} has no weights in this build ({p}); train them with "
                                    f"`pixark train --codec msr --profile {profile}`")
        model_id = modelstore.model_id(p)
    return _load(profile, model_id)


@lru_cache(maxsize=8)
def _load(profile: str, model_id: str) -> tuple[M.IntNet, str]:
    return load_file(modelstore.locate(path(profile), model_id, f"msr profile {profile!r}"), profile)


def load_file(p: str, profile: str) -> tuple[M.IntNet, str]:
    """(integer network, model id) of a weights file for ``profile`` (shipped, or kept with golden streams)."""
    with open(p, "rb") as f:
        data = f.read()
    model_id = hashlib.sha256(data).hexdigest()
    with np.load(p) as z:
        net = M.IntNet.from_arrays(M.PROFILES[profile], {k: z[k] for k in z.files})
    return net, model_id


def load_any(p: str) -> tuple[M.IntNet, str]:
    """(integer network, model id) of an msr weights file of any profile, read from the profile the file records
    (``pixark train --init``); ValueError if it is not one."""
    with open(p, "rb") as f:
        data = f.read()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            prof = M.Profile(**ast.literal_eval(str(z["profile"])))
            net = M.IntNet.from_arrays(prof, {k: z[k] for k in z.files})
    except (KeyError, TypeError, ValueError, SyntaxError, OSError) as e:
        raise ValueError(f"{p}: not an msr weights file ({type(e).__name__}: {e})") from None
    return net, hashlib.sha256(data).hexdigest()


def on_device(net: M.IntNet, device) -> M.IntNet:
    """``net`` with its layers' torch tensors also copied to ``device`` (e.g. 'cuda') now rather than on first use.
    Each layer keeps one copy per device and picks the one its input is on, so the same net serves the CPU and
    GPUs; run it on a GPU through ``coder``'s ``device`` argument (``nn.quant``'s int path, checked there first)."""
    for conv in net.layers.values():
        conv._int_params(device)
    return net
