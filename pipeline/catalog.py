"""An archive as verify, restore and audit read it: where it lives, archive.json, its manifest parts, records.

Read-only. Works on any fsspec URL. The filesystem object is picklable, so Ray tasks get the driver's endpoint and
credentials without relying on environment variables being set on the workers.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from . import manifest, shards, store
from .errors import PipelineError


class ArchiveError(PipelineError):
    """Nothing readable as a pixark archive at a URL (no archive.json and no manifest parts)."""


@dataclass
class Archive:
    url: str
    fs: fsspec.AbstractFileSystem
    root: str  # path inside ``fs``, no trailing slash
    meta: dict | None = None  # archive.json; None when missing or unreadable
    meta_error: str = ""  # why ``meta`` is None
    parts: dict[str, str] = field(default_factory=dict)  # part file name -> path, complete parts only

    def path(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def shard_path(self, shard: str) -> str:
        return self.path("shards", shard)

    def part_path(self, shard: str) -> str:
        return self.path("manifests", manifest.part_name(shard))


def open_archive(url: str, storage_options: dict | None = None) -> Archive:
    """Locate an archive and read archive.json. A missing archive.json is not fatal here (verify reports it);
    a URL with neither archive.json nor manifest parts is."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    arc = Archive(url=url, fs=fs, root=root.rstrip("/"))
    store.fresh(fs)
    try:
        arc.meta = json.loads(fs.cat_file(arc.path("archive.json")))
        if not isinstance(arc.meta, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        arc.meta, arc.meta_error = None, "archive.json is missing (the archive job has not finished)"
    except (ValueError, UnicodeDecodeError) as exc:
        arc.meta, arc.meta_error = None, f"archive.json is unreadable: {exc}"
    arc.parts = {posixpath.basename(p): p for p in store.list_now(fs, arc.path("manifests"))
                 if p.endswith(".parquet") and not posixpath.basename(p).startswith(".")}
    if arc.meta is None and not arc.parts:
        raise ArchiveError(f"no pixark archive at {url}: neither archive.json nor manifests/*.parquet exist")
    return arc


def read_manifest(arc: Archive, columns: list[str] | None = None) -> pa.Table:
    """All visible manifest parts as one table (parts in name order), plus a ``manifest_part`` column; every part
    has ``generation`` (filled from the part's plan for parts written before that column)."""
    tables = []
    for name, path in sorted(arc.parts.items()):
        t = manifest.upgrade(manifest.read_part(arc.fs, path)).replace_schema_metadata(None)
        if columns is not None:
            t = t.select([c for c in columns if c in t.column_names])
        tables.append(t.append_column("manifest_part", pa.array([name] * t.num_rows, pa.string())))
    if not tables:
        raise ArchiveError(f"{arc.url} has no manifest parts under manifests/")
    table = pa.concat_tables(tables, promote_options="default")
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ArchiveError(f"manifests of {arc.url} lack column(s) {missing}; is this a pixark archive?")
    return table


def read_stream(arc: Archive, shard: str, offset: int, length: int, crc: int | None = None) -> bytes:
    """One record (a bare container stream) by a ranged read, checked against its CRC32C; raises CorruptShard."""
    return shards.read_record(arc.fs, arc.shard_path(shard), int(offset), int(length),
                              None if crc is None else int(crc))


def coalesce(rows: list[dict], max_bytes: int = 16 << 20) -> list[list[dict]]:
    """Group rows (sorted by offset) whose records sit back to back into runs of at most ``max_bytes``, so a run
    costs one ranged read. Only exactly adjacent records merge: nothing between them is ever read."""
    runs: list[list[dict]] = []
    for r in sorted(rows, key=lambda r: r["offset"]):
        last = runs[-1] if runs else None
        if (last and last[-1]["offset"] + last[-1]["length"] == r["offset"]
                and r["offset"] + r["length"] - last[0]["offset"] <= max_bytes):
            last.append(r)
        else:
            runs.append([r])
    return runs


def read_run(fs: fsspec.AbstractFileSystem, path: str, run: list[dict]) -> list[bytes]:
    """The records of one run by a single ranged read; a record past the end of the object comes back short."""
    start = run[0]["offset"]
    data = fs.cat_file(path, start=start, end=run[-1]["offset"] + run[-1]["length"])
    return [data[r["offset"] - start: r["offset"] - start + r["length"]] for r in run]


def task_options(ray, *filesystems) -> dict:
    """Ray options for tasks that read or write ``filesystems``. A local path exists only on this machine, so tasks
    touching one are pinned to the driver's node; on object stores they may run anywhere in the cluster."""
    opts: dict = {"num_cpus": 1}
    if any(store.is_local(fs) for fs in filesystems):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                     soft=False)
    return opts


