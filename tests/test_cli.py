"""The CLI as a user runs it: real subprocesses, exit codes, one JSON document on stdout with --json."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixark.codec as pc
from images import photo_array, png_bytes


def pixark(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"pixark {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    (root / "set a").mkdir()
    arr = photo_array(64)
    (root / "set a" / "one photo.png").write_bytes(png_bytes(arr))
    (root / "set a" / "two.png").write_bytes(png_bytes(arr[::-1].copy()))
    return root


def test_encode_info_decode(folder, tmp_path):
    src = folder / "set a" / "one photo.png"
    out = pixark("encode", src, tmp_path / "x.pxk", "--codec", "jxl-ll:effort=3", "--json")
    doc = json.loads(out.stdout)
    assert doc["codec"] == "jxl-ll" and doc["params"] == {"effort": 3} and doc["stream_bytes"] > 0
    meta = json.loads(pixark("info", tmp_path / "x.pxk", "--json").stdout)
    assert meta["width"] == 64 and meta["pixel_sha256"] == pc.load(src.read_bytes()).pixel_sha256()
    pixark("decode", tmp_path / "x.pxk", tmp_path / "back.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), np.asarray(Image.open(src)))


def test_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.pxk").write_bytes(b"\x89PXK" + bytes(20))
    for args in (("decode", tmp_path / "bad.pxk", tmp_path / "o.png"), ("info", tmp_path / "missing.pxk"),
                 ("encode", tmp_path / "bad.pxk", tmp_path / "o.pxk", "--codec", "nope")):
        proc = pixark(*args, check=False)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr
        assert proc.stdout == ""


def test_codecs_lists_classical_and_learned(tmp_path):
    rows = json.loads(pixark("codecs", "--json").stdout)
    names = {r["name"] for r in rows}
    assert {"store", "png", "webp-ll", "jxl-ll"} <= names
    for row in rows:
        if row["learned"]:  # every profile named, with its size, and whether its weights ship
            assert row["profiles"] and all({"name", "params", "weights"} <= set(p) for p in row["profiles"])
    assert "profile=" in pixark("codecs").stdout or not any(r["learned"] for r in rows)


def test_bench_json_and_table(folder):
    proc = pixark("bench", folder, "-c", "png", "-c", "jxl-ll:effort=1", "--json", "--per-image")
    report = json.loads(proc.stdout)
    rows = report["sets"][f"{folder.name}/set a"]
    assert set(rows) == {"png", "jxl-ll:effort=1"}
    for row in rows.values():
        assert row["images"] == 2 and row["round_trip"] == "ok" and 0 < row["bpsp"] < 24
        assert row["encode_mps"] > 0 and row["decode_mps"] > 0
    # per image: each codec's bpsp; "smallest" counts, per set, the images each codec coded smallest
    per = report["per_image"]
    assert len(per) == 2 and all(set(v) == {"png", "jxl-ll:effort=1"} for v in per.values())
    wins = report["smallest"][f"{folder.name}/set a"]
    assert sum(wins.values()) == 2
    assert wins["png"] == sum(v["png"] < v["jxl-ll:effort=1"] for v in per.values())
    for spec, row in rows.items():  # the set's bpsp is the subpixel-weighted mean of its images'
        assert min(v[spec] for v in per.values()) <= row["bpsp"] <= max(v[spec] for v in per.values())
    assert "bpsp" in proc.stderr  # with --json the human table goes to stderr ...
    table = pixark("bench", folder, "-c", "png", "-c", "jxl-ll:effort=1")
    assert "bpsp" in table.stdout and "jxl-ll:effort=1" in table.stdout  # ... without it, to stdout, whole


def test_codec_parameters_are_checked_against_their_ranges(folder, tmp_path):
    src = folder / "set a" / "one photo.png"
    for spec, says in (("jxl-ll:effort=99", "effort=99 is out of range"), ("jxl-ll:effort=-5", "effort=-5 is out"),
                       ("jxl-ll:effort=abc", "effort='abc' is not an integer"), ("png:level=10", "level=10")):
        proc = pixark("encode", src, tmp_path / "x.pxk", "--codec", spec, check=False)
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "x.pxk").exists()
    assert "from 1 to 10" in proc.stderr.replace("\n", " ") or "from 0 to 9" in proc.stderr.replace("\n", " ")
    for args, says in ((["--codec", "jxl-ll:effort=99"], "effort=99 is out of range"), (["--workers", "0"], "--workers")):
        proc = pixark("archive", folder, tmp_path / "arc", *args, check=False)
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "arc").exists()  # refused before anything is written
    assert {"effort": [1, 10]} == next(r for r in json.loads(pixark("codecs", "--json").stdout)
                                       if r["name"] == "jxl-ll")["ranges"]


def test_a_file_where_a_folder_belongs_is_named_and_missing_folders_are_not_created(folder, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for cmd in ("archive", "restore"):
        src = folder if cmd == "archive" else tmp_path / "nothing"
        proc = pixark(cmd, src, afile, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        if cmd == "archive":
            assert "is a file" in proc.stderr and "rerun" not in proc.stderr, proc.stderr
    assert afile.read_text() == "mine"
    src = folder / "set a" / "one photo.png"
    proc = pixark("encode", src, tmp_path / "no such dir" / "x.pxk", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and not (tmp_path / "no such dir").exists()
    pixark("encode", src, tmp_path / "x.pxk")
    proc = pixark("decode", tmp_path / "x.pxk", tmp_path / "nope" / "x.png", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and not (tmp_path / "nope").exists()


def test_a_local_ray_starts_without_the_token_warning(folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "archive", str(folder), str(tmp_path / "arc"),
                           "--codec", "png", "--workers", "1"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "complete:" in proc.stdout and "Token authentication" not in proc.stderr, proc.stderr


def test_decode_format_png_converts_a_stored_jpeg_or_says_why_not(tmp_path):
    arr = photo_array(32)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    (tmp_path / "p.jpg").write_bytes(buf.getvalue())
    pixark("encode", tmp_path / "p.jpg", tmp_path / "p.pxk")
    assert pc.info((tmp_path / "p.pxk").read_bytes())["codec"] == "lepton"  # the file's bytes, recompressed
    pixark("decode", tmp_path / "p.pxk", tmp_path / "p.png", "--format", "png")
    png = Image.open(tmp_path / "p.png")
    assert png.format == "PNG" and np.array_equal(np.asarray(png), np.asarray(Image.open(tmp_path / "p.jpg")))
    (tmp_path / "t.txt").write_bytes(b"just text")
    pixark("encode", tmp_path / "t.txt", tmp_path / "t.pxk")
    proc = pixark("decode", tmp_path / "t.pxk", tmp_path / "t.png", "--format", "png", check=False)
    assert proc.returncode == 1 and "not readable as an image" in proc.stderr and "--format original" in proc.stderr
    assert not (tmp_path / "t.png").exists()


def test_encode_names_a_damaged_image_kept_as_bytes(folder, tmp_path):
    cut = tmp_path / "cut.png"
    cut.write_bytes((folder / "set a" / "one photo.png").read_bytes()[:400])
    proc = pixark("encode", cut, tmp_path / "cut.pxk", "--json")
    doc = json.loads(proc.stdout)
    assert doc["codec"] == "store" and doc["state"] == "kept_unreadable" and doc["note"]
    assert "kept_unreadable" in proc.stderr
    assert pc.decode((tmp_path / "cut.pxk").read_bytes()).to_file() == cut.read_bytes()
    ok = json.loads(pixark("encode", folder / "set a" / "two.png", tmp_path / "two.pxk", "--json").stdout)
    assert ok["state"] == "ok"


def test_info_refuses_a_cut_stream_and_json_options_have_help(tmp_path):
    data = (Path(__file__).parent / "golden" / "jxl-ll-rgb.pxk").read_bytes()
    (tmp_path / "cut.pxk").write_bytes(data[:-50])
    proc = pixark("info", tmp_path / "cut.pxk", check=False)
    assert proc.returncode == 1 and "truncated" in proc.stderr and proc.stdout == ""
    for cmd in ("info", "codecs"):
        assert "JSON document" in pixark(cmd, "--help").stdout


def test_help_reads_as_sentences_without_python_types():
    """Help paragraphs are not broken where the source's lines break, and options show what they take (GLOB,
    TEXT, nothing for a flag), not Python types (<str>, <bool>, <list[str]>)."""
    proc = subprocess.run([sys.executable, "-m", "pixark.jobs.cli", "restore", "--help"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    text = proc.stdout
    description = [ln.strip() for ln in text.split("╭")[0].splitlines()[2:]]
    paragraphs = [p.split("\n") for p in "\n".join(description).strip().split("\n\n")]
    assert len(paragraphs) >= 2 and len(paragraphs[1]) >= 2
    for p in paragraphs:  # every line but a paragraph's last runs to the terminal's width (100 columns)
        assert all(len(ln) > 80 for ln in p[:-1]), p
    option_lines = [ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("--") and "--help" not in ln]
    assert option_lines and not [ln for ln in option_lines if "<" in ln], option_lines
    assert any("--skip-existing " in ln and "TEXT" not in ln for ln in option_lines)


def test_results_on_stdout_progress_on_stderr(folder, tmp_path):
    """`pixark info x > f` and the like write the result into f; nothing but the JSON document with --json."""
    src = folder / "set a" / "one photo.png"
    enc = pixark("encode", src, tmp_path / "x.pxk", "--codec", "png")
    assert f"-> {tmp_path / 'x.pxk'}" in enc.stdout
    info = pixark("info", tmp_path / "x.pxk")
    assert "pixel_sha256" in info.stdout and "codec" in info.stdout and info.stderr == ""
    dec = pixark("decode", tmp_path / "x.pxk", tmp_path / "back.png")
    assert "back.png" in dec.stdout
    assert "jxl-ll" in pixark("codecs").stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bench_skips_images_a_codec_does_not_take(tmp_path, workers):
    """The first image is grey: mspsm (8-bit RGB only) warms up on, and is measured on, the RGB one only."""
    (tmp_path / "s").mkdir()
    Image.fromarray(photo_array(48)[:, :, 0]).save(tmp_path / "s" / "a grey.png")
    Image.fromarray(photo_array(48)).save(tmp_path / "s" / "b rgb.png")
    report = json.loads(pixark("bench", tmp_path, "-c", "mspsm", "-c", "png", "-w", workers, "--json").stdout)
    rows = report["sets"][f"{tmp_path.name}/s"]
    assert rows["mspsm"]["images"] == 1 and rows["png"]["images"] == 2
    assert all(r["round_trip"] == "ok" for r in rows.values())


def test_bench_reads_lossless_jpeg_xl_sources(tmp_path):
    """dev/clic2025 is stored as lossless .jxl: bench must measure those images, not pass over them."""
    import imagecodecs

    (tmp_path / "s").mkdir()
    arr = photo_array(40)
    (tmp_path / "s" / "a.jxl").write_bytes(imagecodecs.jpegxl_encode(arr, lossless=True))
    (tmp_path / "s" / "b.png").write_bytes(png_bytes(arr[::-1].copy()))
    (tmp_path / "s" / "cut.jxl").write_bytes((tmp_path / "s" / "a.jxl").read_bytes()[:30])
    report = json.loads(pixark("bench", tmp_path, "-c", "png", "--json").stdout)
    row = report["sets"][f"{tmp_path.name}/s"]["png"]
    assert row["images"] == 2 and row["round_trip"] == "ok" and row["megapixels"] > 0
    assert list(report["unreadable"]) == [str(tmp_path / "s" / "cut.jxl")]


def test_bench_names_what_it_skipped_and_refuses_a_folder_of_broken_files(tmp_path):
    (tmp_path / "s").mkdir()
    Image.fromarray(photo_array(32)).save(tmp_path / "s" / "rgb.png")
    import imagecodecs

    (tmp_path / "s" / "deep.png").write_bytes(imagecodecs.png_encode(photo_array(32).astype(np.uint16) * 257))
    (tmp_path / "s" / "cut.png").write_bytes((tmp_path / "s" / "rgb.png").read_bytes()[:100])
    report = json.loads(pixark("bench", tmp_path, "-c", "webp-ll", "-c", "png", "--json").stdout)
    rows = report["sets"][f"{tmp_path.name}/s"]
    assert rows["webp-ll"]["images"] == 1 and rows["webp-ll"]["skipped"] == 1 and rows["png"]["skipped"] == 0
    assert list(report["skipped"]["webp-ll"]) == [str(tmp_path / "s" / "deep.png")]
    assert "8 bits" in report["skipped"]["webp-ll"][str(tmp_path / "s" / "deep.png")]
    assert list(report["unreadable"]) == [str(tmp_path / "s" / "cut.png")]
    (tmp_path / "s" / "rgb.png").unlink()
    (tmp_path / "s" / "deep.png").unlink()
    proc = pixark("bench", tmp_path, "-c", "png", check=False)
    assert proc.returncode == 1 and "no readable images" in proc.stderr and "round trip" not in proc.stdout


def test_bench_table_keeps_codec_specs_whole_in_80_columns():
    from rich.console import Console

    from pixark.jobs.bench import table

    row = {"images": 69, "skipped": 0, "megapixels": 52.123, "bpsp": 2.4431, "encode_mps": 0.281,
           "decode_mps": 8.051, "round_trip": "ok"}
    per = {"jxl-ll:effort=7": row, "jxl-ll:effort=9": row}
    con = Console(width=80, file=io.StringIO(), record=True)
    con.print(table("all", per, {"jxl-ll:effort=7": 30, "jxl-ll:effort=9": 39}))
    text = con.export_text()
    assert "jxl-ll:effort=7" in text and "jxl-ll:effort=9" in text


def test_bench_workers_code_the_same_streams(folder):
    """--workers 2 splits each set over two processes: same images, same bits, speeds are their wall clock."""
    args = ("bench", folder, "-c", "png", "-c", "webp-ll", "--json")
    one = json.loads(pixark(*args).stdout)
    two = json.loads(pixark(*args, "--workers", "2").stdout)
    assert one["workers"] == 1 and two["workers"] == 2 and "2 one-thread processes" in two["note"]
    for spec in ("png", "webp-ll"):
        a, b = one["sets"][f"{folder.name}/set a"][spec], two["sets"][f"{folder.name}/set a"][spec]
        assert (b["images"], b["megapixels"], b["bpsp"], b["round_trip"]) == (a["images"], a["megapixels"],
                                                                               a["bpsp"], "ok")
        assert b["encode_mps"] > 0 and b["decode_mps"] > 0
    bad = pixark("bench", folder, "-c", "png:bogus=1", "--workers", "2", check=False)  # a worker fails: no hang
    assert bad.returncode == 1 and "has no parameter" in bad.stderr and "Traceback" not in bad.stderr
    twice = pixark("bench", folder, "-c", "png", "-c", "webp-ll", "-c", "png", check=False)
    assert twice.returncode == 1 and "listed more than once: png" in twice.stderr
