"""Code one source object into a manifest row and (usually) a record. Runs inside the Ray workers.

Policy (docs/FORMAT.md, "Manifests", status rules):
- unreadable object -> status failed, error, no record;
- pixels decoded -> the configured codec (default ``auto``), self-checked when ``verify``; if the codec fails, the
  original bytes are stored and the row is failed with the codec's error; a forced codec whose stream is not
  smaller than the file gives way to storing the file (invariant: never larger than storing it);
- no pixels (JPEG, a TIFF codec/tiff.py does not rewrite, animation, not an image, empty) -> stored as original bytes (codec ``store``), status ok
  with a note; but a file that looks like an image and does not decode is failed (its bytes are still stored).
  An intact JPEG under ``auto`` (or ``lepton``) is recompressed byte-exact by Lepton when that is smaller (no
  note); when Lepton refuses it, the note says why it was stored.

The codec API answers "can these pixels be recoded?" but not "is this stored JPEG intact?"; ``damage_reason``
fills that gap with a full Pillow decode of files kept as bytes (pipeline-side, no change to pixark.codec).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings

from pixark import codec as pc
from pixark.codec.image import NoPixels

from . import store

# Leading bytes of image formats: a file starting like this that Pillow cannot read is a damaged image, not a
# non-image object.
_IMAGE_MAGICS = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM",
                 b"\x00\x00\x00\x0cjXL", b"\xff\x0a", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


def _image_magic(data: bytes) -> bool:
    # RIFF is also WAV and AVI: only RIFF....WEBP is an image.
    return data.startswith(_IMAGE_MAGICS) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def damage_reason(img: pc.DecodedImage, data: bytes) -> str:
    """Why a file without recodable pixels is a damaged image ("" when it is intact or simply not an image)."""
    why = img.why
    if not data:
        return ""
    if why is NoPixels.SIZE:
        return ""  # decoding it fully is what the size bound exists to avoid
    if why is not None and why.on_purpose:
        # Readable header, pixels deliberately not recoded: make sure the image data itself decodes.
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
        except Exception as exc:
            return f"corrupt or truncated {img.format or 'image'} data: {type(exc).__name__}: {exc}"
        return ""
    if why is NoPixels.NOT_AN_IMAGE and not _image_magic(data):
        return ""
    if why is NoPixels.NOT_AN_IMAGE:
        # BMP's "BM" and the PNM "Pn" magics are two bytes: plain text can start with them. Only call such a file a
        # damaged image when it has a few non-text bytes as well.
        if data[:2] in (b"BM", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6") and _looks_like_text(data[:512]):
            return ""
        return _second_opinion(data)
    return img.reason


# Magic -> (format name, the line of imagecodecs' error that concerns it).
_FORMATS_BY_MAGIC = ((b"\x89PNG", "PNG", "PNG_DECODE"), (b"\xff\xd8\xff", "JPEG", "JPEG8_DECODE"),
                     (b"GIF8", "GIF", "GIF_DECODE"), (b"II*\x00", "TIFF", "TIFF_DECODE"), (b"MM\x00*", "TIFF", "TIFF_DECODE"),
                     (b"RIFF", "WebP", "WEBP_DECODE"), (b"BM", "BMP", "BMP_DECODE"),
                     (b"\x00\x00\x00\x0cjXL", "JPEG XL", "JPEGXL_DECODE"), (b"\xff\x0a", "JPEG XL", "JPEGXL_DECODE"))


def _second_opinion(data: bytes) -> str:
    """A file that starts like an image but that Pillow cannot identify: a variant Pillow lacks (some TIFFs) or
    damage. imagecodecs decides; only when it cannot decode the file either is the file called damaged."""
    fmt, key = next(((f, k) for m, f, k in _FORMATS_BY_MAGIC if data.startswith(m)), ("image", "")) \
        if _image_magic(data) else ("image", "")
    try:
        import imagecodecs

        imagecodecs.imread(data)
        return ""
    except ImportError:
        return ""  # no second decoder: do not call it damaged on Pillow's word alone
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if key and ln.startswith(key)), lines[0] if lines else type(exc).__name__)
        return f"corrupt or unreadable {fmt} data: {detail[:300]}"


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _recompress_jpeg(img: pc.DecodedImage, verify: bool) -> tuple[bytes | None, str | None]:
    """(lepton record, None), or (None, why Lepton refused the JPEG). ``_finish`` weighs the record against
    storing the file, as it does a forced codec's."""
    try:
        return pc.encode(img, "lepton", verify=verify), None
    except pc.CodecError as exc:
        return None, f"JPEG kept as original bytes: {exc}"


# Decoded pixels an archive batch codes together (``code_objects``): small images share the learned codec's
# network calls (docs/MSPSM.md, "Batched coding"), and at most about this many pixels are held at once.
BATCH_PIXELS = 1 << 22


def code_object(fs, path: str, image_id: str, url: str, size: int, codec: str, verify: bool,
                device: str | None = None) -> tuple[dict, bytes | None]:
    """(manifest row without shard/offset fields, record bytes or None). ``device``: where a learned codec runs
    its network ('cuda:N' on a GPU worker; None = cpu); the record is the same bytes either way."""
    return code_objects(fs, [(image_id, path, url, size)], codec, verify, device)[0]


