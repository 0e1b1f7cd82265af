"""`pixark selfcheck`: may this device code learned streams? Run it on each GPU type before trusting it.

Every learned profile with shipped weights codes real images on the CPU and on the device: the streams must be
byte-identical, the CPU's stream must decode exactly on the device and on the CPU (where a device stream differs,
it is decoded on the CPU too, to show which side is wrong), and one large image (a real photo cropped or mirrored
to SIDE x SIDE) is coded as a single SIDE-pixel tile. Prints a verdict and the speeds seen (single process: the
sum of per-image times; aggregate: pixels over the wall time of the device phase with its worker processes). It
imports only the codec (no Ray), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from .console import emit_json, err, fail

_DEVICE = {"name": "cpu"}
_PIXELS: dict = {}


def learned_specs() -> list[str]:
    """One spec per learned codec and profile with shipped weights, each codec's default profile first."""
    from pixark import codec as pc

    specs = []
    for codec in pc.all_codecs():
        if not (codec.learned and codec.available()):
            continue
        profiles = codec.describe().get("profiles", {})
        items = profiles.items() if isinstance(profiles, dict) else ((p["name"], p) for p in profiles)
        default = codec.defaults.get("profile")
        others = sorted(n for n, p in items if p["weights"] and n != default)
        specs += [codec.name] + [f"{codec.name}:profile={n}" for n in others]
    return specs


def list_images(dirs: list[str], limit: int) -> list[Path]:
    from pixark.codec.training.data import list_images as under

    files = []
    for d in dirs:
        files += [Path(f) for f in under(d)] if Path(d).is_dir() else [Path(d)]
    return files[:limit]


def load_rgb(path: Path) -> np.ndarray | None:
    """8-bit RGB pixels of an image file (None for other kinds: the learned codecs take 8-bit RGB only)."""
    from pixark import codec as pc

    px = pc.load(path.read_bytes()).pixels
    return px if px is not None and px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3 else None


def large_image(images: list[np.ndarray], side: int) -> np.ndarray:
    """The largest image cropped to side x side, mirrored at its edges where it is smaller."""
    big = max(images, key=lambda a: a.shape[0] * a.shape[1])
    h, w = big.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    crop = big[y:y + side, x:x + side]
    reps = (-(-side // crop.shape[0]), -(-side // crop.shape[1]))
    rows = [np.concatenate([crop[::-1 if i % 2 else 1, ::-1 if j % 2 else 1] for j in range(reps[1])], axis=1)
            for i in range(reps[0])]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:side, :side])


def _init(device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _DEVICE["name"] = device


def _pixels(ref) -> np.ndarray:
    if isinstance(ref, np.ndarray):
        return ref
    if ref not in _PIXELS:
        _PIXELS[ref] = load_rgb(Path(ref))
    return _PIXELS[ref]


def _code(task: tuple) -> dict:
    """Encode ``ref``'s pixels with ``spec`` on this process's device and decode ``check`` (the CPU's stream) or
    the new stream there; with ``other`` ('cpu') also decode the new stream on that device."""
    from pixark import codec as pc

    spec, key, ref, check = task
    px, dev = _pixels(ref), _DEVICE["name"]
    out = {"key": key, "spec": spec, "pixels": px.shape[0] * px.shape[1]}
    t = time.perf_counter()
    stream = pc.encode(px, spec, device=dev)
    out["encode_s"] = time.perf_counter() - t
    out["stream"], out["bytes"] = stream, len(stream)
    target = stream if check is None else check
    t = time.perf_counter()
    out["decode_exact"] = _exact(target, px, dev)
    out["decode_s"] = time.perf_counter() - t
    if check is not None and stream != check:
        out["device_stream_on_cpu_exact"] = _exact(stream, px, "cpu")
    return out


def _exact(stream: bytes, px: np.ndarray, device: str) -> bool:
    from pixark import codec as pc

    try:
        return bool(np.array_equal(pc.decode(stream, device=device).pixels, px))
    except pc.CodecError:
        return False


def _run(tasks: list[tuple], device: str, workers: int) -> tuple[list[dict], float]:
    """The tasks on ``workers`` processes (0: in this process), one thread each; (results, wall seconds)."""
    t = time.perf_counter()
    if workers == 0:
        _init(device, 1)
        res = [_code(x) for x in tasks]
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                 initargs=(device, 1)) as pool:
            res = list(pool.map(_code, tasks))
    return res, time.perf_counter() - t


