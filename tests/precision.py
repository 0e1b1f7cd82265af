"""A process that asked for every reduced-precision float mode torch offers: what the GPU tests code under."""

from contextlib import contextmanager

import torch


@contextmanager
def reduced_precision():
    """TF32 through torch's newer precision API (which the legacy ``allow_tf32`` flags cannot even be read beside)
    and cuDNN autotuning, where this torch has them; the process's own settings come back after."""
    b = torch.backends
    knobs = [(b, "fp32_precision", "tf32"), (b.cuda.matmul, "fp32_precision", "tf32"), (b.cudnn, "benchmark", True)]
    before = [(o, k, getattr(o, k)) for o, k, _ in knobs if hasattr(o, k)]
    try:
        for o, k, v in knobs:
            if hasattr(o, k):
                setattr(o, k, v)
        yield
    finally:
        for o, k, v in before:
            setattr(o, k, v)
