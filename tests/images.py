"""Real test images: ../shared/data/dev where it exists, else the photos scikit-image ships."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV = SHARED_DATA / "dev"


def dev_files(limit: int | None = None) -> list[Path]:
    files = sorted(DEV.rglob("*.png")) if DEV.is_dir() else []
    return files[:limit] if limit else files


def photos(limit: int = 3, crop: int | None = None) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of real photographs: dev images, or scikit-image's when ../shared is absent."""
    out = []
    files = dev_files()
    if files:
        step = max(1, len(files) // limit)
        for f in files[::step][:limit]:
            out.append((f.name, f.read_bytes()))
    else:
        import skimage.data

        for name in ("astronaut", "coffee", "chelsea")[:limit]:
            arr = getattr(skimage.data, name)()
            out.append((name, png_bytes(arr)))
    if crop:
        out = [(n, png_bytes(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))[:crop, :crop])) for n, b in out]
    return out


def png_bytes(arr: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **save)
    return buf.getvalue()


def photo_array(size: int = 96) -> np.ndarray:
    name, data = photos(1)[0]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:size, :size].copy()
