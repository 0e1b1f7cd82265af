"""Restore on demand: the manifest says where each wanted record is, a ranged read fetches just those bytes, the
codec decodes them, and the file is written back under its relative path in its original format with its metadata
(files kept as original bytes come back byte-identical).

    summary = restore("s3://bucket/archive", "/data/restored", include="cats/*.png", format="original")

Repairs and resumes: each output is written atomically (temp name then rename locally, one PUT on object stores).
An output already in DEST is checked against the manifest (its size where known, then its sha256 for files that
are the source's bytes, or its decoded pixels' hash for re-encoded images) and rewritten when it differs, so
restoring over a damaged copy repairs it; ``skip_existing`` trusts any output that exists (fast resume). Large
restores run as Ray tasks, small ones in this process.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from collections import Counter

import fsspec

from . import catalog, integrity, manifest, store
from .errors import PipelineError, one_line
from .sources import matches

FORMATS = ("original", "png")
LOCAL_LIMIT = 32  # restores of at most this many records skip Ray's start-up and run in this process ...
# ... when their learned-codec records decode here in less time than a local Ray costs (5.4 s to start and about
# 2.5 s more to stop on a development machine, 2026-12-04, docs/OPERATIONS.md); mspsm decodes about 0.33 MP/s on
# one core (README "Results": 0.66 MP/s with two processes).
RAY_START_SECONDS = 8.0
LEARNED_MP_PER_SECOND = 0.33
RUN_RECORDS = 64  # records per Ray task
_COLUMNS = ["image_id", "source_bytes", "source_sha256", "pixel_sha256", "format", "codec", "shard", "offset",
            "length", "record_crc32c", "status", "error", "generation", "duplicate_of", "width", "height",
            "restore_exact"]


class RestoreError(PipelineError):
    """The restore cannot start: bad arguments, unknown image ids."""


def converts(row: dict, format: str) -> bool:
    """Whether --format png converts this row's stored file: an image kept as its bytes (JPEG, TIFF ...) that was
    readable at archive time. Files that are not images, or did not decode, are written as they were."""
    return (format == "png" and not row.get("pixel_sha256") and bool(row.get("format"))
            and row.get("status") == "ok" and row.get("format") != "PNG")


def output_name(row: dict, format: str) -> str:
    """Relative output path. With --format png, images written as PNG (re-encoded or converted from a stored
    JPEG, TIFF ...) get a .png suffix; files written as they were keep their name."""
    name = row["image_id"]
    if format == "png" and (row.get("pixel_sha256") or converts(row, format)) and not name.lower().endswith(".png"):
        name = posixpath.splitext(name)[0] + ".png"
    return name


def output_names(rows: list[dict], format: str) -> dict[str, str]:
    """image_id -> relative output path, unique: when --format png would map two images to one name (a.gif and
    a.png, or a.gif and a.bmp), the renamed ones keep their old suffix (a.gif.png)."""
    ids = {r["image_id"] for r in rows}
    wanted = {r["image_id"]: output_name(r, format) for r in rows}
    uses = Counter(wanted.values())
    return {i: i + ".png" if name != i and (name in ids or uses[name] > 1) else name for i, name in wanted.items()}


def safe_relative(image_id: str) -> bool:
    """An image_id must stay inside DEST: no absolute paths, no '..' components (a damaged or hostile manifest)."""
    parts = image_id.split("/")
    return bool(image_id) and not image_id.startswith("/") and ".." not in parts and "" not in parts


def _expected_size(row: dict, format: str) -> int | None:
    """Outputs that are the source's own bytes have a known size; re-encoded outputs do not until decoded."""
    if converts(row, format):
        return None
    if not row.get("pixel_sha256") or (format == "original" and manifest.exactness(row)[0] == manifest.EXACT_BYTES):
        return row.get("source_bytes")
    return None


def png_of(data: bytes) -> bytes:
    """A PNG of a stored image file (JPEG, TIFF, WebP ...), for --format png: its decoded pixels with its ICC
    profile, EXIF and resolution. Raises ValueError saying why when PNG cannot hold it."""
    import io

    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"a {im.format} of {frames} frames; PNG holds one")
        if im.mode not in _PNG_MODES:
            raise ValueError(f"a {im.format} in mode {im.mode}, which PNG cannot hold without changing the pixels")
        im.load()
        kwargs = {k: im.info[k] for k in ("icc_profile", "exif", "dpi") if im.info.get(k)}
        buf = io.BytesIO()
        im.save(buf, format="PNG", **kwargs)
    except ValueError:
        raise
    except Exception as exc:  # Pillow's errors for damaged or unknown files
        raise ValueError(f"not readable as an image ({type(exc).__name__}: {exc})") from exc
    return buf.getvalue()


