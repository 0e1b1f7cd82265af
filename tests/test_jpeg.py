"""The lepton codec: JPEG files recompressed byte-exact. JPEGs are made here from dev photos with Pillow (several
qualities, subsamplings, baseline and progressive); none is committed. Round trips give back the file's bytes,
`auto` picks lepton for JPEGs and never grows a file, files Lepton cannot take stay stored with the reason,
damaged payloads raise CorruptStream, a process forked after its parent used Lepton still (de)compresses (the
library's thread pool does not survive fork), and an archive of a folder of JPEGs restores byte-identical files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import time

import numpy as np
import pytest
from PIL import Image

from pixark import codec as pc
from pixark.codec import container, jpeg
from images import photos

# (quality, subsampling 0=4:4:4 2=4:2:0, progressive, extra save options)
VARIANTS = {
    "q75-420": (75, 2, False, {}),
    "q90-444": (90, 0, False, {}),
    "q90-420-progressive": (90, 2, True, {}),
    "q95-444-progressive": (95, 0, True, {}),
    "q85-optimized": (85, 2, False, {"optimize": True}),
    "q80-restart-markers": (80, 2, False, {"restart_marker_rows": 2}),
}


def _jpeg(arr: np.ndarray, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sources() -> dict[str, np.ndarray]:
    return {name: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:192, :256].copy()
            for name, data in photos(2)}


@pytest.fixture(scope="module")
def jpegs(sources) -> dict[str, bytes]:
    out = {}
    for name, arr in sources.items():
        for v, (q, sub, prog, extra) in VARIANTS.items():
            out[f"{name}/{v}.jpg"] = _jpeg(arr, quality=q, subsampling=sub, progressive=prog, **extra)
        out[f"{name}/grey.jpg"] = _jpeg(arr, "L", quality=85)
        exif = Image.Exif()
        exif[0x010F] = "pixark test camera"  # Make
        out[f"{name}/exif-icc.jpg"] = _jpeg(arr, quality=90, exif=exif.tobytes(), icc_profile=bytes(range(256)) * 2)
    return out


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_round_trip_gives_the_file_bytes_back_and_is_smaller(jpegs):
    for name, data in jpegs.items():
        stream = pc.encode(data, "lepton", verify=True)
        head = pc.info(stream)
        assert head["codec"] == "lepton" and head["format"] == "JPEG", name
        assert head["params"]["sha256"] == hashlib.sha256(data).hexdigest() and head["params"]["bytes"] == len(data)
        assert head["pixel_sha256"] == "" and head["width"] == 0  # a file kept as its bytes, as store keeps it
        back = pc.decode(stream)
        assert back.pixels is None and back.format == "JPEG"
        assert back.original == data and back.to_file() == data, name
        assert np.array_equal(_pixels(back.to_file()), _pixels(data)), name
        assert len(stream) < 0.95 * len(pc.encode(data, "store")), name


def test_auto_uses_lepton_for_jpegs_and_never_grows_a_file(jpegs):
    for name, data in jpegs.items():
        stream = pc.encode(data)
        assert pc.info(stream)["codec"] == "lepton", name
        assert len(stream) <= len(pc.encode(data, "store"))
    assert pc.candidates(pc.load(jpegs[next(iter(jpegs))])) == [("lepton", {})]
    assert pc.candidates(pc.load(b"just text")) == [("store", {})]
    assert "lepton" in pc.names() and pc.get("lepton").available()


def _refused(sources) -> dict[str, bytes]:
    arr = next(iter(sources.values()))
    good = _jpeg(arr, quality=80)
    sof = good.index(b"\xff\xc0")
    import imagecodecs

    return {
        "cmyk": _jpeg(arr, "CMYK", quality=85),  # Lepton codes 1 to 3 components
        "4:1:1": imagecodecs.jpeg8_encode(arr, level=85, subsampling=(4, 1)),  # Lepton: sampling factors up to 2
        "no end marker": good[:-2],  # Lepton compresses it but decodes other bytes: the check catches it
        "arithmetic": good[:sof] + b"\xff\xc9" + good[sof + 2:],  # SOF9, arithmetic coding
    }


def test_jpegs_lepton_cannot_take_stay_stored_with_the_reason(sources):
    for what, data in _refused(sources).items():
        with pytest.raises(pc.UnsupportedImage, match="Lepton") as info:
            pc.encode(data, "lepton")
        stream = pc.encode(data)  # auto: stored as the file, whatever Lepton thinks of it
        assert pc.info(stream)["codec"] == "store", what
        assert pc.decode(stream).to_file() == data
        assert str(info.value), what
    png = io.BytesIO()
    Image.fromarray(next(iter(sources.values()))).save(png, format="PNG")
    assert pc.get("lepton").supports(pc.load(png.getvalue())) == "Lepton recompresses JPEG files only"
    assert pc.get("lepton").supports(pc.load(np.zeros((4, 4, 3), np.uint8))) is not None


def _repack(stream: bytes, payload: bytes | None = None, **params) -> bytes:
    """The stream with another payload or params and every checksum and hash made right again: damage that only
    the codec's own checks can find."""
    header, blobs, old = container.unpack(stream)
    header.params = {**header.params, **params}
    return container.pack(header, blobs, old if payload is None else payload)


