"""What compression saved: totals and distributions from the manifests, plus an optional sample re-encoded with
classical codecs in the same run, so the savings against png, webp-ll and jxl-ll are measured, not assumed.

    report = audit("s3://bucket/archive", baseline_sample=20, plot="audit.png")
"""

from __future__ import annotations

import hashlib
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor

from . import catalog, manifest

BASELINE_CODECS = ("png", "webp-ll", "jxl-ll")
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
# Image size buckets by megapixels (upper bounds). Files kept as their bytes were never decoded: they get a bucket
# by format (a JPEG has pixels, pixark just does not recode them), and files that are not images one of their own.
SIZE_BUCKETS = ((0.1, "<0.1 MP"), (0.5, "0.1-0.5 MP"), (1.0, "0.5-1 MP"), (4.0, "1-4 MP"), (16.0, "4-16 MP"),
                (math.inf, ">=16 MP"))
NOT_IMAGES = "not images"
ROOT_FOLDER = "(top level)"
PLOT_FOLDERS = 30  # folders drawn in the savings chart (largest by source bytes)
CLIP_PERCENT = 100  # savings below -100% are drawn clipped, with their value printed
_COLUMNS = ["image_id", "source_bytes", "width", "height", "channels", "bit_depth", "format", "codec",
            "compressed_bytes", "shard", "offset", "length", "record_crc32c", "status", "generation", "restore_exact"]


def folder_of(image_id: str) -> str:
    return posixpath.dirname(image_id) or ROOT_FOLDER


def size_bucket(width: int, height: int, format: str = "") -> str:
    if not width or not height:
        return f"{format} files, not decoded" if format else NOT_IMAGES
    mp = width * height / 1e6
    return next(label for bound, label in SIZE_BUCKETS if mp < bound)


class _Totals:
    """Running sums for one group. bpsp counts only images with pixels: stored non-images have no subpixels."""

    def __init__(self) -> None:
        self.images = self.source_bytes = self.compressed_bytes = 0
        self.pixel_images = self.pixel_source_bytes = self.pixel_compressed_bytes = self.subpixels = 0

    def add(self, row: dict) -> None:
        self.images += 1
        self.source_bytes += row["source_bytes"]
        self.compressed_bytes += row["compressed_bytes"]
        sub = row["subpixels"]
        if sub:
            self.pixel_images += 1
            self.subpixels += sub
            self.pixel_compressed_bytes += row["compressed_bytes"]

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "source_bytes": self.source_bytes,
            "compressed_bytes": self.compressed_bytes,
            "saved_bytes": self.source_bytes - self.compressed_bytes,
            "ratio": _ratio(self.source_bytes, self.compressed_bytes),
            "savings": _savings(self.compressed_bytes, self.source_bytes),
            "subpixels": self.subpixels,
            "bpsp": round(self.pixel_compressed_bytes * 8 / self.subpixels, 4) if self.subpixels else None,
        }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _savings(compressed: int, reference: int) -> float | None:
    """Fraction of ``reference`` bytes that compression saved (negative: larger than the reference)."""
    return round(1 - compressed / reference, 4) if reference else None


def _grouped(rows: list[dict], key) -> dict[str, dict]:
    groups: dict[str, _Totals] = {}
    for r in rows:
        groups.setdefault(key(r), _Totals()).add(r)
    return {k: groups[k].as_dict() for k in sorted(groups)}


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values: list[float], bins: int = 20) -> dict:
    if not values:
        return {"count": 0, "quantiles": {}, "histogram": {"edges": [], "counts": []}, "mean": None}
    vals = sorted(values)
    lo, hi = vals[0], vals[-1]
    if hi == lo:
        hi = lo + 1e-9
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return {
        "count": len(vals),
        "mean": round(sum(vals) / len(vals), 4),
        "quantiles": {f"p{round(q * 100)}": round(quantile(vals, q), 4) for q in QUANTILES},
        "histogram": {"edges": [round(lo + i * width, 4) for i in range(bins + 1)], "counts": counts},
    }


def _rows(arc: catalog.Archive) -> tuple[list[dict], list[dict]]:
    """(rows with a record, rows without one) from the manifests, with subpixels computed. Rows with a record include
    sources that failed to decode but were kept as their original bytes: they take space in the archive too. Only
    current rows (a duplicate's compressed_bytes is 0: it shares another row's record)."""
    table = catalog.read_manifest(arc, _COLUMNS)
    stored, missing = [], []
    for r in manifest.current_rows(table.to_pylist()):
        for k in ("source_bytes", "compressed_bytes", "width", "height", "channels"):
            r[k] = int(r[k] or 0)
        r["subpixels"] = r["width"] * r["height"] * r["channels"]
        (stored if r["offset"] is not None else missing).append(r)
    return stored, missing