_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


# ----------------------------------------------------------------------------------------------- worker side
def restore_records(archive_fs, shard_path: str, rows: list[dict], dest_fs, dest_root: str, format: str,
                    device: str | None = None) -> list[dict]:
    """Fetch, decode and write the records of one shard (adjacent records share one ranged read). ``device``:
    where learned codecs decode (None = cpu)."""
    out = []
    for run in catalog.coalesce(rows):
        try:
            datas = catalog.read_run(archive_fs, shard_path, run)
        except FileNotFoundError:
            out += [_res(r, "error", f"shard {posixpath.basename(shard_path)} is missing") for r in run]
            continue
        # the run's records decode together (learned codecs share network calls), then each is written alone
        pre = [_precheck(row, data) for row, data in zip(run, datas)]
        todo = [n for n, p in enumerate(pre) if p is None]
        for n, img in zip(todo, catalog.decode_many([run[n] for n in todo], [datas[n] for n in todo], device)):
            pre[n] = _write(run[n], img, dest_fs, dest_root, format)
        out += pre
    return out


def _restore_records_task(archive_fs, shard_path: str, rows: list[dict], dest_fs, dest_root: str,
                          format: str) -> list[dict]:
    """restore_records as a Ray task: decodes on the GPU Ray gave the task, if any (tasks ask for none yet)."""
    from .workers import task_device

    return restore_records(archive_fs, shard_path, rows, dest_fs, dest_root, format, task_device())


def restore_record(row: dict, data: bytes, dest_fs, dest_root: str, format: str, device: str | None = None) -> dict:
    return _precheck(row, data) or _write(row, catalog.decode_many([row], [data], device)[0], dest_fs, dest_root,
                                          format)


def _precheck(row: dict, data: bytes) -> dict | None:
    """The result of a record that fails before decoding (truncated, bad CRC32C), else None."""
    import crc32c

    if len(data) != row["length"]:
        return _res(row, "error", f"record truncated: {len(data)} of {row['length']} bytes in the shard")
    if row.get("record_crc32c") is not None and crc32c.crc32c(data) != row["record_crc32c"]:
        return _res(row, "error", "record fails its CRC32C check: the shard is damaged (run pixark verify)")
    return None


def _write(row: dict, img, dest_fs, dest_root: str, format: str) -> dict:
    """Write a record's file, given its decoded image (the container's checksums and the decoded pixels' hash
    checked) or the exception decoding it raised. ``row["exact"]`` (restore --exact): the source's bytes or
    nothing."""
    try:
        if isinstance(img, Exception):
            raise img
        blob, how = _file(img, format, bool(row.get("exact")))
    except Exception as exc:  # CodecError, or a failure nobody foresaw: this record's error, not the job's
        return _res(row, "error", f"{type(exc).__name__}: {exc}")
    if how == EXACT and row.get("source_sha256") and hashlib.sha256(blob).hexdigest() != row["source_sha256"]:
        return _res(row, "error", "restored bytes do not match the manifest's source_sha256")
    mismatch = _pixel_mismatch(row, img)
    if mismatch:
        return _res(row, "error", mismatch)
    if format == "png" and img.pixels is None:
        blob, how = _stored_as_png(row, blob)
        if blob is None:
            return _res(row, "error", how)
    path = posixpath.join(dest_root, row["name"])
    try:
        store.put_bytes(dest_fs, store.os_name(dest_fs, path), blob)
    except OSError as exc:
        return _res(row, "error", f"cannot write {path}: {exc}")
    return _res(row, "written", how, len(blob))


EXACT = "original bytes"  # how a file was written when it is the source's own bytes (its sha256 is checked)
PIXELS_ONLY = "pixels only"  # how a file promised byte-exact was written when its PNG recipe failed here


