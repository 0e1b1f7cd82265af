"""msr: lossless coding as a WebP lossy base plus a residual coded by masked sampling (codec name ``msr``).

Parameters: ``q`` WebP quality 0..100 or ``"auto"`` (tries ``Q_AUTO`` and keeps the smallest stream), ``k``
LSB width (4, 5, 6), ``T`` masked-sampling iterations (rate vs latency), ``profile`` (network weights).
``device`` (an argument of encode/decode, not a stream parameter): where the integer network runs, 'cpu' (default)
or 'cuda[:N]'; the stream is the same.
Design, payload layout and measurements: docs/MSR.md. Importing this module registers the codec.
"""

from __future__ import annotations

import numpy as np

from ..container import Header
from ..errors import CorruptStream
from ..image import DecodedImage
from ..registry import Codec, Encoded, check_device, register
from . import model as M

Q_AUTO = (85, 90, 95)


class MsrCodec(Codec):
    name = "msr"
    version = 1
    versions = (1,)
    learned = True
    summary = "WebP lossy base + residual (MSB runs, LSB by an integer network over T masked-sampling steps); 8-bit RGB"
    defaults = {"q": 90, "k": 5, "T": 2, "profile": M.DEFAULT_PROFILE}

    def supports(self, image: DecodedImage) -> str | None:
        px = image.pixels
        if px is None:
            return image.reason or "no pixels"
        if px.dtype != np.uint8 or px.ndim != 3 or px.shape[2] != 3:
            return "msr codes 8-bit RGB only"
        return None  # any size: images over coder.TILE a side are coded in tiles

    def available(self) -> bool:
        return M.STORE.exists(M.DEFAULT_PROFILE)

    def describe(self) -> dict:
        d = super().describe()
        d["profiles"] = [{"name": n, "weights": M.STORE.exists(n), "params": M.count_params(p),
                          "macs_per_pixel_per_iteration": M.macs_per_pixel(p),
                          "summary": f"{p.note}; {M.count_params(p)} params, "
                                     f"{M.macs_per_pixel(p):.0f} MACs/pixel/iteration"}
                         for n, p in M.PROFILES.items()]
        return d

    def _check(self, p: dict) -> dict:
        out = dict(p)
        try:
            out["k"], out["T"] = int(p["k"]), int(p["T"])
        except (TypeError, ValueError):
            raise ValueError(f"msr: k and T must be integers, got k={p['k']!r} T={p['T']!r}") from None
        if out["k"] not in (4, 5, 6):
            raise ValueError(f"msr: k must be 4, 5 or 6, got {out['k']}")
        if not 1 <= out["T"] <= 64:
            raise ValueError(f"msr: T must be 1..64, got {out['T']}")
        if p["q"] != "auto":
            try:
                out["q"] = int(p["q"])
            except (TypeError, ValueError):
                raise ValueError(f"msr: q must be 0..100 or 'auto', got {p['q']!r}") from None
            if not 0 <= out["q"] <= 100:
                raise ValueError(f"msr: q must be 0..100 or 'auto', got {out['q']}")
        return out

    def encode(self, image: DecodedImage, device: str | None = None, **params) -> Encoded:
        from . import coder

        p = self._check(self.params(params))
        device = check_device(device, available=True)
        net, model_id = M.STORE.load(p["profile"])
        qs = Q_AUTO if p["q"] == "auto" else (p["q"],)
        best = None
        for q in qs:
            payload = coder.encode(image.pixels, net, q, p["k"], p["T"], device=device)
            if best is None or len(payload) < len(best[0]):
                best = (payload, q)
        return Encoded(best[0], {**p, "q": best[1]}, model_id)

    def decode(self, payload: bytes, header: Header, device: str | None = None) -> np.ndarray:
        from . import coder

        device = check_device(device, available=True)
        prm = header.params
        profile = prm.get("profile", M.DEFAULT_PROFILE)
        net, _ = M.STORE.load(profile, header.model_id)
        f = coder.parse(payload)
        if (f["height"], f["width"]) != (header.height, header.width) or header.channels != 3:
            raise CorruptStream("msr payload size does not match the container header")
        if (f["k"], f["T"], f["q"]) != (prm.get("k"), prm.get("T"), prm.get("q")):
            raise CorruptStream("msr payload parameters do not match the container header")
        return coder.decode(payload, net, device=device)


register(MsrCodec())
