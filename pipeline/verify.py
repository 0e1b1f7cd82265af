"""Independent verification: a Ray job that reads only what the archive holds and proves every record decodes to
the pixels the manifest promises.

    summary = verify("s3://bucket/archive", sample=None, against_source=False)

Two kinds of Ray tasks, so one big shard still keeps every worker busy:
- one *shard task* per shard: object present, size as archive.json says, header/trailer/index intact (the index
  checksummed, its records tiling the object between header and index), index and manifest rows describing the
  same records (missing, extra rows); with ``hash_shards`` also the whole object's sha256 against archive.json;
- *record tasks* over runs of adjacent records (one ranged read per run): CRC32C, container decode (the decoder
  checks its own checksums and pixel hash), pixel_sha256 against the manifest, and with ``against_source`` the
  source object's sha256 and pixels.
A full verification reads every byte of every shard once: header, trailer and index by the shard task, the
records (which tile the rest) by the record tasks, each under its own checksum. ``hash_shards`` adds a second,
sequential read of each shard for the sha256 of the whole object (an end-to-end tie to archive.json for
external audits; it finds nothing the per-part checksums miss, at twice the I/O).
The driver checks archive.json against the listing of shards/ and manifests/, finds duplicate rows, and writes
ARCHIVE/verify/records.parquet (one row per record: image_id, status, detail, shard, offset) and
ARCHIVE/verify/summary.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import random
import time
from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from . import catalog, manifest, shards, store
from .errors import CorruptShard, UnsupportedShard, one_line

# Record statuses. Everything except OK, the kept states and ARCHIVE_FAILED is a mismatch and fails verification.
OK = "ok"
ARCHIVE_FAILED = "archive_failed"  # the archive job could not read this source; no record to decode
# manifest.KEPT (kept_unreadable, kept_uncoded): the archive kept the original bytes of a source that did not
# decode or code; verify checks those bytes and reports the row by the manifest's state.
SHARD_MISSING = "shard_missing"
TRUNCATED = "truncated"  # the record runs past the end of its shard object
CHECKSUM = "checksum_mismatch"  # record bytes do not match their CRC32C
CORRUPT = "corrupt_stream"  # the container does not decode (its own checksums, payload, or pixel hash)
UNSUPPORTED = "unsupported_stream"  # codec or version this build cannot decode
PIXELS = "pixel_mismatch"  # decoded pixels (or stored bytes) differ from the manifest's hashes
NOT_EXACT = "not_byte_exact"  # the PNG recipe does not rewrite the source file here (restore would give pixels)
NOT_IN_INDEX = "not_in_shard_index"  # a manifest row the shard's index does not hold (extra row)
MISSING_ROW = "missing_manifest_row"  # a record in a shard's index with no manifest row
DUPLICATE = "duplicate_row"  # an image_id listed more than once
NO_RECORD = "no_record"  # a row with status ok that points at no record
SOURCE = "source_mismatch"  # with against_source: the source object changed, vanished, or decodes differently
NOT_VERIFIED = "not_verified"  # the task checking this record died (worker lost, out of memory) after Ray's retries
NOT_OK = {SHARD_MISSING, TRUNCATED, CHECKSUM, CORRUPT, UNSUPPORTED, PIXELS, NOT_EXACT, NOT_IN_INDEX, MISSING_ROW,
          DUPLICATE, NO_RECORD, SOURCE, NOT_VERIFIED}

REPORT_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("status", pa.string()), ("detail", pa.string()),
    ("shard", pa.string()), ("offset", pa.int64()),
])
_COLUMNS = ["image_id", "source_url", "source_sha256", "pixel_sha256", "codec", "width", "height", "shard", "offset",
            "length", "record_crc32c", "status", "error", "duplicate_of", "generation"]
MAX_LISTED = 100  # mismatching records repeated in the summary (all of them are in records.parquet)
RUN_BYTES = 16 << 20  # one ranged read per run of adjacent records, at most this much
RUN_RECORDS = 64  # and at most this many records per task, so progress moves and work spreads


# ----------------------------------------------------------------------------------------------- worker side
def check_records(fs, shard_path: str, rows: list[dict], against_source: bool = False,
                  source_options: dict | None = None, device: str | None = None) -> list[dict]:
    """Check records of one shard (rows are manifest rows, adjacent records grouped into one ranged read).
    ``device``: where learned codecs decode (None = cpu)."""
    out = []
    for run in catalog.coalesce(rows, RUN_BYTES):
        try:
            datas = catalog.read_run(fs, shard_path, run)
        except FileNotFoundError:
            out += [_result(r, SHARD_MISSING, f"shard object {shard_path} does not exist") for r in run]
            continue
        # the run's records decode together (learned codecs share network calls), then each is judged alone
        pre = [_precheck(row, data) for row, data in zip(run, datas)]
        todo = [n for n, p in enumerate(pre) if p is None]
        for n, img in zip(todo, catalog.decode_many([run[n] for n in todo], [datas[n] for n in todo], device)):
            pre[n] = _judge(run[n], img, against_source, source_options)
        out += pre
    return out


def _check_records_task(fs, shard_path: str, rows: list[dict], against_source: bool = False,
                        source_options: dict | None = None) -> list[dict]:
    """check_records as a Ray task: decodes on the GPU Ray gave the task, if any (tasks ask for none yet)."""
    from .workers import task_device

    return check_records(fs, shard_path, rows, against_source, source_options, task_device())


def check_record(row: dict, data: bytes, against_source: bool = False, source_options: dict | None = None,
                 device: str | None = None) -> dict:
    return _precheck(row, data) or _judge(row, catalog.decode_many([row], [data], device)[0], against_source,
                                          source_options)


def _precheck(row: dict, data: bytes) -> dict | None:
    """The result of a record that fails before decoding (truncated, bad CRC32C), else None."""
    import crc32c

    if len(data) < row["length"]:
        end = row["offset"] + row["length"]
        return _result(row, TRUNCATED, f"record is bytes [{row['offset']}, {end}) of the shard but only {len(data)} "
                                       "of them exist: the shard is truncated")
    if row.get("record_crc32c") is not None and crc32c.crc32c(data) != row["record_crc32c"]:
        return _result(row, CHECKSUM, f"CRC32C {crc32c.crc32c(data):08x} != manifest {row['record_crc32c']:08x}")
    return None


def _judge(row: dict, img, against_source: bool = False, source_options: dict | None = None) -> dict:
    """The result of a record given its decoded image, or the exception its decode raised."""
    from pixark import codec as pc

    if isinstance(img, pc.UnsupportedStream):
        return _result(row, UNSUPPORTED, str(img))
    if isinstance(img, pc.CodecError):
        return _result(row, CORRUPT, str(img))
    if isinstance(img, Exception):  # a decoder failing in a way nobody foresaw is still a finding, not a crashed job
        return _result(row, CORRUPT, f"decoder raised {type(img).__name__}: {img}")
    if img.pixels is not None:
        got = pc.pixel_sha256(img.pixels)
        if row.get("pixel_sha256") and got != row["pixel_sha256"]:
            return _result(row, PIXELS, f"decoded pixel sha256 {got[:16]}... != manifest {row['pixel_sha256'][:16]}...")
        if img.metadata.png_recipe:  # the manifest says restore gives the file back: prove it here too
            try:
                got = hashlib.sha256(img.to_file(exact=True)).hexdigest()
            except pc.CodecError as exc:
                return _result(row, NOT_EXACT, str(exc))
            if row.get("source_sha256") and got != row["source_sha256"]:
                return _result(row, NOT_EXACT, f"rewritten PNG sha256 {got[:16]}... != manifest source_sha256")
    elif row.get("pixel_sha256"):
        return _result(row, PIXELS, "manifest lists pixels but the record holds none")
    else:  # a stored file: its bytes are the source's bytes
        got = hashlib.sha256(img.original or b"").hexdigest()
        if row.get("source_sha256") and got != row["source_sha256"]:
            return _result(row, PIXELS, f"stored bytes sha256 {got[:16]}... != manifest source_sha256")
    if against_source:
        problem = _against_source(row, img, source_options)
        if problem:
            return _result(row, SOURCE, problem)
    return _result(row, OK, "")


def _against_source(row: dict, img, source_options: dict | None) -> str:
    """'' when the source object still holds what was archived, else what differs."""
    import fsspec

    from pixark import codec as pc

    try:
        fs, path = fsspec.core.url_to_fs(row["source_url"], **(source_options or {}))
        data = fs.cat_file(store.os_name(fs, path))
    except FileNotFoundError:
        return f"source {row['source_url']} no longer exists"
    except Exception as exc:
        return f"source {row['source_url']} cannot be read: {type(exc).__name__}: {exc}"
    got = hashlib.sha256(data).hexdigest()
    if got != row.get("source_sha256"):
        return f"source sha256 {got[:16]}... != manifest {str(row.get('source_sha256'))[:16]}... (source changed?)"
    if img.pixels is not None:  # end to end: the source's own pixels equal the archive's, not just the hashes
        src = pc.load(data)
        if src.pixels is None or pc.pixel_sha256(src.pixels) != pc.pixel_sha256(img.pixels):
            return "source pixels differ from the decoded record"
    return ""


def check_shard(fs, shard_path: str, rows: list[dict], expected_bytes: int | None, expected_sha256: str | None,
                hash_it: bool) -> dict:
    """Shard-level checks. Returns {"problems": [...], "results": [rows for records without/with bad manifest rows]}."""
    name = posixpath.basename(shard_path)
    problems, results = [], []
    store.fresh(fs, shard_path)
    try:
        size = fs.size(shard_path)
    except FileNotFoundError:
        return {"problems": [f"shard {name} is missing"], "results": []}
    if expected_bytes is not None and size != expected_bytes:
        how = "truncated" if size < expected_bytes else "longer than recorded"
        problems.append(f"shard {name} is {how}: {size} bytes, archive.json says {expected_bytes}")
    try:
        index = shards.read_index(fs, shard_path)
    except (CorruptShard, UnsupportedShard) as exc:
        problems.append(f"shard {name}: cannot read its index ({exc})")
        index = None
    if index is not None:
        by_offset = index.by_offset()
        seen = set()
        for r in rows:
            e = by_offset.get(r["offset"]) if r.get("offset") is not None else None
            holder = r.get("duplicate_of") or r["image_id"]  # a duplicate shares the record its holder is indexed by
            if e is None or e.image_id != holder or e.length != r["length"]:
                got = "nothing" if e is None else f"{e.image_id!r} ({e.length} bytes)"
                results.append(_result(r, NOT_IN_INDEX, f"manifest says {r['image_id']!r} at offset {r['offset']} "
                                                        f"({r['length']} bytes); the shard index has {got} there"))
            else:
                seen.add(e.offset)
        for e in index.entries:
            if e.offset not in seen:
                results.append({"image_id": e.image_id, "status": MISSING_ROW, "shard": name, "offset": e.offset,
                                "detail": f"shard {name} holds this record ({e.length} bytes) but no manifest row "
                                          "lists it"})
    if hash_it and expected_sha256 and size == expected_bytes:
        h = hashlib.sha256()
        with fs.open(shard_path, "rb", block_size=8 << 20) as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        if h.hexdigest() != expected_sha256:
            problems.append(f"shard {name} sha256 {h.hexdigest()[:16]}... != archive.json {expected_sha256[:16]}...")
    return {"problems": problems, "results": results}


def _result(row: dict, status: str, detail: str) -> dict:
    out = {"image_id": row["image_id"], "status": status, "detail": detail, "shard": row.get("shard"),
           "offset": row.get("offset")}
    if row.get("status") not in (None, OK):
        out["archive_state"] = manifest.state(row["status"], row.get("offset") is not None,
                                              bool(row.get("pixel_sha256")))
        out["archive_error"] = row.get("error") or out["archive_state"]
    return out


# ----------------------------------------------------------------------------------------------- driver side
def listed_shards(meta: dict | None) -> dict[str, dict]:
    """archive.json's shard list (docs/FORMAT.md) as name -> entry."""
    return {s["name"]: s for s in (meta or {}).get("shards") or [] if isinstance(s, dict) and s.get("name")}


