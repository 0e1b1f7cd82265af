"""An archive read the way training code reads data (public as ``pixark.dataset``).

    arc = Archive("s3://bucket/archive")            # index from the manifests, one ranged read per record
    img = arc["cats/1.png"]                         # img.pixels (HxWxC numpy), img.mode, img.metadata
    ds = TorchDataset("s3://bucket/archive", shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=2)   # torch's, plus exact state_dict() with workers
    rows = read_pixark("s3://bucket/archive")       # Ray Data: image_id, image, metadata columns

Every record is checked on the way out: its CRC32C (shards.read_record), the container's own checksums and pixel
hash (codec.decode), then the manifest's pixel_sha256 (or source_sha256 for files kept as bytes), so a record that
is damaged or swapped raises CorruptRecord naming it instead of handing wrong pixels to a model.

Images are the manifest rows with a record whose pixels were decoded at archive time, plus files kept as their
bytes that Pillow reads (JPEG, ...: their pixels are Pillow's decoding of the original file). ``Archive`` also gives
every other record (``ids(images_only=False)``: text files, damaged sources kept as bytes).

TorchDataset splits the epoch by shard: ranks take every world_size-th shard of the epoch's order, DataLoader
workers every num_workers-th of their rank's, and each shard is read by one worker from start to end. So what a
training loop has received is, per shard, a prefix of that shard's order; the state is one number per shard.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass

import fsspec
import numpy as np
import torch

from pixark import codec as pc

from . import catalog, shards
from .errors import CorruptRecord, CorruptShard, NotByteExact

log = logging.getLogger(__name__)

STATE_VERSION = 1
ON_ERROR = ("raise", "skip")
_COLUMNS = ["image_id", "shard", "offset", "length", "record_crc32c", "source_bytes", "source_sha256",
            "pixel_sha256", "format", "width", "height", "channels", "bit_depth", "mode", "codec", "model_id",
            "status", "note"]
# Columns read_pixark gives beside image_id and image.
META_COLUMNS = ["mode", "format", "width", "height", "channels", "bit_depth", "codec", "source_bytes",
                "source_sha256", "pixel_sha256"]
_PILLOW_MODES = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "I;16": "I;16"}


# ------------------------------------------------------------------------------------------------ the index
@dataclass
class Index:
    rows: dict[str, dict]  # image_id -> manifest row (first row per id), records only
    order: list[str]  # every image_id with a record, by (shard, offset)
    images: dict[str, list[str]]  # shard -> image ids of images, in offset order


_INDEX_CACHE: dict[tuple, Index] = {}
_INDEX_CACHE_SIZE = 8


# The archive job's note on a file that looks like an image but that Pillow cannot read (coding.code_object).
_PILLOW_CANNOT_READ = "Pillow cannot read"


def is_image(row: dict) -> bool:
    """Pixels were decoded at archive time, or an intact file kept as bytes that Pillow reads (JPEG, ...)."""
    if row.get("pixel_sha256"):
        return True
    return row.get("status") == "ok" and bool(row.get("format")) and _PILLOW_CANNOT_READ not in (row.get("note") or "")


def _index(arc: catalog.Archive) -> Index:
    """Build (or reuse) the index. An archive's state is named by its archive.json and its manifest parts, which
    change together on --extend, so that pair is the cache key."""
    key = (arc.url, repr(sorted(arc.meta.items())) if arc.meta else "", tuple(sorted(arc.parts)))
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    rows: dict[str, dict] = {}
    for r in catalog.read_manifest(arc, _COLUMNS).drop_columns(["manifest_part"]).to_pylist():
        if r["offset"] is not None and r["length"] is not None:
            rows.setdefault(r["image_id"], r)  # duplicate rows are verify's finding; the first one counts
    order = sorted(rows, key=lambda i: (rows[i]["shard"], rows[i]["offset"]))
    images: dict[str, list[str]] = {}
    for i in order:
        if is_image(rows[i]):
            images.setdefault(rows[i]["shard"], []).append(i)
    index = Index(rows, order, images)
    while len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
        _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    _INDEX_CACHE[key] = index
    return index


# ------------------------------------------------------------------------------------------ reading records
def read_row(fs: fsspec.AbstractFileSystem, shard_path: str, row: dict) -> bytes:
    """The record of a manifest row: one ranged read, checked against the manifest's CRC32C."""
    try:
        return shards.read_record(fs, shard_path, int(row["offset"]), int(row["length"]), row.get("record_crc32c"))
    except CorruptShard as exc:
        raise CorruptRecord(f"record {row['image_id']!r}: {exc}", row["image_id"]) from exc


