"""What restore checks before it trusts an archive: manifests are data that may be damaged or tampered with.

``manifest_rows`` reads every manifest part on its own and holds it against archive.json: the part's sha256 (where
archive.json records it), its row count, and every shard archive.json lists must have a readable part. A part that
fails is not used; the ids of the shard's records (from the shard's own index) are named instead, so a damaged
archive restores what is intact and says exactly what it did not. Without archive.json the parts present are used,
and that is reported too. ``check_index`` then holds each wanted row against its shard's index (id, offset,
length, CRC32C): a row whose id, offset or length was changed never writes another record's bytes under its name.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa

from . import manifest, shards


@dataclass
class Checked:
    rows: list[dict] = field(default_factory=list)  # rows of parts that passed every check
    problems: list[str] = field(default_factory=list)  # archive-level findings, each a sentence
    unverified: list[dict] = field(default_factory=list)  # {"image_id", "detail"}: records of rejected parts


def manifest_rows(arc, columns: list[str]) -> Checked:
    out = Checked()
    listed: dict[str, dict] | None = None
    if arc.meta is None:
        out.problems.append(f"{arc.meta_error}: restoring from the manifest parts present, which nothing vouches "
                            "for as complete (rerun pixark archive to finish it)")
    else:
        entries = arc.meta.get("shards")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                    for e in entries):
            out.problems.append("archive.json has no readable shard list: restoring from the manifest parts present")
        else:
            listed = {manifest.part_name(e["name"]): e for e in entries}
            _check_totals(arc.meta, entries, out)
    for part, path in sorted(arc.parts.items()):
        entry = (listed or {}).get(part, {})
        shard = entry.get("name") or posixpath.splitext(part)[0] + shards.EXTENSION
        why = _part_problem(arc, path, entry, columns, out)
        if why:
            _reject(arc, shard, f"manifest part {part} {why}", out)
    for part, entry in sorted((listed or {}).items()):
        if part not in arc.parts:
            _reject(arc, entry["name"], f"manifest part {part} is missing", out)
    _resolve_duplicates(arc, out)
    return out


def _resolve_duplicates(arc, out: Checked) -> None:
    """An image_id in two rows (a damaged id: plans never repeat one): keep the rows their shard's index confirms,
    report the others, so a row renamed onto another file's name cannot hide that file."""
    seen: dict[str, list[int]] = {}
    for i, r in enumerate(out.rows):
        seen.setdefault(r["image_id"], []).append(i)
    drop = set()
    for image_id, idx in seen.items():
        if len(idx) < 2:
            continue
        for i in idx:
            r = out.rows[i]
            if r.get("offset") is None:
                continue
            good, bad = check_index(arc, r["shard"], [r])
            if bad:
                drop.add(i)
                out.problems.append(f"manifest part {r['manifest_part']}: a row names {image_id!r}, which another "
                                    f"row also names, and shard {r['shard']}'s index says otherwise: the part is damaged")
    out.rows = [r for i, r in enumerate(out.rows) if i not in drop]


def _part_problem(arc, path: str, entry: dict, columns: list[str], out: Checked) -> str:
    """Read one part into ``out.rows``; return why it cannot be trusted instead ('' when it can)."""
    try:
        if entry.get("manifest_sha256"):
            if hashlib.sha256(arc.fs.cat_file(path)).hexdigest() != entry["manifest_sha256"]:
                return "does not match the sha256 archive.json records for it (damaged or changed)"
        table = manifest.upgrade(manifest.read_part(arc.fs, path))  # older versions gain the new columns
        if entry and isinstance(entry.get("rows"), int) and table.num_rows != entry["rows"]:
            return f"has {table.num_rows} rows, archive.json says {entry['rows']}"
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            return f"lacks column(s) {missing}"
        rows = table.select(columns).append_column(
            "manifest_part", pa.array([posixpath.basename(path)] * table.num_rows, pa.string())).to_pylist()
    except Exception as exc:  # Parquet damage shows up lazily (names, pages), or a newer schema: this part's fault
        return f"is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    shard = entry.get("name") or posixpath.splitext(posixpath.basename(path))[0] + shards.EXTENSION
    for r in rows:
        why = _row_problem(r, shard)
        if why:
            return f"has a damaged row ({why})"
    records = sum(r["offset"] is not None and not r.get("duplicate_of") for r in rows)  # duplicates share one
    if entry and isinstance(entry.get("records"), int) and records != entry["records"]:
        return f"has {records} records, archive.json says {entry['records']}"
    out.rows += rows
    return ""


