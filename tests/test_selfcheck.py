"""`pixark selfcheck` on this machine (device 'cpu', every process in this one): its bookkeeping, verdicts and the
large mirrored image. On a GPU machine the same command compares the GPU's streams with the CPU's (device run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import pixark.codec as pc
from images import photo_array, png_bytes
from pixark.jobs import selfcheck as sc


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    (d / "a.png").write_bytes(png_bytes(photo_array(96)[:40, :48]))
    (d / "b.png").write_bytes(png_bytes(photo_array(96)[40:72, 8:56]))
    (d / "grey.png").write_bytes(png_bytes(photo_array(96)[:20, :20, 0]))  # not RGB: skipped
    return d


def test_large_image_mirrors_a_real_photo_to_the_side_asked():
    px = photo_array(96)[:30, :40]
    big = sc.large_image([px[:10, :10], px], 64)
    assert big.shape == (64, 64, 3) and big.flags.c_contiguous
    assert np.array_equal(big[:30, :40], px) and np.array_equal(big[30:60, :40], px[::-1])
    assert np.array_equal(big[:30, 40:64], px[:, ::-1][:, :24])


def test_every_profile_with_weights_is_checked_default_first():
    specs = sc.learned_specs()
    assert specs[0] == "mspsm" and "msr" in specs
    assert all(s.startswith(("mspsm", "msr")) for s in specs) and len(specs) == len(set(specs))


def test_identical_streams_pass(photos):
    doc = sc.selfcheck("cpu", [str(photos)], per_profile=1, side=48, cpu_workers=0, device_workers=0,
                       specs=["mspsm:tile=64", "msr:T=1"])
    assert doc["ok"] and doc["verdict"] == "PASS" and not doc["failures"]
    rows = {r["spec"]: r for r in doc["profiles"]}
    assert rows["mspsm:tile=64"]["images"] == 2 and rows["msr:T=1"]["images"] == 1
    assert rows["mspsm:tile=48"]["images"] == 1  # the large image, coded as one tile of its side
    assert all(r["identical"] == r["decodes_exact"] == r["images"] for r in rows.values())


def test_a_device_stream_that_differs_fails_and_says_which_side(photos, monkeypatch):
    real = pc.encode

    def device_side_flips_a_byte(px, spec, device=None):
        data = real(px, spec, device=device)
        return data if sc._DEVICE["phase"] == "cpu" else data[:-1] + bytes([data[-1] ^ 1])

    monkeypatch.setattr(pc, "encode", device_side_flips_a_byte)
    run = sc._run

    def tagged(tasks, device, workers):
        sc._DEVICE["phase"] = "cpu" if not hasattr(tagged, "seen") else "device"
        tagged.seen = True
        return run(tasks, device, workers)

    monkeypatch.setattr(sc, "_run", tagged)
    doc = sc.selfcheck("cpu", [str(photos)], side=0, cpu_workers=0, device_workers=0, specs=["mspsm:tile=64"])
    assert not doc["ok"] and doc["verdict"] == "FAIL" and len(doc["failures"]) == 2
    f = doc["failures"][0]
    assert not f["identical"] and f["cpu_stream_on_cpu"] and f["cpu_stream_on_device"]
    assert f["device_stream_on_cpu"] is False


def test_cli_prints_one_json_document_and_exits_nonzero_without_images(photos, tmp_path):
    from pixark.jobs.cli import app

    res = CliRunner().invoke(app, ["selfcheck", str(photos), "--device", "cpu", "--side", "0", "--cpu-workers", "0",
                                   "--device-workers", "0", "--spec", "mspsm:tile=64", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"] == "PASS"
    res = CliRunner().invoke(app, ["selfcheck", str(tmp_path), "--device", "cpu", "--json"])
    assert res.exit_code == 1 and "no 8-bit RGB images" in res.output