def decode_row(fs: fsspec.AbstractFileSystem, shard_path: str, row: dict, device: str | None = None
               ) -> pc.DecodedImage:
    """Read and decode the record of a manifest row, checked against the manifest's hashes. Images kept as their
    file bytes get Pillow's pixels. Raises CorruptRecord naming the image."""
    image_id = row["image_id"]
    data = read_row(fs, shard_path, row)
    try:
        img = pc.decode(data, device=device)
    except pc.CodecError as exc:
        raise CorruptRecord(f"record {image_id!r} in shard {row['shard']} does not decode: {exc}", image_id) from exc
    if row.get("pixel_sha256"):
        if img.pixels is None or img.pixel_sha256() != row["pixel_sha256"]:
            raise CorruptRecord(f"record {image_id!r} in shard {row['shard']} decodes to other pixels than the "
                                "manifest's pixel_sha256: the record is not this image's", image_id)
    elif img.original is not None:
        if row.get("source_sha256") and hashlib.sha256(img.original).hexdigest() != row["source_sha256"]:
            raise CorruptRecord(f"record {image_id!r} in shard {row['shard']} holds other bytes than the "
                                "manifest's source_sha256: the record is not this file's", image_id)
        if is_image(row):
            img.pixels, img.mode = _pillow_pixels(img.original, image_id)
    return img


def _pillow_pixels(data: bytes, image_id: str) -> tuple[np.ndarray, str]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode not in _PILLOW_MODES:
                    im = im.convert("RGBA" if "transparency" in im.info or "A" in im.getbands() else "RGB")
                arr = np.asarray(im)
                mode = im.mode
    except Exception as exc:  # the archive job checked it decodes; something changed since
        raise CorruptRecord(f"record {image_id!r}: the stored file does not decode: {type(exc).__name__}: {exc}",
                            image_id) from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr), mode


# -------------------------------------------------------------------------------------------------- Archive
class Archive:
    """Random access to a pixark archive at any fsspec URL. ``device``: where learned-codec records run their
    network (None = cpu). Safe to pass to forked or spawned processes (the filesystem is reopened there)."""

    def __init__(self, url, storage_options: dict | None = None, device: str | None = None):
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.device = device
        arc = catalog.open_archive(self.url, self.storage_options)
        if arc.meta is None:
            raise catalog.ArchiveError(f"{self.url}: {arc.meta_error}; finish it (rerun pixark archive) before "
                                       "reading it")
        self._arc = arc
        self._pid = os.getpid()
        self.index = _index(arc)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        # s3fs and other async filesystems refuse to run in a forked child (DataLoader workers): open a new one.
        if self._pid != os.getpid():
            self._arc.fs = fsspec.core.url_to_fs(self.url, **self.storage_options)[0]
            self._pid = os.getpid()
        return self._arc.fs

    def __len__(self) -> int:
        return len(self.index.order)

    def __contains__(self, image_id) -> bool:
        return image_id in self.index.rows

    def __iter__(self):
        return iter(self.index.order)

    def __repr__(self) -> str:
        return f"Archive({self.url!r}, {len(self)} records)"

    def ids(self, images_only: bool = False) -> list[str]:
        """Image ids with a record, by shard and offset; ``images_only`` leaves out files that are not images."""
        if images_only:
            return [i for ids in self.index.images.values() for i in ids]
        return list(self.index.order)

    def row(self, image_id: str) -> dict:
        """The manifest row of ``image_id`` (codec, size, hashes, shard, offset ...)."""
        try:
            return self.index.rows[image_id]
        except KeyError:
            raise KeyError(f"{image_id!r} has no record in the archive {self.url}") from None

    def shard_path(self, shard: str) -> str:
        return self._arc.shard_path(shard)

    def record(self, image_id: str) -> bytes:
        """The record (a pixark container stream) by one ranged read, CRC32C-checked."""
        row = self.row(image_id)
        return read_row(self.fs, self.shard_path(row["shard"]), row)

    def __getitem__(self, image_id: str) -> pc.DecodedImage:
        row = self.row(image_id)
        return decode_row(self.fs, self.shard_path(row["shard"]), row, self.device)

    def read_bytes(self, image_id: str) -> bytes:
        """The original file, byte for byte: files kept as bytes always; re-encoded images when writing their
        pixels and metadata back gives the same file (checked against the manifest's source_sha256). Otherwise
        NotByteExact: the pixels and metadata are exact, the file's encoder choices were not kept."""
        row = self.row(image_id)
        img = decode_row(self.fs, self.shard_path(row["shard"]), row, self.device)
        blob = img.original if img.original is not None else img.to_file("original")
        if img.original is None and hashlib.sha256(blob).hexdigest() != row.get("source_sha256"):
            raise NotByteExact(f"{image_id!r} was re-encoded ({row.get('format')} -> {row.get('codec')}): its pixels "
                               "and metadata are exact but its original file bytes are not kept; use "
                               "archive[image_id].pixels, or archive[image_id].to_file() for an equivalent file")
        return blob


