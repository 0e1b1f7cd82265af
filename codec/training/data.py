"""Training images: listing, decoding (PNG and the other PIL formats, lossless JPEG XL), crops sampled by
pixels with the dihedral augmentation, and a loader whose worker threads prepare batches ahead of the step."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import CodecError

EXTS = (".png", ".ppm", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".jxl")


class TrainingError(CodecError):
    """Training cannot start or go on: bad arguments, no usable data, a checkpoint that does not fit."""


def list_images(root: str) -> list[str]:
    """Every image file under ``root`` (recursive; by extension, any case; not hidden ones), sorted."""
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.join(d, f) for f in files
                if os.path.splitext(f)[1].lower() in EXTS and not f.startswith(".")]
    return sorted(out)


def load_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 of an 8-bit image file (grey is repeated, alpha dropped); ValueError for other depths."""
    if path.lower().endswith(".jxl"):
        import imagecodecs

        with open(path, "rb") as f:
            a = np.asarray(imagecodecs.jpegxl_decode(f.read()))
        if a.dtype != np.uint8:
            raise ValueError(f"{path}: {a.dtype} samples; training reads 8-bit images")
    else:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            a = np.asarray(im if im.mode == "L" else im.convert("RGB"))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] < 3:
        a = np.repeat(a[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def dihedral(c: np.ndarray, k: int) -> np.ndarray:
    """Element ``k`` (0..7) of the dihedral group of the square on an (H, W, C) crop: flips and transposes."""
    if k & 1:
        c = c[:, ::-1]
    if k & 2:
        c = c[::-1]
    if k & 4:
        c = c.transpose(1, 0, 2)
    return c


def jpeg_history(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop as it comes back from one pass through a JPEG encoder and decoder (Pillow's libjpeg): quality 70..100,
    chroma 4:4:4, 4:2:2 or 4:2:0, the 8x8 grid at the crop's origin as at an image's. Most photo collections went
    through JPEG once (camera, phone, web); their pixels hold smooth chroma and block structure that downscaled or
    never-compressed training photos lack, and on such pixels the model lost 5-50 % against JPEG XL
    (docs/MSPSM.md)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(c)).save(buf, "JPEG", quality=int(rng.integers(70, 101)),
                                                  subsampling=int(rng.integers(3)))
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


class CropSampler:
    """Random ``crop`` x ``crop`` crops of images decoded once and kept in memory. An image is drawn with
    probability proportional to its pixels, so every pixel of the training set is equally likely to be in a crop
    (a 2048-pixel photo is not outweighed by many small files); each crop gets a random one of the 8 symmetries
    of the square (flips and 90-degree turns: a photo seen mirrored or turned is still a photo), and a fraction
    ``jpeg`` of them a pass through JPEG first (``jpeg_history``)."""

    def __init__(self, paths: list[str], crop: int, workers: int = 1, log=None, jpeg: float = 0.0):
        with ThreadPoolExecutor(max(1, workers)) as ex:
            imgs = list(ex.map(load_rgb, paths))
        self.imgs = [im for im in imgs if im.shape[0] >= crop and im.shape[1] >= crop]
        if not self.imgs:
            raise TrainingError(f"no training image is at least {crop}x{crop}")
        px = np.array([im.shape[0] * im.shape[1] for im in self.imgs], np.float64)
        self.weights = px / px.sum()
        self.pixels = int(px.sum())
        self.crop, self.jpeg = crop, jpeg
        if log and len(self.imgs) < len(imgs):
            log(f"{len(imgs) - len(self.imgs)} images smaller than {crop}x{crop} skipped")

    def batch(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3, crop, crop) uint8."""
        out = np.empty((n, self.crop, self.crop, 3), np.uint8)
        which = rng.choice(len(self.imgs), size=n, p=self.weights)
        for i, j in enumerate(which):
            im = self.imgs[j]
            y = rng.integers(im.shape[0] - self.crop + 1)
            x = rng.integers(im.shape[1] - self.crop + 1)
            c = im[y:y + self.crop, x:x + self.crop]
            if self.jpeg and rng.random() < self.jpeg:
                c = jpeg_history(c, rng)
            out[i] = dihedral(c, int(rng.integers(8)))
        return out.transpose(0, 3, 1, 2)


class Loader:
    """Batches as float tensors on ``device``. With ``workers`` > 0 that many threads cut crops ahead of the
    training step (up to ``2 * workers`` batches waiting; numpy copies release the GIL), each with its own random
    stream from ``seed``; with 0 the batches are cut in the step, reproducibly. On CUDA the batch goes through
    pinned memory and is copied without blocking."""

    def __init__(self, sampler: CropSampler, batch: int, seed: int, workers: int = 0, device="cpu"):
        self.sampler, self.n, self.device = sampler, batch, torch.device(device)
        self.pin = self.device.type == "cuda"
        self.workers = workers
        seeds = np.random.SeedSequence(seed).spawn(max(1, workers))
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.q: queue.Queue = queue.Queue(maxsize=2 * max(1, workers))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(r,), daemon=True) for r in self.rngs[:workers]]
        for t in self.threads:
            t.start()

    def _make(self, rng) -> torch.Tensor:
        t = torch.from_numpy(self.sampler.batch(self.n, rng))
        return t.pin_memory() if self.pin else t

    def _work(self, rng) -> None:
        while not self.stop.is_set():
            b = self._make(rng)
            while not self.stop.is_set():
                try:
                    self.q.put(b, timeout=0.1)
                    break
                except queue.Full:
                    pass

    def next(self) -> torch.Tensor:
        b = self.q.get() if self.threads else self._make(self.rngs[0])
        return b.to(self.device, non_blocking=self.pin).float()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def dev_crops(dev_root: str, n: int, size: int) -> torch.Tensor | None:
    """A fixed small dev subset (centre crops) for the periodic estimate: the first images of each dev set."""
    paths = []
    for sub in sorted(os.listdir(dev_root)) if os.path.isdir(dev_root) else []:
        paths += list_images(os.path.join(dev_root, sub))[: max(1, n // 2)]
    crops = []
    for p in paths[:n]:
        im = load_rgb(p)
        h, w = im.shape[:2]
        if min(h, w) >= size:
            y, x = (h - size) // 2, (w - size) // 2
            crops.append(im[y:y + size, x:x + size])
    if not crops:
        return None
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
