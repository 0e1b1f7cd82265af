"""pixark.dataset on archives made by the real archive job (local folder and moto's S3 server): every image
bit-exact through Archive, TorchDataset (2 ranks x 2 DataLoader workers) and read_pixark; resume mid-epoch gives
exactly the remainder; corrupt records raise naming the record, or are skipped and counted."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archive_helpers import crop_png, odd_source, write_tree
from pixark import codec as pc
from pixark.dataset import Archive, CorruptRecord, DataLoader, NotByteExact, TorchDataset, read_pixark
from pixark.jobs.archive import archive

pytestmark = pytest.mark.ray
# Classical codecs only: the reading code is the same for every codec (pixark.codec.decode), and a learned record
# costs seconds to decode on these CPUs, read a dozen times here. bench-read measures learned records.
CODEC = "auto:learned=none"


def source(dev_images: list[Path]) -> dict[str, bytes]:
    """odd_source's mix (PNG, JPEG, grey, palette GIF, damaged files, a text file), a float TIFF, plus a second crop of each dev
    image, all small, so that a 3 kB shard size gives several shards of one to three records."""
    files = odd_source(dev_images, size=48)
    for p in dev_images:
        arr = np.asarray(Image.open(p).convert("RGB"))[48:88, 40:96]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        files[f"more/{p.stem}.png"] = buf.getvalue()
    # a TIFF that Pillow cannot read (float64, several pages): kept as bytes, not one of the images
    import skimage.data

    files["tiff/float pages.tif"] = (Path(skimage.data.__file__).parent / "multipage_rgb.tif").read_bytes()
    return files


def expected_pixels(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """image_id -> the pixels training code should get: the decoded source, Pillow's decoding for a JPEG."""
    out = {}
    for rel, data in files.items():
        src = pc.load(data)
        if src.pixels is not None:
            out[rel] = src.pixels
        elif rel.endswith(".jpg") and not rel.startswith("broken/"):
            out[rel] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def same(a, b) -> bool:
    a = np.asarray(a)
    b = np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.fixture(scope="module")