def baseline_sample(rows: list[dict], n: int) -> list[dict]:
    """``n`` archived images with pixels, chosen by a hash of their id: the same archive gives the same sample."""
    candidates = [r for r in rows if r["subpixels"] and r["status"] == "ok"]
    candidates.sort(key=lambda r: hashlib.sha256(r["image_id"].encode()).hexdigest())
    return candidates[:n]


def _reencode(arc: catalog.Archive, row: dict) -> dict:
    """Read one record, decode it (pixels are checked against their hash by the decoder), re-encode it."""
    from pixark import codec as pc

    out = {"image_id": row["image_id"], "archive_bytes": row["compressed_bytes"], "subpixels": row["subpixels"],
           "codecs": {}, "error": ""}
    try:
        stream = catalog.read_stream(arc, row["shard"], row["offset"], row["length"], row["record_crc32c"])
        img = pc.decode(stream)
    except Exception as exc:  # a damaged record is verify's business; the audit skips it and says why
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    for name in BASELINE_CODECS:
        codec = pc.get(name)
        if codec.supports(img) is None:
            out["codecs"][name] = len(pc.encode(img, name))
    return out


def run_baseline(arc: catalog.Archive, rows: list[dict], n: int, threads: int = 2) -> dict:
    sample = baseline_sample(rows, n)
    # The classical encoders release the GIL, so a couple of threads use both cores without Ray.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda r: _reencode(arc, r), sample))
    done = [r for r in results if not r["error"]]
    codecs = {}
    for name in BASELINE_CODECS:
        have = [r for r in done if name in r["codecs"]]
        archive_bytes = sum(r["archive_bytes"] for r in have)
        codec_bytes = sum(r["codecs"][name] for r in have)
        sub = sum(r["subpixels"] for r in have)
        codecs[name] = {
            "images": len(have),
            "bytes": codec_bytes,
            "archive_bytes": archive_bytes,
            "bpsp": round(codec_bytes * 8 / sub, 4) if sub else None,
            "archive_bpsp": round(archive_bytes * 8 / sub, 4) if sub else None,
            # fraction of what this codec would have stored that the archive saved
            "savings": _savings(archive_bytes, codec_bytes),
        }
    return {
        "requested": n,
        "images": len(done),
        "skipped": [{"image_id": r["image_id"], "error": r["error"]} for r in results if r["error"]],
        "codecs": codecs,
    }


def audit(archive_url: str, baseline_sample: int = 0, plot: str | None = None,
          storage_options: dict | None = None) -> dict:
    """Report what the archive at ``archive_url`` saved. ``baseline_sample`` images are re-encoded with png,
    webp-ll and jxl-ll for comparison; ``plot`` (a local path or fsspec URL, .png) gets a chart."""
    if baseline_sample < 0:
        raise ValueError("baseline_sample must be >= 0")
    arc = catalog.open_archive(archive_url, storage_options)
    ok, missing = _rows(arc)
    overall = _Totals()
    for r in ok:
        overall.add(r)
    report = {
        "archive": archive_url,
        "images": len(ok) + len(missing),
        "archived": len(ok),  # rows with a record (coded, or kept as original bytes)
        # kept: original bytes stored for a source that did not decode or code; failed: no record at all
        "kept": sum(manifest.state(r["status"], True, bool(r["subpixels"])) in manifest.KEPT for r in ok),
        "failed": len(missing),
        "not_archived": len(missing),  # no record at all: the source could not be read
        "not_archived_source_bytes": sum(r["source_bytes"] for r in missing),
        "totals": overall.as_dict(),
        # what restore gives back: the files' own bytes, or their pixels and metadata in a file pixark writes
        "restore_exact": {k: sum(manifest.exactness(r)[0] == k for r in ok)
                          for k in (manifest.EXACT_BYTES, manifest.EXACT_PIXELS)},
        "restore_exact_inferred": sum(manifest.exactness(r)[1] for r in ok),  # rows written before the column
        "by_exact": _grouped(ok, lambda r: manifest.exactness(r)[0]),
        "by_codec": _grouped(ok, lambda r: r["codec"]),
        "by_folder": _grouped(ok, lambda r: folder_of(r["image_id"])),
        "by_size": _grouped(ok, lambda r: size_bucket(r["width"], r["height"], r["format"] or "")),
        # 8-bit and deeper images apart: a 16-bit sample costs about twice the bits, and would make two humps
        "bpsp_distribution": _bpsp(ok, 8),
        "bpsp_distribution_16bit": _bpsp(ok, 16),
        "baseline": run_baseline(arc, ok, baseline_sample) if baseline_sample else None,
    }
    if plot:
        draw(report, plot)
        report["plot"] = plot
    return report