def selfcheck(device: str, dirs: list[str], limit: int = 60, per_profile: int = 6, side: int = 2048,
              cpu_workers: int = 2, device_workers: int = 1, specs: list[str] | None = None, log=None) -> dict:
    """CPU streams against ``device`` streams for every learned profile (see the module docstring)."""
    from pixark import codec as pc

    pc.registry.check_device(device, available=True)
    say = log or (lambda m: None)
    files = list_images(dirs, limit)
    refs = [(str(f), _pixels(str(f))) for f in files]
    refs = [(f, a) for f, a in refs if a is not None]
    if not refs:
        raise ValueError(f"no 8-bit RGB images under {', '.join(dirs)}")
    specs = specs or learned_specs()
    tasks = []
    for n, spec in enumerate(specs):
        chosen = refs if n == 0 else refs[:per_profile]
        tasks += [(spec, Path(f).name, f, None) for f, _ in chosen]
    if side:
        big = large_image([a for _, a in refs], side)
        name, params = pc.parse_spec(specs[0])
        if name == "mspsm":
            params["tile"] = side
        spec = name + ":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else name
        tasks.append((spec, f"large-{side}x{side}", big, None))
    mpx = sum(_pixels(t[2]).shape[0] * _pixels(t[2]).shape[1] for t in tasks) / 1e6
    say(f"{len(tasks)} codings ({mpx:.1f} Mpx) over {len(specs)} profiles: CPU side on {cpu_workers} processes")
    cpu, cpu_wall = _run(tasks, "cpu", cpu_workers)
    say(f"CPU side {cpu_wall:.1f} s; {device} side on {device_workers} processes")
    dev_tasks = [(s, k, r, c["stream"]) for (s, k, r, _), c in zip(tasks, cpu)]
    dev, dev_wall = _run(dev_tasks, device, device_workers)
    rows, failures = {}, []
    for c, d in zip(cpu, dev):
        row = rows.setdefault(d["spec"], {"images": 0, "megapixels": 0.0, "identical": 0, "decodes_exact": 0,
                                          "enc_s": 0.0, "dec_s": 0.0, "cpu_enc_s": 0.0, "cpu_dec_s": 0.0})
        same = d["stream"] == c["stream"]
        exact = c["decode_exact"] and d["decode_exact"]
        row["images"] += 1
        row["megapixels"] += d["pixels"] / 1e6
        row["identical"] += same
        row["decodes_exact"] += exact
        for k, src in (("enc_s", d["encode_s"]), ("dec_s", d["decode_s"]), ("cpu_enc_s", c["encode_s"]),
                       ("cpu_dec_s", c["decode_s"])):
            row[k] += src
        if not (same and exact):
            failures.append({"spec": d["spec"], "image": d["key"], "identical": same,
                             "cpu_stream_on_cpu": c["decode_exact"], "cpu_stream_on_device": d["decode_exact"],
                             "device_stream_on_cpu": d.get("device_stream_on_cpu_exact")})
    table = []
    for spec, r in rows.items():
        table.append({"spec": spec, "images": r["images"], "megapixels": round(r["megapixels"], 3),
                      "identical": r["identical"], "decodes_exact": r["decodes_exact"],
                      "device_encode_mps": round(r["megapixels"] / r["enc_s"], 3),
                      "device_decode_mps": round(r["megapixels"] / r["dec_s"], 3),
                      "cpu_encode_mps": round(r["megapixels"] / r["cpu_enc_s"], 3),
                      "cpu_decode_mps": round(r["megapixels"] / r["cpu_dec_s"], 3)})
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    return {"ok": not failures, "verdict": "PASS" if not failures else "FAIL", "device": device,
            "device_name": name, "torch": torch.__version__, "codings": len(tasks), "megapixels": round(mpx, 3),
            "device_workers": device_workers, "device_wall_s": round(dev_wall, 2),
            "device_aggregate_mps": round(mpx / dev_wall, 3), "cpu_workers": cpu_workers,
            "cpu_wall_s": round(cpu_wall, 2), "cpu_aggregate_mps": round(mpx / cpu_wall, 3),
            "profiles": table, "failures": failures,
            "streams_sha256": hashlib.sha256(b"".join(d["stream"] for d in dev)).hexdigest()}


def show(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(soft_wrap=True)
    t = Table(title=f"selfcheck on {doc['device']} ({doc['device_name']}, torch {doc['torch']})")
    cols = ["spec", "images", "megapixels", "identical", "decodes_exact", "device_encode_mps", "device_decode_mps",
            "cpu_encode_mps", "cpu_decode_mps"]
    for c in cols:
        t.add_column(c.replace("_", " "))
    for r in doc["profiles"]:
        t.add_row(*[str(r[c]) for c in cols])
    out.print(t)
    out.print(f"device side: {doc['megapixels']} Mpx (encode + decode) in {doc['device_wall_s']} s on "
              f"{doc['device_workers']} process(es): {doc['device_aggregate_mps']} MP/s; CPU side: "
              f"{doc['cpu_wall_s']} s on {doc['cpu_workers']} process(es)")
    for f in doc["failures"]:
        out.print(f"FAILED {f['spec']} {f['image']}: {f}")
    out.print(f"verdict: {doc['verdict']}")


def register(app: typer.Typer) -> None:
    @app.command("selfcheck")
    def selfcheck_cmd(
        images: List[str] = typer.Argument(..., help="folders or files of real 8-bit RGB photos (50 or more)"),
        device: str = typer.Option("cuda", help="the device to check: 'cuda', 'cuda:N' (or 'cpu')"),
        limit: int = typer.Option(60, help="images the default profile codes"),
        per_profile: int = typer.Option(6, help="images each other profile codes"),
        side: int = typer.Option(2048, help="side of the large image coded as one tile (0: none)"),
        cpu_workers: int = typer.Option(2, help="processes for the CPU side"),
        device_workers: int = typer.Option(1, help="processes sharing the device"),
        spec: Optional[List[str]] = typer.Option(None, help="check only these codec specs (default: every "
                                                             "learned profile with weights)"),
        json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    ) -> None:
        """Check that a device codes learned streams byte-identical to the CPU's and decodes them exactly."""
        if limit < 1 or per_profile < 0 or side < 0 or cpu_workers < 0 or device_workers < 0:
            raise fail("--limit must be at least 1; --per-profile, --side and the worker counts at least 0")
        try:
            doc = selfcheck(device, images, limit, per_profile, side, cpu_workers, device_workers, spec,
                            log=lambda m: err.print(m, highlight=False))
        except ValueError as exc:
            raise fail(str(exc))
        emit_json(doc) if json_out else show(doc)
        if not doc["ok"]:
            raise typer.Exit(1)


def main() -> None:
    """``python -m pixark.jobs.selfcheck``: the command alone (no Ray or storage imports)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