def _file(img, format: str, exact: bool) -> tuple[bytes, str]:
    """(file bytes, how) of a decoded record. A file kept as its bytes, or a PNG whose recipe rewrites it, comes
    back as the source's bytes (EXACT); should the recipe not reproduce it here (a zlib that deflates otherwise),
    the pixels are written in a file of pixark's making, and ``how`` says why (an error with ``exact``)."""
    from pixark import codec as pc

    if img.pixels is None:
        return img.to_file("original"), EXACT
    if format != "original":
        return img.to_file(format), format
    if not img.restores_exact:
        if exact:
            return img.to_file(exact=True), EXACT  # raises, saying why
        return img.to_file(), format
    try:
        return img.to_file(exact=True), EXACT
    except pc.CodecError as exc:
        if exact:
            raise
        return img.to_file(), f"{PIXELS_ONLY} ({exc})"


def _pixel_mismatch(row: dict, img) -> str:
    """The decoded record against the manifest row that names it: a record that is intact but is not this row's
    image (a damaged or swapped row) is not written."""
    want = row.get("pixel_sha256")
    if img.pixels is None:
        return "the manifest says this record has pixels; it decodes to none" if want else ""
    from pixark import codec as pc

    if want and pc.pixel_sha256(img.pixels) != want:
        return "the record's pixels do not match the manifest's pixel_sha256: the manifest is damaged; not written"
    return ""


def _stored_as_png(row: dict, blob: bytes) -> tuple[bytes | None, str]:
    """(bytes to write, how) for a stored file under --format png; (None, why) when it cannot be converted."""
    if not converts(row, "png"):
        why = "not an image" if not row.get("format") else "did not decode at archive time"
        return blob, f"original bytes ({why}: nothing to convert to PNG)"
    try:
        return png_of(blob), f"png (converted from {row['format']})"
    except ValueError as exc:
        return None, f"cannot convert to PNG: {exc}; restore it with --format original"


def refuse_inexact(rows: list[dict], format: str) -> None:
    """restore --exact: RestoreError naming the selected records that restore pixel-exact only, before anything
    is written. Rows of manifests written before restore_exact count as their codec says (manifest.exactness)."""
    if format != "original":
        raise RestoreError("--exact writes the source files' own bytes; it cannot be combined with --format png")
    inexact = sorted(r["image_id"] for r in rows
                     if r.get("offset") is not None and manifest.exactness(r)[0] != manifest.EXACT_BYTES)
    if inexact:
        shown = ", ".join(inexact[:20]) + (f" ... ({len(inexact) - 20} more)" if len(inexact) > 20 else "")
        raise RestoreError(f"--exact: {len(inexact)} of the {len(rows)} selected images restore pixel-exact only "
                           f"(same pixels and metadata, not the same file bytes), so nothing was written: {shown}. "
                           "Restore without --exact, or leave them out with --include/--ids")


def _res(row: dict, status: str, detail: str, nbytes: int = 0) -> dict:
    return {"image_id": row["image_id"], "name": row.get("name", row["image_id"]), "status": status, "detail": detail,
            "bytes": nbytes}


# ----------------------------------------------------------------------------------------------- driver side
def read_ids(ids, storage_options: dict | None = None) -> list[str]:
    """``ids``: an iterable of image ids, or the path/URL of a text file with one image id per line."""
    if isinstance(ids, str) or hasattr(ids, "__fspath__"):
        try:
            with fsspec.open(str(ids), "rt", encoding="utf-8", **(storage_options or {})) as f:
                text = f.read()
        except (OSError, ValueError) as exc:
            raise RestoreError(f"cannot read the id list {ids}: {exc}") from exc
        out = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not out:
            raise RestoreError(f"the id list {ids} names no image ids (one per line expected)")
        return out
    return [str(i) for i in ids]


def select(rows: list[dict], include=None, ids=None) -> tuple[list[dict], list[str]]:
    """Rows matching any ``include`` glob (the archive job's rules: fnmatch on image_id, '*' also crosses '/', a
    pattern without '/' also tried on the file name) and, with ``ids``, listed there. Returns (rows, requested ids
    the archive does not hold)."""
    patterns = [include] if isinstance(include, str) else list(include or [])
    wanted = None if ids is None else set(ids)
    # The current row of each path (the newest generation; same-generation duplicates are verify's finding):
    # restore writes each path once.
    first = {r["image_id"]: r for r in manifest.current_rows(rows)}
    chosen = [r for r in first.values()
              if matches(r["image_id"], patterns, ())
              and (wanted is None or r["image_id"] in wanted)]
    missing = sorted(wanted - set(first)) if wanted is not None else []
    return chosen, missing


