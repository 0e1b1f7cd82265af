"""Golden streams: files written by earlier pixark builds must keep decoding to the same pixels.
A change that breaks one of these breaks every archive made with it: bump the format or codec version instead,
keep a decoder for the old one, and add new golden files (never regenerate these)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import pixark.codec as pc

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "golden.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_stream_decodes(name):
    expected = MANIFEST[name]
    data = (GOLDEN / name).read_bytes()
    back = pc.decode(data)
    if "file_sha256" in expected:  # a file kept as its bytes (lepton: a JPEG): the same file comes back
        assert back.pixels is None and hashlib.sha256(back.original).hexdigest() == expected["file_sha256"]
    else:
        assert pc.pixel_sha256(back.pixels) == expected["pixel_sha256"]
    if "restored_file_sha256" in expected:  # pixels with a PNG recipe: the same PNG file comes back
        assert hashlib.sha256(back.to_file(exact=True)).hexdigest() == expected["restored_file_sha256"]
    assert pc.info(data)["codec"] == expected["codec"]
    assert hashlib.sha256(data).hexdigest() == expected["stream_sha256"]
