"""How jobs/train.py trains msr: the five hooks of its generic loop (see pixark.jobs.train)."""

from __future__ import annotations


def hooks():
    from . import model as M

    def make_model(profile):
        return M.Net(M.PROFILES[profile])

    def make_loss(profile, net):
        return M.Trainer(M.PROFILES[profile], net)

    def export(profile, net, weights_path, card_path, dev_dirs, info):
        from .export import export_weights

        return export_weights(profile, net, weights_path, card_path, dev_dirs, info)

    def profile_cfg(profile):
        if profile not in M.PROFILES:
            raise SystemExit(f"msr has no profile {profile!r}; choose from {sorted(M.PROFILES)}")
        p = M.PROFILES[profile]
        return {"batch": p.batch, "lr": p.lr, "model": profile}

    def from_weights(path):
        from .weights import load_any

        inet, model_id = load_any(path)
        return f"{inet.p.name} weights {model_id[:12]}", inet.to_net().state_dict()

    return make_model, make_loss, export, profile_cfg, from_weights
