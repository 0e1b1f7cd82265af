"""How the training loop (pixark.codec.training) trains mspsm."""

from __future__ import annotations

from dataclasses import replace

from ..training.hooks import Trainable, TrainProfile


def hooks() -> Trainable:
    from . import export as E
    from . import model as M

    def profile_cfg(profile):
        p = M.resolve(profile)
        return TrainProfile(p.batch, p.lr, replace(p, name="", note="", batch=0, lr=0.0))

    def from_weights(path):
        inet, model_id = M.STORE.read(path)
        return f"{inet.p.name} weights {model_id[:12]}", inet.to_net().state_dict()

    return Trainable(make_model=lambda profile: M.Net(M.resolve(profile)),
                     make_loss=lambda profile, net: M.Trainer(M.resolve(profile), net),
                     export=E.export_weights, profile_cfg=profile_cfg, from_weights=from_weights)