def restore(archive_url: str, dest_url: str, include=None, ids=None, format: str = "original",
            ray_address: str | None = None, storage_options: dict | None = None, dest_options: dict | None = None,
            skip_existing: bool = False, progress=None, local_limit: int = LOCAL_LIMIT, exact: bool = False) -> dict:
    """Restore the selected images of ``archive_url`` under ``dest_url``. Returns a summary; ``summary["ok"]`` is
    False when a record could not be restored, a requested id is not in the archive, or a file the manifest
    says restores byte-exact came back as its pixels only. Outputs already in DEST are checked and rewritten when
    they differ (``repaired``), or trusted as they are with ``skip_existing``. With ``exact`` a selection that
    holds a record restoring pixel-exact only is refused (RestoreError, nothing written), and every file written
    is the source's bytes."""
    started = time.time()
    if format not in FORMATS:
        raise RestoreError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    arc = catalog.open_archive(archive_url, storage_options)
    checked = integrity.manifest_rows(arc, _COLUMNS)  # parts held against archive.json; bad ones left out, named
    wanted_ids = None if ids is None else read_ids(ids, storage_options)
    chosen, missing_ids = select(checked.rows, include, wanted_ids)
    unverified, _ = select(checked.unverified, include, wanted_ids)
    missing_ids = sorted(set(missing_ids) - {u["image_id"] for u in unverified})
    dest_fs, dest_root = fsspec.core.url_to_fs(dest_url, **(dest_options or {}))
    dest_root = dest_root.rstrip("/")
    if dest_fs.isfile(dest_root):
        raise RestoreError(f"destination {dest_url} is a file; give a folder (or bucket prefix) to restore into")

    if exact:
        refuse_inexact(chosen, format)
    names = output_names(chosen, format)
    results: list[dict] = [_res(u, "error", u["detail"]) for u in unverified]
    todo: list[dict] = []
    repairs: set[str] = set()
    existing = _existing(dest_fs, dest_root)
    for r in chosen:
        if r.get("offset") is None:
            results.append(_res(r, "not_archived", r.get("error") or "no record"))
            continue
        if not safe_relative(r["image_id"]):
            results.append(_res(r, "error", "image_id is not a safe relative path; not written"))
            continue
        r = {**r, "name": names[r["image_id"]], "exact": exact}
        size = existing.get(posixpath.join(dest_root, r["name"]))
        if size is not None and (skip_existing or _intact(dest_fs, dest_root, r, size, format)):
            results.append(_res(r, "skipped", "already restored"))
            continue
        if size is not None:
            repairs.add(r["image_id"])
        todo.append(r)

    done, total = 0, len(todo)
    if progress:
        progress(0, total)
    by_shard: dict[str, list[dict]] = {}
    for r in todo:
        by_shard.setdefault(r["shard"], []).append(r)
    for shard in sorted(by_shard):  # every row against its shard's index before any record is fetched
        by_shard[shard], bad = integrity.check_index(arc, shard, by_shard[shard])
        results += [_res(b, "error", b["detail"]) for b in bad]
        done += len(bad)
        if not by_shard[shard]:
            del by_shard[shard]
    in_process = _in_process(todo, local_limit, ray_address)
    if in_process:
        for shard, mine in sorted(by_shard.items()):
            out = restore_records(arc.fs, arc.shard_path(shard), mine, dest_fs, dest_root, format)
            results += out
            done += len(out)
            if progress:
                progress(done, total)
    else:
        import ray

        from .workers import connect

        connect(ray_address)  # the archive job's rules: existing session, address / RAY_ADDRESS, or local
        task = ray.remote(**catalog.task_options(ray, arc.fs, dest_fs))(_restore_records_task)
        pending = {}
        gpus = catalog.gpu_share(ray.cluster_resources())  # learned-codec records decode their network on a GPU
        for shard, mine in sorted(by_shard.items()):
            for batch in catalog.batches(mine, RUN_RECORDS):
                run = catalog.decode_task(task, batch, gpus)
                pending[run.remote(arc.fs, arc.shard_path(shard), batch, dest_fs, dest_root, format)] = batch
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            batch = pending.pop(ready[0])
            try:
                results += ray.get(ready[0])
            except Exception as exc:  # the task died after Ray's retries; a rerun resumes these
                why = f"restore task failed: {type(exc).__name__}: {one_line(exc)}"
                results += [_res(r, "error", why) for r in batch]
            done += len(batch)
            if progress:
                progress(done, total)

    for r in results:
        if r["status"] == "written" and r["image_id"] in repairs:
            r["status"] = "repaired"
    counts = Counter(r["status"] for r in results)
    written = [r for r in results if r["status"] in ("written", "repaired")]
    errors = [{"image_id": r["image_id"], "detail": r["detail"]} for r in results if r["status"] == "error"]
    return {
        "archive": archive_url,
        "dest": dest_url,
        "format": format,
        "ok": not errors and not missing_ids and not checked.problems
              and not any(r["detail"].startswith(PIXELS_ONLY) for r in written),
        "problems": checked.problems,
        "selected": len(chosen),
        "written": counts.get("written", 0) + counts.get("repaired", 0),
        "repaired": counts.get("repaired", 0),
        "repaired_ids": sorted(r["image_id"] for r in results if r["status"] == "repaired")[:100],
        "skipped": counts.get("skipped", 0),
        "not_archived": [{"image_id": r["image_id"], "detail": r["detail"]} for r in results
                         if r["status"] == "not_archived"],
        "errors": errors,
        "missing_ids": missing_ids,
        "ran": "in-process" if in_process else "ray",
        "converted": sum(1 for r in results if r["detail"].startswith("png (converted")),
        # written as the source's own bytes (sha256 checked), or as the same pixels in a file of pixark's making
        "exact": {"bytes": sum(1 for r in written if r["detail"].startswith(EXACT)),
                  "pixels": sum(1 for r in written if not r["detail"].startswith(EXACT))},
        "not_exact": [{"image_id": r["image_id"], "detail": r["detail"]} for r in written
                      if r["detail"].startswith(PIXELS_ONLY)],
        "bytes_written": sum(r["bytes"] for r in results),
        "seconds": round(time.time() - started, 2),
    }


