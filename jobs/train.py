"""Train a learned codec on the CPU or a CUDA GPU (``pixark train``; the work is pixark.codec.training).

    pixark train --codec mspsm --profile cpu --data ../shared/data/train --dev ../shared/data/dev \
        --out /work/runs/mspsm-cpu --minutes 120 [--resume] [--device cuda --bf16 --batch 256 --loader-workers 8]
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pixark train", description=__doc__.split("\n")[0])
    ap.add_argument("--codec", default="mspsm")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--data", default="../shared/data/train", help="training images (PNG, lossless JPEG XL, ...; "
                    "searched recursively); crops are drawn in proportion to each image's pixels")
    ap.add_argument("--dev", default="../shared/data/dev")
    ap.add_argument("--out", required=True, help="run directory (checkpoint.npz, train.log); keep it outside git")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--resume", action="store_true", help="go on from the checkpoint in --out (made on any device)")
    ap.add_argument("--init", help="warm-start from a checkpoint (a run directory or its checkpoint.npz) of this or "
                    "another profile (e.g. cpu-fb from cpu-small), or from shipped weights (mspsm: "
                    "codec/weights/mspsm-<profile>.npz)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the network, batches and loss run")
    ap.add_argument("--bf16", action="store_true", help="the network trunk's convolutions in bfloat16 (autocast): "
                    "faster steps on GPUs and on CPUs with AMX / AVX512-BF16 (kept on resume; dev estimates stay "
                    "float32)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of torch")
    ap.add_argument("--loader-workers", type=int, default=0, help="threads cutting crops ahead of the step (0: in "
                    "the step, reproducibly); also decode the training images at the start")
    ap.add_argument("--jpeg", type=float, default=0.0, help="fraction of crops passed through JPEG (quality 70-100, "
                    "4:4:4/4:2:2/4:2:0) first: pixels with a JPEG history")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--dev-minutes", type=float, default=10.0)
    ap.add_argument("--export-only", action="store_true", help="export the checkpoint in --out and measure dev")
    ap.add_argument("--measure-limit", type=int, help="with --export-only: images per dev set to measure")
    ap.add_argument("--export", dest="export_to", help="weights path to write at the end, e.g. "
                    "codec/weights/mspsm-cpu.npz")
    a = ap.parse_args(argv)
    if a.export_only and not a.export_to:
        ap.error("--export-only needs --export PATH")
    if not a.export_only and a.steps is None and a.minutes is None:
        ap.error("give --steps and/or --minutes")
    import torch

    from pixark.codec.errors import CodecError
    from pixark.codec.training import export_checkpoint, train

    def log(m):
        print(m, file=sys.stderr, flush=True)

    try:
        if a.export_only:
            torch.set_num_threads(a.threads)
            r = export_checkpoint(a.codec, a.profile, a.out, a.export_to, a.dev, a.measure_limit, log=log)
        else:
            r = train(codec=a.codec, profile=a.profile, data=a.data, dev=a.dev, out=a.out, steps=a.steps,
                      minutes=a.minutes, resume=a.resume, batch=a.batch, lr=a.lr, crop=a.crop, threads=a.threads,
                      seed=a.seed, ckpt_minutes=a.ckpt_minutes, dev_minutes=a.dev_minutes, export_to=a.export_to,
                      init=a.init, bf16=a.bf16, device=a.device, loader_workers=a.loader_workers, jpeg=a.jpeg, log=log)
    except CodecError as e:
        print(f"pixark train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
