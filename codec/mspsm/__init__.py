"""mspsm: multi-scale progressive statistical model, integer-exact (codec name ``mspsm``).

Parameters: ``profile`` (network weights, see ``model.PROFILES``), ``tile`` (largest tile side in pixels; tiles are
coded independently in one payload, which bounds memory; the side used splits the image into tiles of equal size,
``coder.balanced_tile``, and is what the container records) and ``tile_batch`` (tiles run through the network
together; speed only, never changes the bitstream). ``device`` (an argument of encode/decode, not a stream
parameter) is where the integer network runs: 'cpu' (default) or 'cuda[:N]'; the bitstream is the same. Design
and measurements: docs/MSPSM.md. Importing registers the codec.
"""

from __future__ import annotations

import numpy as np

from ..container import Header
from ..errors import CorruptStream
from ..image import DecodedImage
from ..registry import Codec, Encoded, check_device, register
from . import model as M
from .coder import DEFAULT_TILE

def load_profile(profile: str, model_id: str | None = None):
    """(IntNet, model_id) of a profile's shipped weights (``model.STORE.load``)."""
    return M.STORE.load(profile, model_id)


class MspsmCodec(Codec):
    name = "mspsm"
    version = 1
    versions = (1,)
    learned = True
    summary = ("multi-scale progressive statistical model (learned, integer-exact network and tables); "
               "8-bit RGB")
    defaults = {"profile": M.DEFAULT_PROFILE, "tile": DEFAULT_TILE, "tile_batch": 2}

    def supports(self, image: DecodedImage) -> str | None:
        px = image.pixels
        if px is None:
            return image.reason or "no pixels"
        if px.dtype != np.uint8 or px.ndim != 3 or px.shape[2] != 3:
            return f"mspsm codes 8-bit RGB only (got {px.dtype} with shape {px.shape})"
        return None

    def available(self) -> bool:
        return M.STORE.exists(M.DEFAULT_PROFILE)

    def describe(self) -> dict:
        d = super().describe()
        d["profiles"] = {n: {"params": M.count_params(p), "macs_per_pixel": round(M.macs_per_pixel(p)),
                             "weights": M.STORE.exists(n),
                             "coder": "table bank (fast)" if p.mixtures == 1 else "per-symbol mixture tables (slow)",
                             "note": p.note} for n, p in M.PROFILES.items()}
        return d

    def _check(self, params: dict) -> dict:
        p = self.params(params)
        if p["profile"] not in M.PROFILES:
            raise ValueError(f"mspsm: unknown profile {p['profile']!r}; profiles: {', '.join(M.PROFILES)}")
        try:
            p["tile"], p["tile_batch"] = int(p["tile"]), int(p["tile_batch"])
        except (TypeError, ValueError):
            raise ValueError(f"mspsm: tile and tile_batch must be integers, got {p['tile']!r}, {p['tile_batch']!r}") from None
        if not 16 <= p["tile"] <= 4096:
            raise ValueError(f"mspsm: tile must be 16..4096, got {p['tile']}")
        if not 1 <= p["tile_batch"] <= 64:
            raise ValueError(f"mspsm: tile_batch must be 1..64, got {p['tile_batch']}")
        return p

    def encode(self, image: DecodedImage, device: str | None = None, **params) -> Encoded:
        out = self.encode_many([image], device=device, **params)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def encode_many(self, images: list[DecodedImage], device: str | None = None, **params) -> list:
        """Same-size tiles of all ``images`` share network batches (``coder.encode_many``): each payload is the one
        ``encode`` writes for that image alone. If the shared call fails (a bug, a device out of memory), the
        images are coded again one by one, so each gets its own result or error as ``encode`` gives it."""
        from . import coder

        try:
            p = self._check(params)
            device = check_device(device, available=True)
            net, model_id = load_profile(p["profile"])
        except Exception as exc:  # the same for every image
            return [exc] * len(images)
        try:
            tiles = [coder.balanced_tile(*im.pixels.shape[:2], p["tile"]) for im in images]
            payloads = coder.encode_many(net, [im.pixels for im in images], tile=tiles, tile_batch=p["tile_batch"],
                                         device=device)
        except Exception as exc:
            if len(images) == 1:
                return [exc]
            return [self.encode_many([im], device=device, **params)[0] for im in images]
        return [Encoded(payload=d, params={"profile": p["profile"], "tile": t}, model_id=model_id)
                for d, t in zip(payloads, tiles)]

    def decode(self, payload: bytes, header: Header, device: str | None = None) -> np.ndarray:
        out = self.decode_many([payload], [header], device=device)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def decode_many(self, payloads: list[bytes], headers: list[Header], device: str | None = None) -> list:
        """Payloads of the same weights decode together (``coder.decode_many``: a damaged one fails alone). If a
        shared call fails as a whole (a device out of memory), its payloads are decoded again one by one."""
        from . import coder

        out: list = [None] * len(payloads)
        try:
            device = check_device(device, available=True)
        except Exception as exc:
            return [exc] * len(payloads)
        groups: dict = {}  # (profile, model id) -> indices
        for n, (payload, header) in enumerate(zip(payloads, headers)):
            try:
                if coder.parse_head(payload)[1:3] != (header.height, header.width):
                    raise CorruptStream("mspsm payload size does not match the container header")
            except Exception as exc:
                out[n] = exc
                continue
            groups.setdefault((header.params.get("profile", M.DEFAULT_PROFILE), header.model_id or None), []).append(n)
        for (profile, model_id), idx in groups.items():
            try:
                net, _ = load_profile(profile, model_id)
                got = coder.decode_many(net, [payloads[n] for n in idx], tile_batch=self.defaults["tile_batch"],
                                        device=device)
            except Exception as exc:
                got = [exc] if len(idx) == 1 else \
                    [self.decode_many([payloads[n]], [headers[n]], device=device)[0] for n in idx]
            for n, g in zip(idx, got):
                out[n] = g
        return out


register(MspsmCodec())