def _row_problem(r: dict, shard: str) -> str:
    """What is structurally wrong with one manifest row ('' when nothing): checked before anything uses it."""
    if not isinstance(r.get("image_id"), str) or not r["image_id"]:
        return "no image_id"
    if r.get("shard") != shard:
        return f"{r['image_id']!r} names shard {r.get('shard')!r}, not its part's {shard}"
    offset, length = r.get("offset"), r.get("length")
    if (offset is None) != (length is None) or (offset is not None and (offset < 0 or length < 0)):
        return f"{r['image_id']!r} has offset {offset} and length {length}"
    return ""


def _reject(arc, shard: str, why: str, out: Checked) -> None:
    """A shard whose manifest part is not trusted: its records are not restored; name them from its index."""
    try:
        ids = [e.image_id for e in shards.read_index(arc.fs, arc.shard_path(shard)).entries]
    except Exception as exc:  # shard missing or damaged too: say so, there is nothing to name them from
        out.problems.append(f"{why}; shard {shard} cannot name its records either "
                            f"({type(exc).__name__}: {str(exc)[:200]}): none of them are restored")
        return
    out.problems.append(f"{why}: the {len(ids)} records of shard {shard} are not restored")
    out.unverified += [{"image_id": i, "detail": f"not restored: {why}"} for i in ids]


def _check_totals(meta: dict, entries: list[dict], out: Checked) -> None:
    totals = meta.get("totals") if isinstance(meta.get("totals"), dict) else {}
    rows = sum(e["rows"] for e in entries if isinstance(e.get("rows"), int))
    superseded = totals.get("superseded") if isinstance(totals.get("superseded"), int) else 0  # older generations
    if isinstance(totals.get("images"), int) and totals["images"] + superseded != rows:
        out.problems.append(f"archive.json counts {totals['images']} images (and {superseded} superseded rows) but "
                            f"its shard list {rows} rows: "
                            "archive.json is damaged")


def check_index(arc, shard: str, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows the shard's index confirms, {"image_id", "detail"} for the others). A confirmed row takes its CRC32C
    from the index when the manifest's is missing."""
    try:
        by_offset = shards.read_index(arc.fs, arc.shard_path(shard)).by_offset()
    except Exception as exc:
        return [], [{"image_id": r["image_id"], "detail": f"shard {shard}: {type(exc).__name__}: {str(exc)[:200]}"}
                    for r in rows]
    good, bad = [], []
    ids = {r["image_id"] for r in rows}
    for r in rows:
        e = by_offset.get(r["offset"])
        holder = r.get("duplicate_of") or r["image_id"]  # a duplicate's row points at its holder's record
        if (e is None or e.image_id != holder or e.length != r["length"]
                or r.get("record_crc32c") not in (None, e.crc32c)):
            there = f" (the index has {e.image_id!r} there)" if e is not None and e.image_id != holder else ""
            bad.append({"image_id": r["image_id"], "detail": f"manifest row does not match shard {shard}'s index "
                        f"(id, offset, length or CRC){there}: the manifest is damaged; not written"})
            if there and e.image_id not in ids:  # the file the record really is: named, not silently missing
                ids.add(e.image_id)
                bad.append({"image_id": e.image_id, "detail": f"not restored: the manifest row for its record in "
                            f"shard {shard} is damaged (it names {r['image_id']!r})"})
        else:
            good.append({**r, "record_crc32c": e.crc32c})
    return good, bad
