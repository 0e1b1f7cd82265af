"""encode / decode / info: the codec package's public functions."""

from __future__ import annotations

import json

import numpy as np

from . import container, pngexact, registry, tiff
from .container import Header
from .errors import CodecError, CorruptStream, DeviceError, UnsupportedImage, UnsupportedStream
from .image import DecodedImage, Metadata, pixel_sha256

# Learned codecs `auto` tries for 8-bit RGB (when installed with weights). A learned codec enters this list only
# once its shipped default profile has been measured to beat jxl-ll on dev (`pixark bench ../shared/data/dev`):
# until then it is opt-in with --codec, so an unproven model never costs users bytes or time. mspsm is in
# (README: smaller than jxl-ll effort 9 on every dev set); msr codes every dev image larger.
AUTO_LEARNED: tuple[str, ...] = ("mspsm",)


def load(image) -> DecodedImage:
    """Accept file bytes, a pixel array, or a DecodedImage."""
    if isinstance(image, DecodedImage):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return DecodedImage.from_bytes(bytes(image))
    if isinstance(image, np.ndarray):
        return DecodedImage.from_array(image)
    raise TypeError(f"encode() takes file bytes, a numpy array or a DecodedImage, not {type(image).__name__}")


def encode(image, codec: str = "auto", verify: bool = False, device: str | None = None, *, exact: bool = True,
           **params) -> bytes:
    """Code one image into a pixark container. ``codec`` is a name or a spec like 'jxl-ll:effort=9'.
    With ``verify`` the result is decoded and compared with the input before it is returned.
    ``device`` ('cpu', 'cuda', 'cuda:N'; None = cpu) is where a learned codec runs its network; classical codecs
    ignore it. The stream is the same whatever the device. With ``exact`` (default) a PNG file whose bytes
    can be rewritten from its pixels carries the recipe for that (codec/pngexact.py), so it decodes to the same
    file, not just the same pixels (``DecodedImage.restores_exact``)."""
    return encode_many([image], codec, verify, device, exact=exact, **params)[0]


def encode_many(images, codec: str = "auto", verify: bool = False, device: str | None = None,
                return_exceptions: bool = False, *, exact: bool = True, **params) -> list:
    """``encode`` of each of ``images`` (same arguments), each container byte-identical to ``encode``'s, but a
    learned codec codes the images together (same-size tiles share network batches: small images code several
    times faster). With ``return_exceptions`` an image that fails gives its exception in its place and the others
    their containers; without, the first failure is raised."""
    registry.check_device(device)  # a misspelt device is an error even when no learned codec runs
    name, spec_params = registry.parse_spec(codec)
    params = {**spec_params, **params}
    imgs: list = []
    for image in images:
        try:
            imgs.append(load(image))
        except Exception as exc:
            imgs.append(exc)
    out: list = list(imgs)
    ok = [n for n, img in enumerate(imgs) if not isinstance(img, Exception)]
    todo = [imgs[n] for n in ok]
    if exact and (name == "auto" or not registry.get(name).keeps_original):
        for img in todo:
            find_png_recipe(img)
    got = _auto_many(todo, device, **params) if name == "auto" else \
        _encode_many_with(todo, registry.get(name), params, device)
    if verify:
        got = _verify_many(todo, got, device)
    for n, g in zip(ok, got):
        out[n] = g
    return _results(out, return_exceptions)


def find_png_recipe(img: DecodedImage) -> bool:
    """Look once for the recipe that rewrites ``img``'s PNG file from its pixels (kept in its metadata, packed
    as a blob with whatever codec codes it). Whether there is one."""
    meta = img.metadata
    if meta.png_recipe is None and img.format == "PNG" and img.original is not None and img.pixels is not None:
        try:
            meta.png_recipe = pngexact.make(img.original, img.pixels, img.mode)
        except pngexact.NotReproducible:
            meta.png_recipe = b""  # looked for, none: the file restores pixel-exact
    return bool(meta.png_recipe)


def _results(out: list, return_exceptions: bool) -> list:
    if not return_exceptions:
        for item in out:
            if isinstance(item, Exception):
                raise item
    return out


def _device_kw(codec: registry.Codec, device: str | None) -> dict:
    """``device=`` for a learned codec (checked: it must exist on this machine), nothing for a classical one."""
    return {"device": registry.check_device(device, available=True)} if codec.learned else {}


def _encode_with(img: DecodedImage, codec: registry.Codec, params: dict, device: str | None = None) -> bytes:
    out = _encode_many_with([img], codec, params, device)[0]
    if isinstance(out, Exception):
        raise out
    return out


def _encode_many_with(imgs: list[DecodedImage], codec: registry.Codec, params: dict,
                      device: str | None = None) -> list:
    """Containers (or per-image exceptions) of ``imgs`` coded by ``codec`` in one ``codec.encode_many`` call."""
    out: list = []
    for img in imgs:
        reason = codec.supports(img)
        out.append(UnsupportedImage(f"codec {codec.name!r} cannot code this image: {reason}") if reason else None)
    todo = [n for n, o in enumerate(out) if o is None]
    if not todo:
        return out
    try:
        kw = _device_kw(codec, device)
    except Exception as exc:
        for n in todo:
            out[n] = exc
        return out
    for n, enc in zip(todo, codec.encode_many([imgs[n] for n in todo], **params, **kw)):
        try:
            out[n] = enc if isinstance(enc, Exception) else _pack(imgs[n], codec, enc)
        except Exception as exc:
            out[n] = exc
    return out