def parse_sample(sample) -> int | float | None:
    """--sample: a count (>= 1) or a fraction in (0, 1); None checks everything."""
    if sample is None or sample == "":
        return None
    if isinstance(sample, str):
        try:
            sample = float(sample) if any(c in sample for c in ".eE") else int(sample)
        except ValueError:
            raise ValueError(f"--sample takes a count (e.g. 100) or a fraction (e.g. 0.05), not {sample!r}") from None
    if isinstance(sample, float) and not sample.is_integer() or isinstance(sample, float) and sample < 1:
        if not 0 < sample < 1:
            raise ValueError(f"a sample fraction must be between 0 and 1, not {sample}")
        return sample
    if int(sample) < 1:
        raise ValueError(f"a sample count must be at least 1, not {sample}")
    return int(sample)


def verify(archive_url: str, sample=None, against_source: bool = False, ray_address: str | None = None,
           storage_options: dict | None = None, source_options: dict | None = None, seed: int | None = None,
           progress=None, hash_shards: bool = False) -> dict:
    """Verify the archive at ``archive_url``. Returns the summary (also written to ARCHIVE/verify/summary.json);
    ``summary["ok"]`` is False on any mismatch. ``progress(done, total)`` is called as records are checked.
    ``hash_shards``: also hash every shard object whole against archive.json (a second read of everything)."""
    started = time.time()
    sample = parse_sample(sample)
    arc = catalog.open_archive(archive_url, storage_options)
    problems: list[str] = []
    if arc.meta is None:
        problems.append(arc.meta_error)
    listed = listed_shards(arc.meta)

    # What the store holds now. Hidden names are a killed local commit's leftovers, not shards.
    present = {posixpath.basename(p) for p in store.list_now(arc.fs, arc.path("shards"))
               if not posixpath.basename(p).startswith(".")}
    table = catalog.read_manifest(arc, _COLUMNS) if arc.parts else None
    rows = table.to_pylist() if table is not None else []

    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    for name in sorted(listed):
        part = listed[name].get("manifest") or posixpath.basename(arc.part_path(name))
        if posixpath.basename(part) not in arc.parts:
            problems.append(f"manifest part {posixpath.basename(part)} for shard {name} is missing")
        if name not in present:
            problems.append(f"shard {name} listed in archive.json is missing")
    if arc.meta is not None:
        for name in sorted(set(by_shard) - set(listed)):
            problems.append(f"manifest rows refer to shard {name}, which archive.json does not list")
        listed_parts = {posixpath.basename(e.get("manifest") or arc.part_path(n)) for n, e in listed.items()}
        for part in sorted(set(arc.parts) - listed_parts):
            problems.append(f"manifest part {part} is not listed in archive.json")
        for name in sorted(present - set(listed) - set(by_shard)):
            problems.append(f"shard object {name} is neither in archive.json nor in any manifest part")
        for name, info in sorted(listed.items()):
            n = len(by_shard.get(name, []))
            if info.get("rows") is not None and name in by_shard and n != info["rows"]:
                problems.append(f"shard {name}: archive.json counts {info['rows']} rows, its manifest part has {n}")
        images = (arc.meta.get("totals") or {}).get("images")
        current = len(manifest.current_rows(rows))
        if images is not None and images != current:
            problems.append(f"archive.json totals {images} images, the manifest parts hold {current} current rows")

    results: list[dict] = []
    first_seen: dict[str, dict] = {}
    to_check: list[dict] = []
    for r in rows:
        prev = first_seen.get((r["image_id"], r.get("generation")))  # --update's newer generations are not duplicates
        if prev is not None:
            results.append(_result(r, DUPLICATE, f"{r['image_id']!r} is also listed in shard {prev['shard']} at "
                                                 f"offset {prev['offset']}"))
            continue
        first_seen[(r["image_id"], r.get("generation"))] = r
        if r.get("offset") is not None:
            to_check.append(r)  # failed rows with a record keep the source's original bytes: check those too
        elif r["status"] == "ok":
            results.append(_result(r, NO_RECORD, "status ok but the manifest gives no record (offset is null)"))
        else:
            results.append(_result(r, ARCHIVE_FAILED, r.get("error") or "no record"))
    if sample is not None and seed is None:
        seed = random.SystemRandom().randrange(1 << 31)  # reported in the summary, so the sample can be re-run
    sampled = _choose(to_check, sample, seed)
    touched = [arc.fs]
    if against_source and rows:
        source_fs = fsspec.core.url_to_fs(rows[0]["source_url"], **(source_options or {}))[0]
        touched.append(source_fs)
        if source_options is None and type(source_fs) is type(arc.fs):
            # Sources on the same kind of store as the archive (s3 -> s3) are read with the archive's endpoint and
            # credentials: the workers may not have the driver's environment or fsspec config.
            source_options = dict(arc.fs.storage_options)

    import ray

    from .workers import connect

    connect(ray_address)  # the archive job's rules: existing session, address / RAY_ADDRESS, or local
    opts = catalog.task_options(ray, *touched)
    shard_task = ray.remote(**opts)(check_shard)
    record_task = ray.remote(**opts)(_check_records_task)
    gpus = catalog.gpu_share(ray.cluster_resources())  # learned-codec records decode with their network on a GPU
    shard_names = sorted(set(listed) | set(by_shard))
    pending = {}
    for name in shard_names:
        info = listed.get(name, {})
        with_record = [r for r in by_shard.get(name, []) if r.get("offset") is not None]
        ref = shard_task.remote(arc.fs, arc.shard_path(name), with_record, info.get("bytes"), info.get("sha256"),
                                hash_shards)
        pending[ref] = (name, None)
    for name in shard_names:
        mine = [r for r in sampled if r["shard"] == name]
        for run in catalog.batches(mine, RUN_RECORDS):
            task = catalog.decode_task(record_task, run, gpus)
            ref = task.remote(arc.fs, arc.shard_path(name), run, against_source, source_options)
            pending[ref] = (name, run)
    done, total = 0, len(sampled)
    flagged: dict[tuple, dict] = {}  # (shard, offset) -> structural result that outranks a record's own check
    checked: list[dict] = []
    shard_problems: dict[str, list[str]] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name, run = pending.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except Exception as exc:  # the task died after Ray's retries: say what could not be checked, go on
            why = f"verification task failed: {type(exc).__name__}: {one_line(exc)}"
            out = {"problems": [f"shard {name}: {why}"], "results": []} if run is None else \
                [_result(r, NOT_VERIFIED, why) for r in run]
        if run is None:
            shard_problems[name] = out["problems"]
            for res in out["results"]:
                if res["status"] == MISSING_ROW:
                    results.append(res)
                else:
                    flagged[(res["shard"], res["offset"])] = res
        else:
            checked += out
            done += len(run)
            if progress:
                progress(done, total)
    problems += [p for name in sorted(shard_problems) for p in shard_problems[name]]
    for res in checked:
        # A row the index contradicts is reported as such even if its bytes happened to decode.
        res = flagged.pop((res["shard"], res["offset"]), res)
        if res["status"] == OK and res.get("archive_error") is not None:
            res = {**res, "status": res["archive_state"],
                   "detail": f"{res['archive_error']} (original bytes kept, intact)"}
        results.append(res)
    results += flagged.values()  # unsampled rows the index contradicts are reported too

    counts = Counter(r["status"] for r in results)
    mismatches = sum(n for s, n in counts.items() if s in NOT_OK)
    summary = {
        "archive": archive_url,
        "ok": not mismatches and not problems,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 2),
        "manifest_rows": len(rows),
        "records": len(to_check),
        "records_checked": len(sampled),
        "sample": None if sample is None else {"requested": sample, "checked": len(sampled), "seed": seed},
        "against_source": against_source,
        "shards": len(shard_names),
        "shards_hashed": hash_shards,
        "counts": dict(sorted(counts.items())),
        "mismatches": mismatches,
        "problems": problems,
        # the first mismatches, so a terminal or a JSON reader sees them without opening the Parquet report
        "mismatched_records": [{k: r.get(k) for k in REPORT_SCHEMA.names} for r in
                               sorted((r for r in results if r["status"] in NOT_OK),
                                      key=lambda r: (r.get("shard") or "", r.get("offset") or 0))][:MAX_LISTED],
    }
    summary["report"] = _write_report(arc, results, summary)
    return summary


def _choose(rows: list[dict], sample, seed: int | None) -> list[dict]:
    if sample is None:
        return rows
    n = sample if isinstance(sample, int) else max(1, round(sample * len(rows)))
    if n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


def _write_report(arc: catalog.Archive, results: list[dict], summary: dict) -> dict:
    results = sorted(results, key=lambda r: (r["status"] == OK, r["image_id"], r.get("shard") or ""))
    table = pa.Table.from_pylist([{k: r.get(k) for k in REPORT_SCHEMA.names} for r in results], schema=REPORT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    records_path, summary_path = arc.path("verify", "records.parquet"), arc.path("verify", "summary.json")
    store.put_bytes(arc.fs, records_path, buf.getvalue())
    report = {"records": _url(arc, records_path), "summary": _url(arc, summary_path)}
    store.put_bytes(arc.fs, summary_path, json.dumps({**summary, "report": report}, indent=2).encode())
    return report


def _url(arc: catalog.Archive, path: str) -> str:
    return arc.fs.unstrip_protocol(path)