def made(ray_session, dev_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    files = source(dev_images)
    write_tree(root / "src", files)
    s = archive(str(root / "src"), str(root / "archive"), shard_size="3kB", workers=2, codec=CODEC)
    assert s["shards"] >= 6
    # several shards for 2 ranks x 2 workers, and shards of several images (resume keeps a prefix of each)
    assert max(len(ids) for ids in Archive(str(root / "archive")).index.images.values()) >= 2
    # The JPEG is a lepton record, read here first: every DataLoader test below forks its workers after this
    # process has used Lepton (whose thread pool does not survive fork), whichever tests run.
    arc = Archive(str(root / "archive"))
    assert arc.row("photos/a photo ü.jpg")["codec"] == "lepton"
    assert arc.read_bytes("photos/a photo ü.jpg") == files["photos/a photo ü.jpg"]
    return str(root / "archive"), files


def check_archive_api(url: str, files: dict[str, bytes], storage_options=None) -> None:
    want = expected_pixels(files)
    arc = Archive(url, storage_options)
    assert len(arc) == len(files) and set(arc.ids()) == set(files)
    assert set(arc.ids(images_only=True)) == set(want)
    for image_id in arc.ids():
        img = arc[image_id]
        if image_id in want:
            assert same(img.pixels, want[image_id]), image_id
        else:
            assert img.pixels is None, image_id
        try:
            assert arc.read_bytes(image_id) == files[image_id], image_id
        except NotByteExact:
            assert pc.load(files[image_id]).pixels is not None, f"{image_id}: kept as bytes, must read back exact"
    # files kept as their bytes always come back byte for byte
    for image_id in ("photos/a photo ü.jpg", "notes/readme.txt", "empty.png", "broken/truncated.png",
                     "tiff/float pages.tif"):
        assert arc.read_bytes(image_id) == files[image_id]
    with pytest.raises(KeyError, match="no/such.png"):
        arc["no/such.png"]


def one_epoch(url: str, storage_options=None, **kw) -> list[dict]:
    """Every sample of one epoch over 2 ranks, each through a DataLoader with 2 worker processes."""
    out = []
    for rank in (0, 1):
        ds = TorchDataset(url, rank=rank, world_size=2, storage_options=storage_options, **kw)
        got = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert len(got) == len(ds)
        out += [dict(s, rank=rank) for s in got]
    return out


def check_epoch(url: str, files: dict[str, bytes], storage_options=None) -> None:
    want = expected_pixels(files)
    samples = one_epoch(url, storage_options, shuffle=True, seed=7)
    counts = Counter(s["image_id"] for s in samples)
    assert counts == Counter(list(want)), "every image exactly once per epoch"
    assert {s["rank"] for s in samples} == {0, 1}, "both ranks got work"
    for s in samples:
        assert same(s["pixels"].numpy(), want[s["image_id"]]), s["image_id"]


def take_then_resume(url: str, storage_options=None, take: int = 3, workers=(2, 2), batch_size=2):
    """Read ``take`` batches, save the state, resume on new instances: (before, after) image ids of rank 0."""
    kw = dict(shuffle=True, seed=11, rank=0, world_size=2, storage_options=storage_options)
    ds = TorchDataset(url, **kw)
    ds.set_epoch(1)
    before = []
    for n, batch in enumerate(DataLoader(ds, batch_size=batch_size, num_workers=workers[0])):
        before += batch["image_id"]
        if n + 1 == take:
            state = ds.state_dict()
            break
    again = TorchDataset(url, **kw)
    again.load_state_dict(state)
    again.set_epoch(1)  # the training loop's call for the epoch it resumes: keeps the state
    after = [i for b in DataLoader(again, batch_size=batch_size, num_workers=workers[1]) for i in b["image_id"]]
    full = TorchDataset(url, **kw)
    full.set_epoch(1)
    return before, after, [s["image_id"] for s in full]


def test_archive_random_access_bit_exact(made):
    check_archive_api(*made)


def test_one_epoch_two_ranks_two_workers_every_image_once(made):
    check_epoch(*made)


def test_shuffle_is_deterministic_per_seed_and_epoch(made):
    url, _ = made

    def order(seed, epoch):
        ds = TorchDataset(url, shuffle=True, seed=seed)
        ds.set_epoch(epoch)
        return [s["image_id"] for s in ds]

    assert order(1, 0) == order(1, 0)
    assert sorted(order(1, 0)) == sorted(order(1, 1)) == sorted(order(2, 0))
    assert len({tuple(order(1, e)) for e in range(4)}) > 1, "the order changes with the epoch"
    plain = [s["image_id"] for s in TorchDataset(url)]
    assert plain == Archive(url).ids(images_only=True)


def test_resume_mid_epoch_gives_exactly_the_remainder(made):
    url, _ = made
    before, after, full = take_then_resume(url)
    assert len(before) >= 3 and not set(before) & set(after)
    assert sorted(before + after) == sorted(full)
    # with another number of workers on resume, and in this process without workers
    before, after, full = take_then_resume(url, take=2, workers=(2, 1), batch_size=1)
    assert not set(before) & set(after) and sorted(before + after) == sorted(full)
    before, after, full = take_then_resume(url, take=4, workers=(0, 0), batch_size=1)
    assert before == full[:4] and after == full[4:]


def test_state_dict_in_process_and_epochs(made):
    url, _ = made
    ds = TorchDataset(url, shuffle=True, seed=5)
    it = iter(ds)
    first = [next(it)["image_id"] for _ in range(5)]
    state = ds.state_dict()
    rest = [s["image_id"] for s in it]
    new = TorchDataset(url, shuffle=True, seed=5)
    new.load_state_dict(state)
    assert [s["image_id"] for s in new] == rest and first + rest == [s["image_id"] for s in TorchDataset(
        url, shuffle=True, seed=5)]
    # a finished epoch iterated again starts over; a new epoch starts from nothing
    assert sorted(s["image_id"] for s in new) == sorted(first + rest)
    with pytest.raises(ValueError, match="seed"):
        TorchDataset(url, shuffle=True, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        TorchDataset(url, shuffle=True, seed=5, rank=1, world_size=2).load_state_dict(state)


def test_transform_and_batches(made):
    url, files = made
    ds = TorchDataset(url, transform=lambda px: px[:8, :8].astype(np.float32).mean())
    batches = list(DataLoader(ds, batch_size=4, num_workers=0))
    assert sum(len(b["image_id"]) for b in batches) == len(expected_pixels(files))
    want = expected_pixels(files)
    for b in batches:
        assert b["input"].shape == (len(b["image_id"]),)
        for i, px, x in zip(b["image_id"], b["pixels"], b["input"]):
            assert same(px.numpy(), want[i]) and float(x) == pytest.approx(want[i][:8, :8].mean())


def test_corrupt_record_raises_naming_it_or_is_skipped(made, tmp_path):
    url, files = made
    damaged = tmp_path / "damaged"
    shutil.copytree(url, damaged)
    arc = Archive(str(damaged))
    victim = sorted(arc.ids(images_only=True))[0]
    row = arc.row(victim)
    shard = Path(arc.shard_path(row["shard"]))
    data = bytearray(shard.read_bytes())
    data[row["offset"] + row["length"] // 2] ^= 0x40
    shard.write_bytes(bytes(data))

    with pytest.raises(CorruptRecord, match=repr(victim)[1:-1]) as info:
        arc[victim]
    assert info.value.image_id == victim
    with pytest.raises(Exception, match=repr(victim)[1:-1]):  # re-raised from the worker process
        list(DataLoader(TorchDataset(str(damaged)), batch_size=None, num_workers=2))

    ds = TorchDataset(str(damaged), on_error="skip")
    got = [s["image_id"] for s in DataLoader(ds, batch_size=None, num_workers=2)]
    assert sorted(got) == sorted(set(expected_pixels(files)) - {victim})
    assert ds.skipped == 1
    inproc = TorchDataset(str(damaged), on_error="skip")
    assert len(list(inproc)) == len(got) and inproc.skipped == 1


def test_read_pixark_ray_dataset_bit_exact(made):
    url, files = made
    want = expected_pixels(files)
    rows = read_pixark(url).take_all()
    assert Counter(r["image_id"] for r in rows) == Counter(list(want))
    for r in rows:
        assert same(r["image"], want[r["image_id"]]), r["image_id"]
        assert r["format"] and r["codec"]


@pytest.mark.s3
def test_s3_archive_every_api_epoch_and_resume(ray_session, s3, s3_server, dev_images, tmp_path):
    fs, bucket = s3
    files = source(dev_images)
    write_tree(tmp_path / "src", files)
    url = f"s3://{bucket}/archive"
    s = archive(str(tmp_path / "src"), url, shard_size="3kB", workers=2, codec=CODEC)
    assert s["images"] == len(files)
    opts = s3_server["storage_options"]
    check_archive_api(url, files, opts)
    check_epoch(url, files, opts)  # DataLoader workers fork after the parent used s3fs: each opens its own
    before, after, full = take_then_resume(url, opts)
    assert not set(before) & set(after) and sorted(before + after) == sorted(full)
    rows = read_pixark(url, opts).take_all()
    want = expected_pixels(files)
    assert Counter(r["image_id"] for r in rows) == Counter(list(want))
    assert all(same(r["image"], want[r["image_id"]]) for r in rows)


def test_bench_read_reads_every_image_from_each_store(ray_session, dev_images, tmp_path):
    from pixark.jobs.bench_read import bench_read

    src = tmp_path / "src"
    write_tree(src, {f"{p.stem}.png": crop_png(p, 32) for p in dev_images[:2]})
    doc = bench_read(str(src), codecs=("png",), s3=False, repeat=1)
    assert [(r["run"], r["store"], r["images"]) for r in doc["runs"]] == [("files", "local", 2), ("png", "local", 2)]
    assert sum(doc["runs"][1]["records"].values()) == 2 and all(r["images_per_s"] > 0 for r in doc["runs"])


def _distributed_rank(rank: int, url: str, init: str, out: str) -> None:
    """One process of a 2-process gloo group: TorchDataset takes its rank and world size from torch.distributed."""
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        ds = TorchDataset(url, shuffle=True, seed=1)
        ids = [s["image_id"] for s in ds]
        Path(out, f"{rank}.json").write_text(json.dumps({"rank": ds.rank, "world_size": ds.world_size, "ids": ids}))
    finally:
        dist.destroy_process_group()


def test_rank_and_world_size_from_torch_distributed(made, tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    url, files = made
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_rank, args=(url, f"tcp://127.0.0.1:{port}", str(tmp_path)), nprocs=2)
    docs = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert [(d["rank"], d["world_size"]) for d in docs] == [(0, 2), (1, 2)]
    assert Counter(docs[0]["ids"] + docs[1]["ids"]) == Counter(list(expected_pixels(files)))