def _in_process(todo: list[dict], local_limit: int, ray_address: str | None) -> bool:
    """Whether to decode here rather than on Ray: few records, and their learned-codec decodes (seconds each) cost
    less than starting a local Ray would. With a Ray already at hand (a session in this process, an address),
    learned-codec records go to its workers, which may have GPUs."""
    import os
    import sys

    if len(todo) > local_limit:
        return False
    learned = [r for r in todo if catalog.is_learned(r.get("codec"))]
    if not learned:
        return True
    ray = sys.modules.get("ray")
    if ray_address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return False
    megapixels = sum((r.get("width") or 0) * (r.get("height") or 0) for r in learned) / 1e6
    return megapixels / LEARNED_MP_PER_SECOND <= RAY_START_SECONDS


def _existing(fs, root: str) -> dict[str, int]:
    """Sizes of what DEST already holds (one listing, not one request per file)."""
    store.fresh(fs, root)
    try:
        return {store.text_name(p): int(d.get("size") or 0) for p, d in fs.find(root, detail=True).items()}
    except FileNotFoundError:
        return {}


def _intact(fs, root: str, row: dict, size: int, format: str) -> bool:
    """Whether the output already at the row's path is what restore would write: the source's own bytes (size,
    then sha256), or for re-encoded images a readable image with the archived pixels."""
    from pixark import codec as pc

    expected = _expected_size(row, format)
    if expected is not None and size != expected:
        return False
    try:
        data = fs.cat_file(store.os_name(fs, posixpath.join(root, row["name"])))
    except OSError:
        return False
    if expected is not None:
        return hashlib.sha256(data).hexdigest() == row.get("source_sha256")
    try:
        img = pc.load(data)
    except Exception:  # unreadable (truncated, damaged): rewrite it
        return False
    if converts(row, format):  # a PNG converted from a stored JPEG ...: no archived pixel hash to compare
        return img.pixels is not None and img.format == "PNG"
    return img.pixels is not None and img.pixel_sha256() == row.get("pixel_sha256")
