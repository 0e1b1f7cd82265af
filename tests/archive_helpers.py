"""Building source folders for the archive tests and checking an archive against its sources."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from pathlib import Path

import numpy as np
from PIL import Image

from pixark import codec as pc


def crop_png(path: Path, size: int = 64) -> bytes:
    """A small crop of a real image (keeps the tests fast; still real photo content)."""
    arr = np.asarray(Image.open(path).convert("RGB"))[:size, :size]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def odd_source(dev_images: list[Path], size: int = 64) -> dict[str, bytes]:
    """relative path -> bytes: real crops (PNG, JPEG, grey, palette GIF), nested folders, unicode and spaces, a
    truncated PNG, an empty file, a text file, a damaged JPEG."""
    files: dict[str, bytes] = {}
    for i, p in enumerate(dev_images):
        files[f"{p.parent.name}/{p.stem}.png"] = crop_png(p, size)
    rgb = np.asarray(Image.open(dev_images[0]).convert("RGB"))[:size, :size]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    files["photos/a photo ü.jpg"] = jpeg
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(buf, format="PNG")
    files["deep/nested/dir/grey ☃.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=32).save(buf, format="GIF")
    files["gifs/palette.gif"] = buf.getvalue()
    files["broken/truncated.png"] = files[f"{dev_images[1].parent.name}/{dev_images[1].stem}.png"][:700]
    files["broken/damaged.jpg"] = jpeg[: len(jpeg) // 2]
    files["empty.png"] = b""
    files["notes/readme.txt"] = "not an image, but it is in the dataset\n".encode()
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def check_archive(fs, root: str, files: dict[str, bytes]) -> list[dict]:
    """Every source object has exactly one row whose hashes match the source; every record decodes to the source
    pixels (or its exact bytes); archive.json agrees with the shards. Returns the rows."""
    from pixark.pipeline import manifest, shards

    rows = manifest.read_manifests(fs, root).to_pylist()
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate manifest rows"
    assert set(ids) == set(files), f"missing {set(files) - set(ids)}, extra {set(ids) - set(files)}"
    for r in rows:
        data = files[r["image_id"]]
        assert r["source_sha256"] == hashlib.sha256(data).hexdigest(), (r["image_id"], r["status"], r["error"])
        assert r["source_bytes"] == len(data)
        assert r["status"] in ("ok", "kept_unreadable", "kept_uncoded")  # every source here is readable
        assert r["offset"] is not None, f"{r['image_id']} has no record"
        record = shards.read_record(fs, posixpath.join(root, "shards", r["shard"]), r["offset"], r["length"],
                                    r["record_crc32c"])
        img = pc.decode(record)
        src = pc.load(data)
        if src.pixels is not None:
            assert r["pixel_sha256"] == src.pixel_sha256() == pc.pixel_sha256(img.pixels)
            assert (r["width"], r["height"], r["channels"]) == (src.width, src.height, src.channels)
        else:
            assert r["codec"] in ("store", "lepton") and img.to_file("original") == data
            assert r["codec"] == "store" or (r["format"] == "JPEG" and r["status"] == "ok")
        assert json.loads(r["codec_params"]) == pc.info(record)["params"]
        assert len(record) <= len(pc.encode(data, "store")), "larger than storing the file"
        # A duplicate shares its holder's record and adds no bytes.
        assert r["compressed_bytes"] == (0 if r.get("duplicate_of") else len(record))
    meta = json.loads(fs.cat_file(posixpath.join(root, "archive.json")))
    assert meta["totals"]["images"] == len(files)
    for s in meta["shards"]:
        blob = fs.cat_file(posixpath.join(root, "shards", s["name"]))
        assert hashlib.sha256(blob).hexdigest() == s["sha256"] and len(blob) == s["bytes"]
        shards.check_shard(blob)
    return rows
