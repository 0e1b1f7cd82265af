"""The interface through which the training loop trains a learned codec, and the codecs that provide it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .data import TrainingError


@dataclass(frozen=True)
class TrainProfile:
    """A profile's training defaults. ``model`` compares equal for two profile names that build the same network
    (a training variant and the named profile it ships as)."""

    batch: int
    lr: float
    model: Any


@dataclass(frozen=True)
class Trainable:
    """What a learned codec gives the training loop (``loop.train``).

    - ``make_model(profile)``: a fresh float training network (``torch.nn.Module``);
    - ``make_loss(profile, net)``: a callable taking a (B, 3, H, W) float batch of pixel values 0..255 on the
      network's device and returning the bits per subpixel (a scalar tensor);
    - ``export(profile, net, weights_path, card_path, dev_dirs, info, limit=None, log=None)``: write the integer
      weights and their model card, measuring the dev sets with the real coder; returns what it measured;
    - ``profile_cfg(profile)``: its ``TrainProfile`` (ValueError for an unknown profile);
    - ``from_weights(path)``: (a description for the model card, the float state dict) that training goes on
      from, given a weights file of this codec (ValueError when it is not one).
    """

    make_model: Callable
    make_loss: Callable
    export: Callable
    profile_cfg: Callable[[str], TrainProfile]
    from_weights: Callable[[str], tuple]


# each module has ``hooks() -> Trainable``; imported on use (they import torch)
TRAINABLE = {"mspsm": "pixark.codec.mspsm.train_hooks", "msr": "pixark.codec.msr.train_hooks"}


def trainable(codec: str) -> Trainable:
    if codec not in TRAINABLE:
        raise TrainingError(f"unknown trainable codec {codec!r}; choose from {sorted(TRAINABLE)}")
    return importlib.import_module(TRAINABLE[codec]).hooks()