def test_damaged_payloads_raise_corrupt_stream(jpegs):
    data = jpegs[next(iter(jpegs))]
    stream = pc.encode(data, "lepton")
    _, _, payload = container.unpack(stream)
    rng = np.random.default_rng(22)
    damaged = [payload[:n] for n in (0, 10, 27, 28, 100, len(payload) // 2, len(payload) - 1)]
    for _ in range(60):
        p = bytearray(payload)
        for pos in rng.integers(0, len(p), rng.integers(1, 5)):
            p[pos] ^= 1 << int(rng.integers(0, 8))
        damaged.append(bytes(p))
    for p in damaged:
        try:
            back = pc.decode(_repack(stream, p))
        except pc.CorruptStream:
            continue
        assert back.original == data, "a damaged payload decoded to other bytes"
    other = hashlib.sha256(b"another file").hexdigest()
    for params in ({"sha256": other}, {"bytes": len(data) + 1}, {"sha256": 5}, {"bytes": -1}, {"bytes": True}):
        with pytest.raises(pc.CorruptStream):
            pc.decode(_repack(stream, **params))
    with pytest.raises(pc.CorruptStream):  # plain bit flips are caught by the container's checksums first
        pc.decode(stream[:-30] + bytes([stream[-30] ^ 1]) + stream[-29:])


def test_without_the_library_jpegs_are_stored_and_lepton_streams_unsupported(jpegs, monkeypatch):
    data = jpegs[next(iter(jpegs))]
    stream = pc.encode(data, "lepton")
    monkeypatch.setattr(jpeg.Lepton, "available", lambda self: False)
    assert pc.info(pc.encode(data))["codec"] == "store"
    with pytest.raises(pc.UnsupportedStream, match="pip install lepton-jpeg-python==0.5.8"):
        pc.decode(stream)


def _in_forked_child(work, timeout: float = 60.0) -> bytes:
    """Run ``work()`` (returning bytes) in a child made by os.fork; its result through a pipe. A child that does
    not finish within ``timeout`` is killed and the test fails (the hang this guards against)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            out = work()
            os.write(w, len(out).to_bytes(8, "little") + out)
        except BaseException:  # noqa: BLE001 - any failure in the child is the test's failure
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if not select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                os.kill(pid, 9)
                pytest.fail(f"forked child still running after {timeout:.0f} s: Lepton hung after fork")
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "forked child failed"
    out = b"".join(chunks)
    assert int.from_bytes(out[:8], "little") == len(out) - 8
    return out[8:]


def test_a_child_forked_after_the_parent_used_lepton_still_decodes(jpegs):
    """The library's Rust thread pool does not survive fork: called directly in such a child, decompress waits
    forever. The codec sends the child's calls to a helper process of its own."""
    names = list(jpegs)[:3]
    streams = [pc.encode(jpegs[n], "lepton") for n in names]
    assert pc.decode(streams[0]).original == jpegs[names[0]]  # the parent has used the library
    assert jpeg._direct_pid == os.getpid()

    def child() -> bytes:
        backs = [pc.decode(s).original for s in streams]
        again = pc.encode(jpegs[names[1]], "lepton")  # compressing works there too
        assert jpeg._helper is not None and jpeg._helper.owner == os.getpid()
        return json.dumps([hashlib.sha256(b).hexdigest() for b in backs] + [pc.info(again)["codec"]]).encode()

    got = json.loads(_in_forked_child(child))
    assert got == [hashlib.sha256(jpegs[n]).hexdigest() for n in names] + ["lepton"]
    assert pc.decode(streams[1]).original == jpegs[names[1]]  # and the parent still calls the library directly
    damaged = _repack(streams[0], streams[0][-400:])

    def child_damaged() -> bytes:
        try:
            pc.decode(damaged)
        except pc.CorruptStream as exc:
            return str(exc).encode()
        return b"decoded"

    assert _in_forked_child(child_damaged).startswith(b"lepton payload")  # refused there too, not hung on


def test_helper_process_codes_like_the_library(jpegs):
    """The helper's answers (what forked children get) equal the library's, errors included."""
    data = jpegs[next(iter(jpegs))]
    helper = jpeg._Helper()
    try:
        payload = helper.call("c", data)
        assert helper.call("d", payload) == data == jpeg.run("d", payload)
        with pytest.raises(jpeg.LeptonError, match="Decompression failed"):
            helper.call("d", b"not a lepton file")
        assert helper.call("d", payload) == data  # an error leaves the helper usable
        helper.proc.kill()
        helper.proc.wait()
        with pytest.raises(jpeg.LeptonError, match="helper process failed"):  # an error, never a hang
            helper.call("d", payload)
    finally:
        helper.close()


@pytest.mark.ray
def test_archive_of_jpegs_restores_byte_identical_files(ray_session, jpegs, sources, tmp_path):
    from pixark.jobs.archive import archive
    from pixark.pipeline import manifest
    from pixark.pipeline.restore import restore
    from pixark.pipeline.verify import verify
    from fsspec.implementations.local import LocalFileSystem

    files = dict(jpegs)
    refused = _refused(sources)
    files["refused/cmyk.jpg"] = refused["cmyk"]
    files["refused/411.jpg"] = refused["4:1:1"]
    # damaged JPEGs (Pillow's full decode fails at archive time) are kept as their bytes before Lepton sees them
    files["broken/no-eoi.jpg"] = refused["no end marker"]
    files["broken/truncated.jpg"] = jpegs[next(iter(jpegs))][:3000]
    for rel, data in files.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_bytes(data)
    s = archive(str(tmp_path / "src"), str(tmp_path / "archive"), shard_size="200kB", workers=2)
    assert s["images"] == len(files)
    rows = {r["image_id"]: r for r in manifest.read_manifests(LocalFileSystem(), str(tmp_path / "archive")).to_pylist()}
    for rel in jpegs:
        assert rows[rel]["codec"] == "lepton" and rows[rel]["status"] == "ok" and rows[rel]["note"] is None, rel
        assert rows[rel]["compressed_bytes"] < rows[rel]["source_bytes"]
    for rel in ("refused/cmyk.jpg", "refused/411.jpg"):
        assert rows[rel]["codec"] == "store" and rows[rel]["status"] == "ok", rel
        assert rows[rel]["note"].startswith("JPEG kept as original bytes: Lepton cannot take"), rows[rel]["note"]
    for rel in ("broken/no-eoi.jpg", "broken/truncated.jpg"):
        assert rows[rel]["status"] == "kept_unreadable" and rows[rel]["codec"] == "store", rel
    report = verify(str(tmp_path / "archive"))
    assert report["ok"] is True, report
    restore(str(tmp_path / "archive"), str(tmp_path / "out"))
    out = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*")
           if p.is_file()}
    assert out == files
    lepton = sum(r["compressed_bytes"] for r in rows.values() if r["codec"] == "lepton")
    assert lepton < 0.95 * sum(len(jpegs[k]) for k in jpegs)  # small crops: the container header weighs here


def test_bench_jpeg_measures_every_method_byte_exact(jpegs, tmp_path):
    from pixark.jobs.bench_jpeg import made_from, measure

    files = list(jpegs.items())[:3]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    files += made_from(str(tmp_path), 0)
    doc = measure(files)
    assert doc["files"] == 7 and [r["file"] for r in doc["rows"]][3:] == [
        "p.png:q75-420", "p.png:q75-444", "p.png:q90-420", "p.png:q90-444"]
    assert doc["lepton"]["byte_exact"] == doc["lepton"]["coded"] == 7
    assert doc["lepton"]["bytes"] < doc["store"]["bytes"]
    if doc["jxl_available"]:
        assert doc["jxl"]["byte_exact"] == doc["jxl"]["coded"] == 7
