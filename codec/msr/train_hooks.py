"""How the training loop (pixark.codec.training) trains msr."""

from __future__ import annotations

from ..training.hooks import Trainable, TrainProfile


def hooks() -> Trainable:
    from . import model as M

    def profile(name):
        if name not in M.PROFILES:
            raise ValueError(f"msr has no profile {name!r}; choose from {sorted(M.PROFILES)}")
        return M.PROFILES[name]

    def export(profile_name, net, weights_path, card_path, dev_dirs, info, limit=None, log=None):
        from .export import export_weights

        return export_weights(profile_name, net, weights_path, card_path, dev_dirs, info, limit=limit)

    def from_weights(path):
        inet, model_id = M.STORE.read(path)
        return f"{inet.p.name} weights {model_id[:12]}", inet.to_net().state_dict()

    return Trainable(make_model=lambda name: M.Net(profile(name)),
                     make_loss=lambda name, net: M.Trainer(profile(name), net),
                     export=export,
                     profile_cfg=lambda name: TrainProfile(profile(name).batch, profile(name).lr, name),
                     from_weights=from_weights)