def _pack(img: DecodedImage, codec: registry.Codec, enc: registry.Encoded) -> bytes:
    original_kept = codec.keeps_original and not enc.params.get("raw")
    meta = img.metadata
    info = dict(meta.info)
    if meta.palette_mode:
        info["palette_mode"] = meta.palette_mode
    blobs = meta.blobs()
    if info.get("text"):  # PNG text can be large: a blob, not part of the JSON header
        blobs["text"] = json.dumps(info.pop("text"), sort_keys=True, ensure_ascii=False).encode()
    header = Header(
        codec=codec.name, codec_version=codec.version, params=enc.params, model_id=enc.model_id,
        height=img.height, width=img.width, channels=img.channels, bit_depth=img.bit_depth,
        mode=img.mode, format=img.format, pixel_sha256=img.pixel_sha256(), payload_bytes=0,
        info={} if original_kept else info,
    )
    return container.pack(header, {} if original_kept else blobs, enc.payload)


LEARNED_CHOICES = ("proven", "all", "none")


def candidates(img: DecodedImage, learned: str = "proven", **params) -> list[tuple[str, dict]]:
    """What `auto` tries for this image; it keeps the smallest result. For 8-bit RGB that is JPEG XL plus the
    learned codecs ``learned`` names: 'proven' (default) those in AUTO_LEARNED, 'all' every learned codec with
    shipped weights (for the smallest archive at any coding time), 'none' no learned codec. Other ``params`` go
    to the learned codecs that take them (e.g. ``profile``). A learned model that loses on some image never
    costs the user bytes."""
    if learned not in LEARNED_CHOICES:
        raise ValueError(f"auto: learned={learned!r}; choose from {', '.join(LEARNED_CHOICES)}")
    if img.pixels is None:  # a file kept as bytes: a JPEG can be recompressed byte-exact, anything else stored
        lepton = registry.get("lepton")
        return [("lepton", {})] if lepton.supports(img) is None else [("store", {})]
    out = []
    if img.is_rgb8:
        names = {"proven": AUTO_LEARNED, "none": (),
                 "all": tuple(c.name for c in registry.all_codecs() if c.learned)}[learned]
        for name in names:
            try:
                codec = registry.get(name)
            except UnsupportedStream:
                continue
            if codec.available() and codec.supports(img) is None:
                out.append((name, codec.params({k: v for k, v in params.items() if k in codec.defaults})))
    out.append(("jxl-ll", {}))
    if img.mode in ("P", "1"):  # palette indices and bilevel: PNG's filters sometimes beat JPEG XL here
        out.append(("png", {}))
    return out


def _auto_many(imgs: list[DecodedImage], device: str | None = None, **params) -> list:
    """Per image the smallest of its candidates, never larger than storing the file as it is (or the exception
    that stopped it). Each candidate codes all the images that list it in one call; per image the candidates are
    then weighed in their order, exactly as one image alone would be."""
    cands: list = []
    for img in imgs:
        try:
            cands.append(candidates(img, **params))
        except Exception as exc:
            cands.append(exc)
    users: dict = {}  # (name, params) -> images that try it
    for n, cs in enumerate(cands):
        for name, p in [] if isinstance(cs, Exception) else cs:
            users.setdefault((name, tuple(sorted(p.items()))), []).append(n)
    coded: dict = {}
    for (name, p), idx in users.items():
        coded.update({(name, p, n): r for n, r in
                      zip(idx, _encode_many_with([imgs[n] for n in idx], registry.get(name), dict(p), device))})
    out: list = []
    for n, (img, cs) in enumerate(zip(imgs, cands)):
        if isinstance(cs, Exception):
            out.append(cs)
            continue
        best = None
        for name, p in cs:
            data = coded[(name, tuple(sorted(p.items())), n)]
            # the device asked for is unusable: say so rather than quietly code without it; other codec errors
            # (e.g. a learned model's size limit): the other candidates and store remain
            if isinstance(data, DeviceError) or (isinstance(data, Exception) and not isinstance(data, CodecError)):
                best = data
                break
            if isinstance(data, Exception):
                continue
            if best is None or len(data) < len(best):
                best = data
        if isinstance(best, Exception):
            out.append(best)
            continue
        try:
            stored = _encode_with(img, registry.get("store"), {})
        except Exception as exc:
            out.append(exc)
            continue
        out.append(stored if best is None or len(stored) <= len(best) else best)
    return out