def _bpsp(rows: list[dict], depth: int) -> dict:
    """bpsp distribution of the images of bit depth ``depth`` (8: up to 8 bits, 16: deeper)."""
    deep = depth > 8
    return distribution([r["compressed_bytes"] * 8 / r["subpixels"] for r in rows
                         if r["subpixels"] and (int(r["bit_depth"] or 8) > 8) == deep])


def draw(report: dict, url: str) -> None:
    """Two panels: the bits-per-subpixel histogram, and savings by folder against the source bytes (and, when a
    baseline ran, the sample's savings against each classical codec)."""
    import io

    import fsspec
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dist = report["bpsp_distribution"]
    folders = report["by_folder"]
    base = report.get("baseline") or {}
    n_bars = len(folders) + len(base.get("codecs", {}))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.5, 0.35 * n_bars + 1.5)),
                                   gridspec_kw={"width_ratios": [1, 1.2]})
    hist = dist["histogram"]
    if dist["count"]:
        edges, counts = hist["edges"], hist["counts"]
        ax1.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge",
                color="#4c72b0", edgecolor="white")
        med = dist["quantiles"]["p50"]
        ax1.axvline(med, color="#c44e52", linestyle="--", label=f"median {med:.2f}")
        ax1.axvline(dist["mean"], color="#55a868", linestyle=":", label=f"mean {dist['mean']:.2f}")
        ax1.legend()
    else:
        ax1.text(0.5, 0.5, "no images with pixels", ha="center", va="center", transform=ax1.transAxes)
    ax1.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.set_xlabel("bits per subpixel")
    ax1.set_ylabel("images")
    deep = report.get("bpsp_distribution_16bit") or {}
    apart = (f"; {deep['count']} deeper not drawn, median {deep['quantiles']['p50']:.2f}" if deep.get("count")
             else "")
    ax1.set_title(f"bpsp distribution ({dist['count']} 8-bit images{apart})")

    labels, values, colors = [], [], []
    # The biggest folders by source bytes; a bar per folder stops being readable after a few dozen.
    shown = sorted(folders.items(), key=lambda kv: -kv[1]["source_bytes"])[:PLOT_FOLDERS]
    for name, t in sorted(shown):
        labels.append(f"{name} ({t['images']})")
        values.append(None if t["savings"] is None else 100 * t["savings"])
        colors.append("#4c72b0")
    if len(folders) > len(shown):
        ax2.text(0.01, 0.01, f"{len(folders) - len(shown)} smaller folders not shown", transform=ax2.transAxes,
                 fontsize=8, color="gray")
    for name, c in (base.get("codecs") or {}).items():
        if c["images"]:
            labels.append(f"sample vs {name} ({c['images']})")
            values.append(None if c["savings"] is None else 100 * c["savings"])
            colors.append("#dd8452")
    # Tiny files kept as bytes can be several times larger than their source (container header): clip those bars
    # so they do not squash the others, and print the true value.
    known = [v for v in values if v is not None]
    lo = max(min(known + [0]), -CLIP_PERCENT)
    hi = max(known + [0])
    y = list(range(len(labels)))[::-1]
    ax2.barh(y, [0 if v is None else max(v, lo) for v in values], color=colors)
    ax2.set_yticks(y, labels)
    for yi, v in zip(y, values):
        text = "n/a (0 source bytes)" if v is None else f"{v:.1f}%" + (" (clipped)" if v < lo else "")
        x = 0 if v is None or v < 0 else v
        ax2.text(x, yi, f" {text}", va="center", ha="left", fontsize=9)
    ax2.axvline(0, color="black", linewidth=0.8)
    span = (hi - lo) or 1
    ax2.set_xlim(lo - 0.05 * span if lo < 0 else 0, hi + 0.35 * span)
    against = any(c == "#dd8452" for c in colors)
    ax2.set_xlabel("bytes saved, %  (blue: vs the source files" +
                   ("; orange: the sample vs a classical codec)" if against else ")"))
    ax2.set_title("savings by folder" + (", and of a sample against classical codecs" if against else ""))
    tot = report["totals"]
    fig.suptitle(f"{report['archive']}: {tot['images']} images, {_human(tot['source_bytes'])} -> "
                 f"{_human(tot['compressed_bytes'])} (ratio {tot['ratio']}, {tot['bpsp']} bits per subpixel)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with fsspec.open(url, "wb") as f:
        f.write(buf.getvalue())


def _human(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
