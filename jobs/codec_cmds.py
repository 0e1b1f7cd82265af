"""Single-image commands: encode, decode, info, codecs."""

from __future__ import annotations

import fsspec
import typer

from .console import emit_json, err, fail, out


def _read(url: str) -> bytes:
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read {url}: {exc}")


def _write(url: str, data: bytes) -> None:
    """Write one output file. A missing local folder is an error, not something to create: it is usually a typo."""
    import os

    try:
        fs, path = fsspec.core.url_to_fs(url)
        parent = os.path.dirname(path)
        if "file" in fs.protocol and parent and not os.path.isdir(parent):
            raise fail(f"cannot write {url}: the folder {parent} does not exist (create it first)")
        with fs.open(path, "wb") as f:
            f.write(data)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot write {url}: {exc}")


def encode(
    src: str = typer.Argument(..., help="image file (any fsspec URL)"),
    dst: str = typer.Argument(..., help="where to write the pixark stream"),
    codec: str = typer.Option("auto", "--codec", "-c", help="codec name or spec, e.g. jxl-ll:effort=9"),
    verify: bool = typer.Option(False, help="decode the result and compare before writing it"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Code one image file into a pixark stream."""
    from pixark import codec as pc

    data = _read(src)
    try:
        stream = pc.encode(data, codec, verify=verify)
    except (pc.CodecError, ValueError) as exc:
        raise fail(str(exc))
    _write(dst, stream)
    meta = pc.info(stream)
    state, why = _state(data, meta["codec"])
    doc = {"source": src, "output": dst, "source_bytes": len(data), "stream_bytes": len(stream), "codec": meta["codec"],
           "params": meta["params"], "bpsp": meta["bpsp"], "state": state, "note": why}
    if state != "ok":
        err.print(f"[yellow]{state}[/yellow]: {src} {why}; its original bytes are stored (decode gives them back "
                  "byte-exact)", highlight=False, soft_wrap=True)
    emit_json(doc) if json_out else out.print(
        f"{src} -> {dst}: {len(data):,} -> {len(stream):,} bytes with {meta['codec']} ({meta['bpsp']} bpsp)", highlight=False)


def _state(data: bytes, codec: str) -> tuple[str, str]:
    """The archive's name for what happened to a file (manifest status): ok, or kept_unreadable for an image that
    does not decode and was stored as its bytes; with the reason."""
    from pixark import codec as pc
    from pixark.pipeline.coding import damage_reason
    from pixark.pipeline.manifest import STATUS_KEPT_UNREADABLE, STATUS_OK

    if codec != "store":
        return STATUS_OK, ""
    img = pc.load(data)
    damage = damage_reason(img, data)
    return (STATUS_KEPT_UNREADABLE, damage) if damage else (STATUS_OK, img.reason or "")


def decode(
    src: str = typer.Argument(..., help="pixark stream"),
    dst: str = typer.Argument(..., help="image file to write"),
    format: str = typer.Option("original", "--format",
                               help="original (the source format, metadata kept) or png (also converts stored JPEG, "
                                    "TIFF ...)"),
) -> None:
    """Decode a pixark stream back to an image file (bit-exact pixels, checked). --format png also converts a
    stored JPEG, TIFF ... (its decoded pixels, ICC profile and EXIF) and says why when it cannot."""
    from pixark import codec as pc
    from pixark.pipeline.restore import FORMATS, png_of

    if format not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    try:
        img = pc.decode(_read(src))
        data = img.to_file("original" if img.pixels is None else format)
    except pc.CodecError as exc:
        raise fail(str(exc))
    if format == "png" and img.pixels is None:
        try:
            data = png_of(data)
        except ValueError as exc:
            raise fail(f"cannot write {src}'s stored file as PNG: {exc}; use --format original")
    _write(dst, data)
    out.print(f"{src} -> {dst}: {len(data):,} bytes", highlight=False)


def info(
    src: str = typer.Argument(..., help="pixark stream"),
    json_out: bool = typer.Option(False, "--json", help="print the header as one JSON document on stdout"),
) -> None:
    """Show a stream's header without decoding it."""
    from pixark import codec as pc

    try:
        meta = pc.info(_read(src))
    except pc.CodecError as exc:
        raise fail(str(exc))
    if json_out:
        emit_json(meta)
        return
    for key in sorted(meta):
        out.print(f"{key:>15}: {meta[key]}", highlight=False)


def codecs(json_out: bool = typer.Option(False, "--json",
                                         help="print the list as one JSON document on stdout")) -> None:
    """List the codecs this build has, what each supports, and whether learned weights ship."""
    from rich.table import Table

    from pixark import codec as pc

    rows = [c.describe() for c in pc.all_codecs()]
    for r in rows:  # learned codecs describe profiles as a list of dicts or as {name: dict}; show one shape
        profiles = r.get("profiles", [])
        if isinstance(profiles, dict):
            r["profiles"] = [{"name": k, **v} for k, v in profiles.items()]
    if json_out:
        emit_json(rows)
        return
    table = Table(title="pixark codecs")
    for col in ("name", "learned", "available", "params", "summary"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "yes" if r["learned"] else "no", "yes" if r["available"] else "no (no weights)",
                      ", ".join(f"{k}={v}" + (f" ({r['ranges'][k][0]}-{r['ranges'][k][1]})" if k in r.get("ranges", {})
                                                   else "") for k, v in r["params"].items()), r["summary"])
        for prof in r.get("profiles", []):
            macs = prof.get("macs_per_pixel", prof.get("macs_per_pixel_per_iteration"))
            size = f"{prof.get('params', '?'):,} params, {2 * macs:,.0f} FLOPs/px" if macs else ""
            table.add_row("", "", "weights ship" if prof.get("weights") else "no weights",
                          f"profile={prof['name']}", "; ".join(filter(None, [size, prof.get("note", "")])))
    out.print(table)


def register(app: typer.Typer) -> None:
    for fn in (encode, decode, info, codecs):
        app.command()(fn)