def _verify_many(imgs: list[DecodedImage], datas: list, device: str | None = None) -> list:
    """``datas`` with each container that does not decode to its image's pixels replaced by the error."""
    todo = [n for n, d in enumerate(datas) if not isinstance(d, Exception)]
    back = decode_many([datas[n] for n in todo], device, return_exceptions=True)
    out = list(datas)
    for n, b in zip(todo, back):
        img = imgs[n]
        if isinstance(b, Exception):
            out[n] = b
        elif img.pixels is not None and (b.pixels is None or pixel_sha256(b.pixels) != img.pixel_sha256()):
            out[n] = CorruptStream("encoder self-check failed: the stream does not decode to the input pixels")
        elif img.pixels is None and img.original is not None and b.original != img.original:
            out[n] = CorruptStream("encoder self-check failed: the stream does not give back the input file's bytes")
    return out


def decode(data: bytes, device: str | None = None) -> DecodedImage:
    """Decode a container. Damaged input raises CorruptStream, streams this build cannot read UnsupportedStream;
    pixels are always checked against the hash the encoder stored. ``device`` as in ``encode`` (a bad one is a
    ValueError, never reported as a damaged stream)."""
    return decode_many([data], device)[0]


def decode_many(datas, device: str | None = None, return_exceptions: bool = False) -> list:
    """``decode`` of each container, learned-codec payloads of the same weights decoded together (as
    ``encode_many``). With ``return_exceptions`` a container that fails gives its exception in its place (a
    damaged one never costs the others, and never gives wrong pixels: every result is checked against its stored
    pixel hash); without, the first failure is raised."""
    registry.check_device(device)
    out: list = []
    opened: dict = {}  # codec name -> indices of containers it decodes
    for n, data in enumerate(datas):
        try:
            header, blobs, payload = container.unpack(data)
            codec = registry.get(header.codec)
            if header.codec_version not in codec.versions:
                raise UnsupportedStream(
                    f"codec {header.codec!r} payload version {header.codec_version} is not supported "
                    f"(this build reads {codec.versions}); upgrade pixark"
                )
            out.append((header, blobs, payload, codec))
            opened.setdefault(codec.name, []).append(n)
        except Exception as exc:
            out.append(exc)
    for idx in opened.values():
        codec = out[idx[0]][3]
        try:
            kw = _device_kw(codec, device)  # checked before decoding: a missing GPU is not a damaged payload
        except Exception as exc:
            for n in idx:
                out[n] = exc
            continue
        pixels = codec.decode_many([out[n][2] for n in idx], [out[n][0] for n in idx], **kw)
        for n, px in zip(idx, pixels):
            try:
                out[n] = _decoded(*out[n], px)
            except Exception as exc:
                out[n] = exc
    return _results(out, return_exceptions)


def _decoded(header: Header, blobs: dict, payload: bytes, codec: registry.Codec, pixels) -> DecodedImage:
    """The decoded image, once its pixels (or the exception its codec raised) are known."""
    if isinstance(pixels, CodecError):
        raise pixels
    if isinstance(pixels, Exception):  # a damaged payload can make any decoder library fail in its own way
        raise CorruptStream(f"{header.codec} payload does not decode: {type(pixels).__name__}: {pixels}") from pixels
    try:
        original = codec.original_bytes(payload, header)
    except CodecError:
        raise
    except Exception as exc:
        raise CorruptStream(f"{header.codec} payload does not decode: {type(exc).__name__}: {exc}") from exc
    if header.pixel_sha256:
        if pixels is None or pixel_sha256(pixels) != header.pixel_sha256:
            raise CorruptStream("decoded pixels do not match the stored pixel hash: the stream is damaged")
    info = dict(header.info)
    if "text" in blobs:
        info["text"] = _text(blobs["text"])
    meta = Metadata(
        icc_profile=blobs.get("icc"), exif=blobs.get("exif"), palette=blobs.get("palette"),
        palette_mode=info.pop("palette_mode", ""), info=info, png_recipe=blobs.get(pngexact.BLOB),
    )
    return DecodedImage(pixels, mode=header.mode, format=header.format, metadata=meta, original=original)


def _text(blob: bytes) -> dict:
    try:
        text = json.loads(blob.decode())
    except (ValueError, RecursionError) as exc:
        raise CorruptStream(f"unreadable text metadata: {exc}") from exc
    if not isinstance(text, dict) or not all(isinstance(v, str) for v in text.values()):
        raise CorruptStream("text metadata is not an object of strings")
    return text


def info(data: bytes) -> dict:
    """What the header says, without decoding the payload (whose length is checked: a cut stream is refused)."""
    header, start = container.read_header(data)
    expected = start + sum(header.blobs.values()) + header.payload_bytes + 4
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise CorruptStream(f"stream {what}: its header says {expected} bytes, got {len(data)}")
    out = header.to_json()
    # what decoding gives back: the file's own bytes (kept, or rewritten by a PNG recipe or an exact TIFF one), or
    # its pixels
    kept = header.codec in container.FILE_CODECS and not header.params.get("raw")
    out["restores"] = "bytes" if kept or pngexact.BLOB in header.blobs or tiff.is_exact(header.info) else "pixels"
    out["format_version"] = int.from_bytes(bytes(data[4:6]), "little")
    out["stream_bytes"] = len(data)
    subpixels = header.height * header.width * header.channels
    out["bpsp"] = round(len(data) * 8 / subpixels, 4) if subpixels else None
    return out