# --------------------------------------------------------------------------------------------- TorchDataset
class TorchDataset(torch.utils.data.IterableDataset):
    """Yields ``{"image_id", "pixels" (HxWxC numpy), "mode"}`` (plus ``"input": transform(pixels)`` when given)
    for every image of the archive, each exactly once per epoch across ranks and DataLoader workers.

    - ``rank`` / ``world_size``: from torch.distributed when it is initialised and they are not given.
    - ``shuffle``: shard order and the order inside each shard, deterministic from (seed, epoch); ``set_epoch``.
    - ``state_dict()`` / ``load_state_dict()``: exact when iterated in this process, or through
      ``pixark.dataset.DataLoader`` (torch's own DataLoader with workers never tells the dataset what it handed out).
    - ``on_error="skip"``: a corrupt record is logged and skipped; ``skipped`` counts them.
    """

    def __init__(self, url, shuffle: bool = False, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, transform=None, *, on_error: str = "raise",
                 storage_options: dict | None = None, device: str | None = None):
        super().__init__()
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed's are used)")
        if rank is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        self.archive = Archive(url, storage_options, device)
        self.shuffle, self.seed, self.rank, self.world_size = bool(shuffle), int(seed), int(rank), int(world_size)
        self.transform = transform
        self.on_error = on_error
        self.epoch = 0
        self._pos: dict[str, int] = {}  # shard -> how much of its order has been handed out
        self._seen: dict[str, int] = {}  # shard -> images handed out (the rest up to _pos were skipped)
        self._driven = False  # a pixark DataLoader is iterating this instance and reports what it yields
        self._plan_cache: tuple | None = None

    # ---------------------------------------------------------------------------------------- the epoch's plan
    def _plan(self) -> tuple[list[tuple[str, list[str]]], dict[str, int]]:
        """This rank's shards in the epoch's order with their image ids in order, and id -> position in its shard."""
        if self._plan_cache and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1], self._plan_cache[2]
        names = sorted(self.archive.index.images)
        plan = [(s, list(self.archive.index.images[s])) for s in names]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            plan = [plan[k] for k in rng.permutation(len(plan))]
            for n, (_, ids) in enumerate(plan):
                inner = np.random.default_rng([self.seed, self.epoch, n])
                ids[:] = [ids[k] for k in inner.permutation(len(ids))]
        mine = plan[self.rank::self.world_size]
        where = {i: k for _, ids in mine for k, i in enumerate(ids)}
        self._plan_cache = (self.epoch, mine, where)
        return mine, where

    def __len__(self) -> int:
        """Images this rank yields in a whole epoch (ranks differ by up to a shard)."""
        return sum(len(ids) for _, ids in self._plan()[0])

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._pos, self._seen = {}, {}

    @property
    def skipped(self) -> int:
        """Corrupt records skipped so far this epoch (on_error="skip"), as seen by the training loop."""
        return sum(self._pos.get(s, 0) - self._seen.get(s, 0) for s in self._pos)

    # ------------------------------------------------------------------------------------------------ progress
    def _begin(self) -> None:
        """A new pass over a finished epoch starts it again (call set_epoch first for a new order)."""
        mine, _ = self._plan()
        if mine and all(self._pos.get(s, 0) >= len(ids) for s, ids in mine):
            self._pos, self._seen = {}, {}

    def _note(self, image_ids) -> None:
        _, where = self._plan()
        for i in image_ids:
            shard = self.archive.index.rows[i]["shard"]
            self._pos[shard] = max(self._pos.get(shard, 0), where[i] + 1)
            self._seen[shard] = self._seen.get(shard, 0) + 1

    def _finish(self) -> None:
        for s, ids in self._plan()[0]:
            self._pos[s] = len(ids)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "url": self.archive.url, "epoch": self.epoch, "seed": self.seed,
                "shuffle": self.shuffle, "rank": self.rank, "world_size": self.world_size,
                "position": dict(self._pos), "yielded": dict(self._seen)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}: this pixark reads version {STATE_VERSION}")
        for key in ("seed", "shuffle", "rank", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the state was taken with {key}={state[key]!r}, this dataset has "
                                 f"{key}={getattr(self, key)!r}: construct it with the same {key}")
        unknown = sorted(set(state["position"]) - set(self.archive.index.images))
        if unknown:
            raise ValueError(f"the state names shards this archive does not hold ({', '.join(unknown[:3])}): it was "
                             "taken on another archive")
        self.epoch = int(state["epoch"])
        self._pos = {s: int(n) for s, n in state["position"].items()}
        self._seen = {s: int(n) for s, n in state["yielded"].items()}

    # --------------------------------------------------------------------------------------------- iterating
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        track = info is None and not self._driven  # in this process; a pixark DataLoader tracks for itself
        if track:
            self._begin()
        mine, _ = self._plan()
        arc = self.archive
        for shard, ids in mine[worker::workers]:
            path = arc.shard_path(shard)
            for image_id in ids[self._pos.get(shard, 0):]:
                try:
                    img = decode_row(arc.fs, path, arc.index.rows[image_id], arc.device)
                except CorruptRecord as exc:
                    if self.on_error == "raise":
                        raise
                    log.warning("skipping %s", exc)
                    continue
                pixels = img.pixels if img.pixels.flags.writeable else img.pixels.copy()  # torch wants to own it
                sample = {"image_id": image_id, "pixels": pixels, "mode": img.mode}
                if self.transform is not None:
                    sample["input"] = self.transform(pixels)
                if track:
                    self._note([image_id])
                yield sample
        if track:
            self._finish()