def gpu_share(resources: dict) -> float:
    """GPU fraction for one decode task of learned-codec records: the cluster's GPUs spread over its CPUs, so every
    CPU slot can still run a task and each task's network runs on a GPU; 0 on a cluster without GPUs."""
    gpus = float(resources.get("GPU", 0) or 0)
    if gpus <= 0:
        return 0.0
    return min(1.0, gpus / max(1.0, float(resources.get("CPU", 1) or 1)))


def decode_task(task, rows: list[dict], gpus: float):
    """``task`` (a Ray remote function decoding ``rows``, one shard's run of records) with the GPU share ``gpus``
    when those records are of a learned codec; unchanged for classical records or a cluster without GPUs."""
    return task.options(num_gpus=gpus) if gpus and is_learned(rows[0].get("codec")) else task


def is_learned(codec: str | None) -> bool:
    """Records of learned codecs decode orders of magnitude slower than classical ones (seconds, not milliseconds).
    An unknown codec counts as classical (its decoder will say what is wrong)."""
    from pixark.codec import registry

    return bool(codec) and registry.is_learned(codec)


# Decoded pixels a task holds at once (``decode_many``): about 12 MB of 8-bit RGB, whatever the records' sizes.
DECODE_PIXELS = 1 << 22


def decode_many(rows: list[dict], datas: list[bytes], device: str | None = None) -> list:
    """``pixark.codec.decode_many`` of a task's records (learned codecs share network calls across them), in
    groups of at most DECODE_PIXELS by the manifest rows' width and height (a record of unknown size alone): per
    record its DecodedImage or the exception decoding it raised (an error of a whole call, such as a bad device,
    is each of its records')."""
    from pixark import codec as pc

    out: list = []
    group: list = []
    pixels = 0

    def flush():
        try:
            out.extend(pc.decode_many(group, device=device, return_exceptions=True))
        except Exception as exc:
            out.extend([exc] * len(group))
        group.clear()

    for row, data in zip(rows, datas):
        px = (row.get("width") or 0) * (row.get("height") or 0) or DECODE_PIXELS
        if group and pixels + px > DECODE_PIXELS:
            flush()
            pixels = 0
        group.append(data)
        pixels += px
    if group:
        flush()
    return out


# Pixels of learned-codec records one decode task holds: small images decode together (their network calls
# shared, docs/MSPSM.md "Batched coding"), large ones (1 Mpx and up: seconds each) still one per task.
LEARNED_TASK_PIXELS = 1 << 20


def batches(rows: list[dict], max_records: int, learned_pixels: int = LEARNED_TASK_PIXELS) -> list[list[dict]]:
    """Rows of one shard -> task inputs in offset order (so adjacent records share a ranged read): up to
    ``max_records`` classical records per task; learned-codec records, whose decodes are slow, up to
    ``learned_pixels`` pixels (by the manifest's width and height; at least one record) and ``max_records`` per
    task, so large ones spread over every worker instead of queueing behind each other in one task and small
    ones decode together."""
    out: list[list[dict]] = []
    current: list[dict] = []
    learned: list[dict] = []
    pixels = 0
    for r in sorted(rows, key=lambda r: r["offset"]):
        if is_learned(r.get("codec")):
            px = (r.get("width") or 0) * (r.get("height") or 0) or learned_pixels  # unknown: a task of its own
            if learned and (pixels + px > learned_pixels or len(learned) == max_records):
                out.append(learned)
                learned, pixels = [], 0
            learned.append(r)
            pixels += px
            continue
        current.append(r)
        if len(current) == max_records:
            out.append(current)
            current = []
    if learned:
        out.append(learned)
    if current:
        out.append(current)
    return out
