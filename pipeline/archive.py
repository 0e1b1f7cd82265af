"""The archive driver: plan, resume, schedule batches on the worker pool, write shards and manifests, archive.json.

Crash safety comes from three rules: (1) the plan (which object goes to which shard) is written once, before any
shard, and reused by every rerun, so a rerun rebuilds exactly the shards that are missing; (2) a shard's manifest
part is committed after its shard object and is its completion marker; (3) archive.json is written last. A kill -9
at any moment leaves at worst unfinished shards (no manifest part) that the rerun overwrites.

Records go back to the driver, which appends them to a local spool file in plan order and commits each shard on a
background thread while the workers keep coding. Work in flight is bounded (per-worker queue depth and at most a
few open shards), so memory stays bounded whatever the dataset size.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from . import manifest, shards, store
from .errors import ArchiveConflict, PipelineError, WorkerLost, one_line
from .sources import ShardPlan, SourceObject, changed_objects, content_keys, list_sources, plan_shards

ARCHIVE_VERSION = 1
PLAN_DIR = "plan"
PLAN_NAME = "plan-{:06d}.parquet"
# What an unfinished run must share with the rerun that completes it.
RESUME_KEYS = ("source", "codec", "shard_size", "include", "exclude", "verify")
PLAN_SCHEMA = pa.schema([("shard", pa.string()), ("image_id", pa.string()), ("source_path", pa.string()),
                         ("source_url", pa.string()), ("source_bytes", pa.int64()), ("source_version", pa.string())])


@dataclass
class ArchiveConfig:
    src: str
    dest: str
    codec: str = "auto"
    shard_size: int = 256 * 10**6
    workers: int | None = None
    gpus_per_worker: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    ray_address: str | None = None
    overwrite: bool = False
    extend: bool = False
    update: bool = False  # also archive sources changed since they were archived, as a new generation
    strict: bool = False
    verify: bool = True  # decode every record and compare pixels before trusting it
    follow_links: bool = True  # archive symlinks to files as those files (False: report them as skipped)
    src_options: dict = field(default_factory=dict)  # fsspec storage options
    dest_options: dict = field(default_factory=dict)
    batch_bytes: int = 4 * 10**6  # a Ray task codes up to this many source bytes ...
    batch_items: int = 8  # ... or this many objects
    queue_depth: int = 2  # batches queued per worker, so a worker never waits for the driver
    max_open_shards: int = 3  # bound on shards being filled at once (memory)
    max_restarts: int = 3  # per worker process; each lost batch is retried as often
    ready_timeout: float = 300.0
    slow_seconds: float = field(default_factory=lambda: float(os.environ.get("PIXARK_TEST_SLOW_SECONDS") or 0))

    def resume_config(self, source: str) -> dict:
        return {"source": source, "codec": self.codec, "shard_size": self.shard_size, "include": list(self.include),
                "exclude": list(self.exclude), "verify": self.verify}


class Events:
    """Progress callbacks; the CLI draws a rich progress bar from them. All no-ops here."""

    def start(self, total_images: int, total_bytes: int, done_images: int, done_bytes: int) -> None: ...
    def workers_ready(self, pool: list[dict]) -> None: ...
    def advance(self, images: int, source_bytes: int, out_bytes: int) -> None: ...
    def message(self, text: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Plan:
    generation: int
    path: str
    config: dict
    shards: list[ShardPlan]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


# ------------------------------------------------------------------------------------------------------ plans
def _write_plan(fs, root: str, generation: int, config: dict, shard_plans: list[ShardPlan]) -> Plan:
    rows = [(s.name, o.image_id, o.path, o.url, o.size, o.version) for s in shard_plans for o in s.items]
    table = pa.Table.from_arrays([pa.array([r[i] for r in rows], type=PLAN_SCHEMA.field(i).type)
                                  for i in range(len(PLAN_SCHEMA))], schema=PLAN_SCHEMA)
    meta = {b"pixark.plan": json.dumps({"generation": generation, "config": config, "created": _now(),
                                        "shards": [s.name for s in shard_plans]}).encode()}
    table = table.replace_schema_metadata(meta)
    path = posixpath.join(root, PLAN_DIR, PLAN_NAME.format(generation))
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    store.put_bytes(fs, path, buf.getvalue())
    return Plan(generation, path, config, shard_plans)


def _read_plans(fs, root: str) -> list[Plan]:
    plans = []
    for path in store.list_now(fs, posixpath.join(root, PLAN_DIR)):
        if not path.endswith(".parquet"):
            continue
        table = manifest.read_parquet(fs, path)
        meta = json.loads(table.schema.metadata[b"pixark.plan"])
        by_name: dict[str, ShardPlan] = {name: ShardPlan(name, meta["generation"]) for name in meta["shards"]}
        cols = table.to_pydict()
        versions = cols.get("source_version") or [""] * table.num_rows  # plans written before versions: none
        for name, iid, path_, url, size, version in zip(cols["shard"], cols["image_id"], cols["source_path"],
                                                       cols["source_url"], cols["source_bytes"], versions):
            by_name[name].items.append(SourceObject(iid, path_, url, size, version or ""))
        plans.append(Plan(meta["generation"], path, meta["config"], list(by_name.values())))
    plans.sort(key=lambda p: p.generation)
    return plans


def _read_archive_json(fs, root: str) -> dict | None:
    path = posixpath.join(root, "archive.json")
    if not store.exists_now(fs, path):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except ValueError as exc:
        raise ArchiveConflict(f"{path} is unreadable ({exc}); use --overwrite to start again") from exc


# ------------------------------------------------------------------------------------------------ the driver
def run_archive(cfg: ArchiveConfig, events: Events | None = None) -> dict:
    """Archive cfg.src into cfg.dest (see docs/FORMAT.md). Returns the summary dict printed by the CLI.
    Raises PipelineError subclasses for what the user must fix; a killed run is finished by calling it again."""
    events = events or Events()
    t0 = time.perf_counter()
    if cfg.overwrite and (cfg.extend or cfg.update):
        raise PipelineError(f"--overwrite and {'--update' if cfg.update else '--extend'} contradict each other: "
                            "pick one")
    _check_codec(cfg.codec)
    if cfg.workers is not None and cfg.workers < 1:
        raise PipelineError(f"--workers must be at least 1, not {cfg.workers} (leave it out for one per GPU or CPU)")
    if cfg.gpus_per_worker is not None and cfg.gpus_per_worker <= 0:
        raise PipelineError(f"--gpus-per-worker must be more than 0, not {cfg.gpus_per_worker}")
    src_fs, src_root = fsspec.core.url_to_fs(cfg.src, **cfg.src_options)
    dest_fs, dest_root = fsspec.core.url_to_fs(cfg.dest, **cfg.dest_options)
    src_root, dest_root = src_root.rstrip("/"), dest_root.rstrip("/")
    if dest_fs.isfile(dest_root):
        raise PipelineError(f"destination {cfg.dest} is a file; give a folder (or bucket prefix) for the archive")
    source = src_fs.unstrip_protocol(src_root)
    same_fs = type(src_fs) is type(dest_fs) and src_fs.storage_options == dest_fs.storage_options
    if same_fs and (dest_root == src_root or src_root.startswith(dest_root + "/")):
        raise PipelineError(f"destination {cfg.dest} contains the source {cfg.src}: choose a separate folder")
    skip = (dest_root,) if same_fs else ()

    if cfg.overwrite:
        # Only what an archive consists of (and reports about it): DEST may hold other things the user keeps.
        for name in ("archive.json", "manifests", PLAN_DIR, "shards", "verify", store.TMP_DIR):
            store.remove_tree(dest_fs, posixpath.join(dest_root, name))
    store.remove_stale_parts(dest_fs, dest_root)
    meta = _read_archive_json(dest_fs, dest_root)
    plans = _read_plans(dest_fs, dest_root)
    if not plans and store.list_now(dest_fs, posixpath.join(dest_root, "manifests")):
        raise ArchiveConflict(f"{cfg.dest} has manifests but no plan: not an archive this pixark can resume; "
                              "use --overwrite to start again or choose another destination")
    covered = int(meta.get("plans", 0)) if meta else 0
    pending = [p for p in plans if p.generation >= covered]
    want = cfg.resume_config(source)
    for p in pending:
        diff = {k: (p.config.get(k), want[k]) for k in RESUME_KEYS if p.config.get(k) != want[k]}
        if diff:
            raise ArchiveConflict(
                f"{cfg.dest} holds an unfinished run with another configuration "
                f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                "rerun it with the same options, or use --overwrite to start again")
    if plans and plans[0].config.get("source") != source:
        raise ArchiveConflict(f"{cfg.dest} archives {plans[0].config.get('source')}, not {source}; "
                              "use another destination or --overwrite")

    new_plan = None
    skipped: list[dict] = []  # entries the listing found but cannot archive (FIFOs, non-UTF-8 names ...)
    changed: list[SourceObject] = []
    if not plans or cfg.extend or cfg.update:
        objects = list_sources(src_fs, src_root, cfg.include, cfg.exclude, skip, skipped, cfg.follow_links)
        _say_skipped(skipped, events)
        planned = _planned(plans)
        changed = changed_objects(objects, planned)
        fresh_objects = [o for o in objects if o.image_id not in planned]
        if cfg.update:
            fresh_objects = sorted(fresh_objects + changed, key=lambda o: o.image_id)
        if fresh_objects or not plans:
            next_index = 1 + max((int(s.name.split("-")[1].split(".")[0]) for p in plans for s in p.shards), default=-1)
            shard_plans = plan_shards(fresh_objects, cfg.shard_size, next_index, len(plans),
                                      content_keys(src_fs, fresh_objects))
            new_plan = _write_plan(dest_fs, dest_root, len(plans), want, shard_plans)
            plans.append(new_plan)
            pending.append(new_plan)
        if not fresh_objects and plans and meta is not None and not pending:
            return _summary(cfg, dest_fs, dest_root, meta, t0, status="nothing-new", skipped=skipped,
                            changed=_ids(changed),
                            message=f"no new source objects under {cfg.src}: the archive already holds all "
                                    f"{meta['totals']['images']} of them" + _changed_hint(changed))
    elif meta is not None and not pending:
        objects = list_sources(src_fs, src_root, cfg.include, cfg.exclude, skip, skipped, cfg.follow_links)
        planned = _planned(plans)
        changed = changed_objects(objects, planned)
        n_new = sum(o.image_id not in planned for o in objects)
        hint = f"; {n_new} new source object(s) are not in it: add them with --extend" if n_new else ""
        return _summary(cfg, dest_fs, dest_root, meta, t0, status="already-complete", skipped=skipped,
                        changed=_ids(changed),
                        message=f"{cfg.dest} is already a complete archive of {cfg.src}: nothing to do{hint}"
                                + _changed_hint(changed))

    done_parts = {posixpath.basename(p) for p in store.list_now(dest_fs, posixpath.join(dest_root, "manifests"))}
    all_shards = [s for p in plans for s in p.shards]
    todo = [s for s in all_shards if manifest.part_name(s.name) not in done_parts]
    done = [s for s in all_shards if manifest.part_name(s.name) in done_parts]
    if done:
        events.message(f"resuming: {len(done)} of {len(all_shards)} shards are already complete")
    run_info: dict = {}
    if todo:
        events.start(sum(len(s.items) for s in all_shards), sum(s.source_bytes for s in all_shards),
                     sum(len(s.items) for s in done), sum(s.source_bytes for s in done))
        try:
            run_info = _execute(cfg, todo, src_fs, dest_fs, dest_root, events)
        finally:
            events.stop()
    meta = _write_archive_json(cfg, dest_fs, dest_root, source, plans, meta)
    message = ""
    if not all_shards:
        message = f"warning: {cfg.src} holds no objects" + (" matching --include/--exclude" if cfg.include or cfg.exclude else "")
    status = ("updated" if cfg.update else "extended") if (new_plan is not None and covered) else \
        ("resumed" if done else "complete")
    return _summary(cfg, dest_fs, dest_root, meta, t0, status=status, message=message, run=run_info,
                    shards_written=len(todo), shards_resumed=len(done), skipped=skipped,
                    changed=[] if cfg.update else _ids(changed), updated=_ids(changed) if cfg.update else [])


def _say_skipped(skipped: list[dict], events) -> None:
    for e in skipped[:20]:
        events.message(f"warning: not archived: {e['image_id']}: {e['reason']}")
    if len(skipped) > 20:
        events.message(f"warning: ... and {len(skipped) - 20} more entries not archived (listed in the summary)")


def _planned(plans: list[Plan]) -> dict[str, SourceObject]:
    """image_id -> its entry in the newest plan that holds it (what the archive's current row was made from)."""
    return {o.image_id: o for p in plans for s in p.shards for o in s.items}


def _ids(objects: list[SourceObject]) -> list[str]:
    return [o.image_id for o in objects]


def _changed_hint(changed: list[SourceObject]) -> str:
    if not changed:
        return ""
    shown = ", ".join(o.image_id for o in changed[:10]) + (" ..." if len(changed) > 10 else "")
    return (f"; {len(changed)} source object(s) changed since they were archived ({shown}): archive them with "
            "--update (their current records stay as they are until then)")


def _check_codec(spec: str) -> None:
    from pixark import codec as pc

    try:
        name, params = pc.parse_spec(spec)
        if name != "auto":
            pc.get(name).params(params)  # unknown parameters, wrong types and out-of-range values
    except (pc.CodecError, ValueError) as exc:
        raise PipelineError(f"bad --codec {spec!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------- execution
@dataclass
class _OpenShard:
    plan: ShardPlan
    batches: int
    writer: shards.ShardWriter
    rows: list = field(default_factory=list)
    held: dict = field(default_factory=dict)  # sha256 of a record -> (its index entry, image_id): duplicates share it
    next_batch: int = 0
    waiting: dict = field(default_factory=dict)  # batch index -> results that arrived out of order


def _batches(plan: ShardPlan, max_bytes: int, max_items: int) -> list[list[SourceObject]]:
    out, cur, size = [], [], 0
    for o in plan.items:
        if cur and (size + o.size > max_bytes or len(cur) >= max_items):
            out.append(cur)
            cur, size = [], 0
        cur.append(o)
        size += o.size
    if cur or not out:
        out.append(cur)
    return out


def _execute(cfg: ArchiveConfig, todo: list[ShardPlan], src_fs, dest_fs, dest_root: str, events: Events) -> dict:
    import ray

    from . import workers as W

    started_here = W.connect(cfg.ray_address)
    pin_node = None
    resources = None
    if store.is_local(src_fs):
        # A local source path exists on the driver's node only: the workers run there, sized by that node.
        pin_node, resources = W.this_node()
        if not resources.get("CPU"):
            raise PipelineError(f"the source {cfg.src} is a local path, but this driver's Ray node has no CPUs for "
                                "codec workers; put the source on a shared store (s3://...) or run the driver on a "
                                "worker node")
    n, cpus, gpus = W.plan_workers(cfg.workers, cfg.gpus_per_worker, resources)
    run_tag = uuid.uuid4().hex[:8]
    actors = W.start_pool(n, cpus, gpus, src_fs, cfg.codec, cfg.verify, cfg.slow_seconds, run_tag, cfg.max_restarts,
                          pin_node)
    spool_root = (posixpath.join(dest_root, store.TMP_DIR) if store.is_local(dest_fs) else None)
    if spool_root:
        os.makedirs(spool_root, exist_ok=True)  # same device as the shards: the commit is a rename
    spool = tempfile.mkdtemp(prefix="spool-", dir=spool_root)
    committer = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixark-commit")
    commits: list[cf.Future] = []
    info = {"workers": n, "cpus_per_worker": cpus, "gpus_per_worker": gpus, "pinned_to_driver_node": bool(pin_node)}
    try:
        info["pool"] = W.wait_ready(actors, cfg.ready_timeout)
        events.workers_ready(info["pool"])
        for err_text in sorted({p["warmup_error"] for p in info["pool"] if p["warmup_error"]}):
            events.message(f"warning: codec {cfg.codec!r} failed its warm-up on a worker ({err_text}); images it "
                           "cannot code are stored as original bytes and marked failed")
        # Small jobs get small batches, so that every worker has something to do (at least ~4 batches each).
        n_items = sum(len(s.items) for s in todo)
        per_batch = max(1, min(cfg.batch_items, -(-n_items // (4 * n))))
        queue = [(si, bi, b) for si, s in enumerate(todo)
                 for bi, b in enumerate(_batches(s, cfg.batch_bytes, per_batch))]
        n_batches = {}
        for si, _, _ in queue:
            n_batches[si] = n_batches.get(si, 0) + 1
        open_shards: dict[int, _OpenShard] = {}
        in_flight: dict = {}  # ref -> (shard index, batch index, items, actor index)
        load = [0] * n
        qi = 0
        while qi < len(queue) or in_flight:
            # Submit while some worker has room and the batch's shard may be opened.
            while qi < len(queue):
                si, bi, items = queue[qi]
                if si not in open_shards and len(open_shards) >= cfg.max_open_shards:
                    break
                ai = min(range(n), key=lambda i: load[i])
                if load[ai] >= cfg.queue_depth:
                    break
                if si not in open_shards:
                    open_shards[si] = _OpenShard(todo[si], n_batches[si], shards.ShardWriter(spool))
                ref = actors[ai].code.remote([(o.image_id, o.path, o.url, o.size) for o in items])
                in_flight[ref] = (si, bi, items, ai)
                load[ai] += 1
                qi += 1
            if not in_flight:
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                si, bi, items, ai = in_flight.pop(ref)
                load[ai] -= 1
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise WorkerLost(
                        f"codec worker {ai} died while coding {len(items)} object(s) of {todo[si].name} (first: "
                        f"{items[0].image_id!r}) and the retry budget ({cfg.max_restarts} restarts) is spent "
                        f"({one_line(exc)}). "
                        "Completed shards are kept; rerun the same command to finish.") from exc
                except ray.exceptions.RayTaskError as exc:
                    raise PipelineError(f"coding a batch of {todo[si].name} failed: "
                                        f"{one_line(getattr(exc, 'cause', None) or exc)}") from exc
                events.advance(len(results), sum(r["source_bytes"] for r, _ in results),
                               sum(len(rec) for _, rec in results if rec is not None))
                osh = open_shards[si]
                osh.waiting[bi] = results
                while osh.next_batch in osh.waiting:  # records go into the shard in plan order
                    for row, record in osh.waiting.pop(osh.next_batch):
                        row.update(shard=osh.plan.name, generation=osh.plan.generation)
                        row["status"] = manifest.state(row["status"], record is not None, bool(row.get("pixel_sha256")))
                        if record is not None:
                            _add_record(osh, row, record)
                        osh.rows.append(row)
                    osh.next_batch += 1
                if osh.next_batch == osh.batches:
                    del open_shards[si]
                    commits.append(committer.submit(_commit_shard, dest_fs, dest_root, osh))
            for f in [f for f in commits if f.done()]:
                f.result()  # surface commit errors now, not at the end
        for f in commits:
            f.result()
    finally:
        committer.shutdown(wait=True, cancel_futures=True)
        W.stop_pool(actors)
        shutil.rmtree(spool, ignore_errors=True)
        if spool_root:
            shutil.rmtree(spool_root, ignore_errors=True)  # only spool dirs live there
        if started_here:
            ray.shutdown()
    return info


def _add_record(osh: _OpenShard, row: dict, record: bytes) -> None:
    """Append ``row``'s record to the shard, or point the row at an identical record already there: same bytes,
    or same pixels with the same format and metadata, code to the same record (codecs are deterministic)."""
    key = hashlib.sha256(record).digest()
    held = osh.held.get(key)
    if held is None:
        e = osh.writer.add(row["image_id"], record)
        osh.held[key] = (e, row["image_id"])
        row.update(offset=e.offset, length=e.length, record_crc32c=e.crc32c)
    else:
        e, holder = held
        row.update(offset=e.offset, length=e.length, record_crc32c=e.crc32c, compressed_bytes=0,
                   duplicate_of=holder)


def _commit_shard(dest_fs, dest_root: str, osh: _OpenShard) -> None:
    shard_path = posixpath.join(dest_root, "shards", osh.plan.name)
    try:
        sinfo = osh.writer.commit(dest_fs, shard_path)
    finally:
        osh.writer.abort()
    records = sum(1 for r in osh.rows if r.get("offset") is not None and not r.get("duplicate_of"))
    table = manifest.to_table(osh.rows, {"shard": osh.plan.name, "shard_bytes": sinfo.shard_bytes,
                                         "shard_sha256": sinfo.sha256, "records": records, "rows": len(osh.rows),
                                         "plan": osh.plan.generation})
    # The part is the completion marker: only now does this shard count as done.
    manifest.write_part(dest_fs, posixpath.join(dest_root, "manifests", manifest.part_name(osh.plan.name)), table)


# --------------------------------------------------------------------------------------------- archive.json
def _write_archive_json(cfg: ArchiveConfig, fs, root: str, source: str, plans: list[Plan], old: dict | None) -> dict:
    shard_entries, tables = [], []
    plan_of = {s.name: p.generation for p in plans for s in p.shards}
    for name, gen in sorted(plan_of.items()):
        part = posixpath.join(root, "manifests", manifest.part_name(name))
        try:
            t = manifest.read_part(fs, part)
        except FileNotFoundError as exc:
            raise PipelineError(f"manifest part {part} is missing after the run: the shard was not recorded") from exc
        m = manifest.part_meta(t)
        tables.append(manifest.upgrade(t).replace_schema_metadata(None))
        cols = t.select(["source_bytes", "compressed_bytes"]).to_pydict()
        shard_entries.append({"name": name, "manifest": f"manifests/{manifest.part_name(name)}",
                              "records": m.get("records"), "rows": m.get("rows", t.num_rows),
                              "bytes": m.get("shard_bytes"), "sha256": m.get("shard_sha256"),
                              "manifest_sha256": hashlib.sha256(fs.cat_file(part)).hexdigest(),
                              "source_bytes": sum(cols["source_bytes"]),
                              "compressed_bytes": sum(v or 0 for v in cols["compressed_bytes"]), "plan": gen})
    table = pa.concat_tables(tables, promote_options="default") if tables else manifest.SCHEMA.empty_table()
    totals = totals_of(table)
    totals["shard_bytes"] = sum(e["bytes"] or 0 for e in shard_entries)
    doc = {
        "format": "pixark-archive", "archive_version": ARCHIVE_VERSION,
        "shard_format_version": shards.VERSION, "manifest_version": manifest.MANIFEST_VERSION,
        "container_version": _container_version(), "pixark_version": _pixark_version(),
        "created": (old or {}).get("created") or _now(), "updated": _now(), "source": source,
        "config": {"codec": cfg.codec, "shard_size": cfg.shard_size, "include": list(cfg.include),
                   "exclude": list(cfg.exclude), "workers": cfg.workers, "gpus_per_worker": cfg.gpus_per_worker,
                   "verify": cfg.verify},
        "codecs": codecs_of(table), "totals": totals, "shards": shard_entries, "plans": len(plans),
    }
    store.put_bytes(fs, posixpath.join(root, "archive.json"), json.dumps(doc, indent=2, ensure_ascii=False).encode())
    return doc


def _container_version() -> int:
    from pixark import codec as pc

    return pc.FORMAT_VERSION


def _pixark_version() -> str:
    try:
        from importlib.metadata import version

        return version("pixark")
    except Exception:
        return "unknown"


def totals_of(table: pa.Table) -> dict:
    """Counts over the current rows (the newest of each image_id); bytes stored count every record once."""
    d = table.select(["status", "source_bytes", "compressed_bytes", "length", "width", "height", "channels",
                      "image_id", "error", "duplicate_of", "generation", "pixel_sha256", "codec",
                      "restore_exact"]).to_pydict()
    d["status"] = [manifest.state(s, n is not None, bool(p)) for s, n, p in zip(d["status"], d["length"],
                                                                                d["pixel_sha256"])]
    current = manifest.current_mask(d["image_id"], d["generation"])
    rows = [i for i in range(len(current)) if current[i]]
    n = len(rows)
    failed = [i for i in rows if d["status"][i] != manifest.STATUS_OK]  # every row that did not code, kept or not
    with_rec = [i for i in rows if d["length"][i] is not None]
    src_rec = sum(d["source_bytes"][i] for i in with_rec)
    out_rec = sum(d["compressed_bytes"][i] or 0 for i in with_rec)
    pix = [i for i in with_rec if d["width"][i] and not d["duplicate_of"][i]]
    subpixels = sum(d["width"][i] * d["height"][i] * d["channels"][i] for i in pix)
    pix_bytes = sum(d["compressed_bytes"][i] for i in pix)
    old = [i for i in range(len(current)) if not current[i]]
    exact = [manifest.exactness({"codec": d["codec"][i], "restore_exact": d["restore_exact"][i]}) for i in with_rec]
    return {
        "images": n, "ok": n - len(failed),
        "kept_unreadable": sum(d["status"][i] == manifest.STATUS_KEPT_UNREADABLE for i in failed),
        "kept_uncoded": sum(d["status"][i] == manifest.STATUS_KEPT_UNCODED for i in failed),
        "failed": sum(d["status"][i] == manifest.STATUS_FAILED for i in failed),
        "records": sum(1 for i in with_rec if not d["duplicate_of"][i]),
        "duplicates": sum(1 for i in with_rec if d["duplicate_of"][i]),
        "superseded": len(old), "superseded_bytes": sum(d["compressed_bytes"][i] or 0 for i in old),
        "source_bytes": sum(d["source_bytes"][i] for i in rows), "compressed_bytes": out_rec,
        "ratio": round(src_rec / out_rec, 4) if out_rec else None,
        # what restore gives back (before deleting the sources): their bytes, or only their pixels and metadata
        "restore_exact": {k: sum(e == k for e, _ in exact) for k in (manifest.EXACT_BYTES, manifest.EXACT_PIXELS)},
        "restore_exact_inferred": sum(inferred for _, inferred in exact),
        "recoded": len(pix), "subpixels": subpixels, "bpsp": round(pix_bytes * 8 / subpixels, 4) if subpixels else None,
        "failures": [{"image_id": d["image_id"][i], "status": d["status"][i], "error": d["error"][i]}
                     for i in failed[:50]],
    }


def codecs_of(table: pa.Table) -> dict:
    from pixark import codec as pc

    d = table.select(["codec", "model_id"]).to_pydict()
    out: dict = {}
    for name, model in zip(d["codec"], d["model_id"]):
        if name is None:
            continue
        e = out.setdefault(name, {"records": 0, "model_ids": []})
        e["records"] += 1
        if model and model not in e["model_ids"]:
            e["model_ids"].append(model)
    for name, e in out.items():
        try:
            e["version"] = pc.get(name).version
        except pc.CodecError:
            e["version"] = None
    return out


def _summary(cfg: ArchiveConfig, fs, root: str, meta: dict, t0: float, status: str, message: str = "",
             run: dict | None = None, **extra) -> dict:
    totals = dict(meta["totals"])
    seconds = time.perf_counter() - t0
    return {"status": status, "message": message, "source": meta.get("source"), "dest": cfg.dest,
            "archive_json": fs.unstrip_protocol(posixpath.join(root, "archive.json")), "seconds": round(seconds, 3),
            "shards": len(meta["shards"]), **totals, **extra, "run": run or {}}