def code_objects(fs, items: list[tuple[str, str, str, int]], codec: str, verify: bool, device: str | None = None,
                 batch_pixels: int | None = None) -> list[tuple[dict, bytes | None]]:
    """``code_object`` of each (image_id, path, url, size), in order, with the same rows and records, but the
    images with pixels are coded together (``pixark.codec.encode_many``) in groups of up to ``batch_pixels``
    pixels (default BATCH_PIXELS; an image larger than that alone). A row's ``encode_seconds`` is its own reading
    and decoding plus its pixels' share of its group's coding time."""
    budget = BATCH_PIXELS if batch_pixels is None else batch_pixels
    out: list = [None] * len(items)
    group: list = []  # (index, row, img, data, seconds so far)

    def flush():
        if not group:
            return
        t0 = time.perf_counter()
        records = pc.encode_many([g[2] for g in group], codec, verify=verify, device=device, return_exceptions=True)
        took = time.perf_counter() - t0
        total = sum(g[2].height * g[2].width for g in group) or 1
        for (n, row, img, data, spent), record in zip(group, records):
            out[n] = _finish(row, img, data, record, codec, verify, spent + took * img.height * img.width / total)
        group.clear()

    for n, (image_id, path, url, size) in enumerate(items):
        t0 = time.perf_counter()
        row, img, data = _read(fs, path, image_id, url, size)
        if img is None:
            row["encode_seconds"] = time.perf_counter() - t0
            out[n] = row, None
        elif img.pixels is None:
            out[n] = _finish(row, img, data, None, codec, verify, time.perf_counter() - t0)
        else:
            if group and sum(g[2].height * g[2].width for g in group) + img.height * img.width > budget:
                flush()
            group.append((n, row, img, data, time.perf_counter() - t0))
    flush()
    return out


def _read(fs, path: str, image_id: str, url: str, size: int) -> tuple[dict, pc.DecodedImage | None, bytes]:
    """The row so far, the loaded image (None: the object cannot be read; the row says why) and its bytes."""
    row: dict = {"image_id": image_id, "source_url": url, "source_bytes": size, "status": "ok"}
    try:
        data = fs.cat_file(store.os_name(fs, path))
    except Exception as exc:  # vanished, permission denied, network: recorded, never fatal for the job
        row.update(status="failed", error=f"cannot read source: {type(exc).__name__}: {exc}", compressed_bytes=0)
        return row, None, b""
    row["source_sha256"] = hashlib.sha256(data).hexdigest()
    if len(data) != size:
        row["source_bytes"] = len(data)  # changed since the listing: record what was archived
    img = pc.load(data)
    row["format"] = img.format or ""
    if img.pixels is not None:
        row.update(pixel_sha256=img.pixel_sha256(), width=img.width, height=img.height, channels=img.channels,
                   bit_depth=img.bit_depth, mode=img.mode)
    return row, img, data


def _finish(row: dict, img: pc.DecodedImage, data: bytes, record, codec: str, verify: bool, seconds: float
            ) -> tuple[dict, bytes]:
    """The row and record of a read object, given its coded ``record`` (None for an object without pixels, or the
    exception the codec raised)."""
    t0 = time.perf_counter()
    if isinstance(record, Exception):  # a codec bug or an image it cannot take: keep the bytes, flag the row
        row.update(status="failed", error=f"codec {codec} failed: {type(record).__name__}: {record}; original bytes stored")
        record = None
    elif img.pixels is None:
        damage = damage_reason(img, data)
        if damage:
            row.update(status="failed", error=damage)
            row["format"] = row["format"] or (
                next((f for m, f, _ in _FORMATS_BY_MAGIC if data.startswith(m)), "") if _image_magic(data) else "")
        else:
            # Pillow's own message names a BytesIO address: not worth keeping, and it would differ run to run.
            magic_fmt = next((f for m, f, _ in _FORMATS_BY_MAGIC if data.startswith(m)), "") if _image_magic(data) else ""
            if img.why is NoPixels.NOT_AN_IMAGE and magic_fmt:
                row["format"] = row["format"] or magic_fmt
                row["note"] = f"a {magic_fmt} file Pillow cannot read: kept as original bytes"
            elif img.why is NoPixels.NOT_AN_IMAGE or not img.reason:
                row["note"] = "not an image: kept as original bytes"
            else:
                row["note"] = img.reason
            if codec.partition(":")[0] in ("auto", "lepton") and img.format == "JPEG":
                record, row["note"] = _recompress_jpeg(img, verify)
    if record is None:
        record = pc.encode(img, "store")
    elif codec.partition(":")[0] != "auto" or img.pixels is None:
        # `auto` already never exceeds storing the file; a forced codec, or Lepton on a JPEG, can. Nothing grows in
        # the archive.
        stored = pc.encode(img, "store")
        if len(stored) <= len(record):
            name = "lepton" if img.pixels is None else codec
            row["note"] = f"{name} output ({len(record)} bytes) is not smaller than the file: kept as original bytes"
            record = stored
    head = pc.info(record)
    subpixels = (row.get("width") or 0) * (row.get("height") or 0) * (row.get("channels") or 0)
    row.update(codec=head["codec"], codec_params=json.dumps(head["params"], sort_keys=True), model_id=head["model_id"],
               restore_exact=head["restores"], compressed_bytes=len(record), bpsp=(len(record) * 8 / subpixels) if subpixels else None,
               encode_seconds=seconds + time.perf_counter() - t0)
    return row, record