def collate(samples: list[dict]) -> dict:
    """Batch samples: a key whose values share a shape becomes one tensor (torch's default_collate), other keys
    (pixels of images of different sizes, strings) stay lists."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        try:
            out[key] = torch.utils.data.default_collate(values)
        except (RuntimeError, TypeError):
            out[key] = [torch.utils.data.default_convert(v) for v in values]
    return out


def _batch_ids(batch) -> list[str]:
    ids = batch["image_id"]
    return [ids] if isinstance(ids, str) else list(ids)


class DataLoader(torch.utils.data.DataLoader):
    """torch's DataLoader over a TorchDataset that reports each batch it hands to the training loop back to the
    dataset, so ``state_dict()`` (of the loader or the dataset) is exact between any two batches with worker
    processes too. Batches of images of different sizes keep ``pixels`` as a list (``collate``)."""

    def __init__(self, dataset: TorchDataset, *args, **kwargs):
        if not isinstance(dataset, TorchDataset):
            raise TypeError("pixark.dataset.DataLoader reads a pixark.dataset.TorchDataset")
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers would keep each worker's copy of the dataset from the first epoch "
                             "(its epoch and resume state): leave it off")
        if kwargs.get("batch_size", 1) is not None and "collate_fn" not in kwargs:
            kwargs["collate_fn"] = collate
        super().__init__(dataset, *args, **kwargs)

    def __iter__(self):
        ds = self.dataset
        ds._begin()
        ds._driven = True  # workers fork from here with this flag: nobody but this loop counts
        try:
            for batch in super().__iter__():
                ds._note(_batch_ids(batch))
                yield batch
            ds._finish()
        finally:
            ds._driven = False

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


# ------------------------------------------------------------------------------------------------- Ray Data
def read_pixark(url, storage_options: dict | None = None, *, on_error: str = "raise", ray_address: str | None = None):
    """A Ray Data dataset of the archive's images: rows of ``image_id``, ``image`` (HxWxC numpy) and the
    ``META_COLUMNS``. Records decode on Ray workers, learned-codec records with a GPU share where the cluster
    has GPUs. A local archive must be on a disk the workers see (one machine, or a shared filesystem)."""
    import ray

    from .workers import connect

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    arc = Archive(url, storage_options)
    connect(ray_address)
    items = [{**{c: arc.index.rows[i][c] for c in ["image_id", "shard", "offset", "length", "record_crc32c",
                                                    "status", *META_COLUMNS]},
              "shard_path": arc.shard_path(arc.index.rows[i]["shard"])} for i in arc.ids(images_only=True)]
    learned = any(catalog.is_learned(r["codec"]) for r in items)
    gpus = catalog.gpu_share(ray.cluster_resources()) if learned else 0.0
    decode = _RayDecode(arc.fs, on_error, gpus > 0)
    ds = ray.data.from_items(items)
    return ds.flat_map(decode, **({"num_gpus": gpus} if gpus else {}))


class _RayDecode:
    """One row of the index -> [the decoded row], or [] for a skipped corrupt record."""

    def __init__(self, fs: fsspec.AbstractFileSystem, on_error: str, gpu: bool):
        self.fs, self.on_error, self.gpu = fs, on_error, gpu

    def __call__(self, item: dict) -> list[dict]:
        device = None
        if self.gpu:
            from .workers import task_device

            device = task_device()
        try:
            img = decode_row(self.fs, item["shard_path"], item, device)
        except CorruptRecord as exc:
            if self.on_error == "raise":
                raise
            log.warning("skipping %s", exc)
            return []
        return [{"image_id": item["image_id"], "image": img.pixels, **{c: item[c] for c in META_COLUMNS},
                 "mode": img.mode}]


__all__ = ["Archive", "TorchDataset", "DataLoader", "collate", "read_pixark", "decode_row", "read_row", "is_image",
           "CorruptRecord", "NotByteExact", "META_COLUMNS"]
