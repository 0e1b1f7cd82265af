"""The Ray side: connecting to a cluster, sizing and starting the pool of codec workers.

Each worker is an actor that loads its codec (and learned model, when `auto` or --codec picks one) once, then codes
batches of source objects it reads itself through fsspec. Actors are restarted when their process dies
(``max_restarts``) and the batch they were coding is retried (``max_task_retries``); when that budget is spent the
driver stops with ``WorkerLost``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import ray

from .coding import code_objects
from .errors import PipelineError, one_line
from .store import storage_env

ACTOR_PREFIX = "pixark-archive"


def connect(address: str | None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), or start a local Ray. Returns True when this call started Ray here
    (the caller shuts it down at the end). Reuses a Ray already initialised in this process (tests, notebooks)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    _quiet_auth_notice()
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise PipelineError(f"cannot connect to Ray at {address}: {exc}") from exc
        return False
    # Ray runs its workers at niceness 15 by default (to keep its own daemons responsive). On a machine shared with
    # other work that makes the codec workers lose the CPU to anything at normal priority, including this driver:
    # a local Ray started for one job runs its workers at normal priority instead.
    ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0}, **kwargs)
    return True


def _quiet_auth_notice() -> None:
    """Ray warns on every ray.init() that it turned on its default token authentication, which leaves the user
    nothing to do. Drop that one notice; every other Ray warning (token missing, auth disabled ...) still shows."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _AuthNotice) for f in log.filters):
        log.addFilter(_AuthNotice())


class _AuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def plan_workers(workers: int | None, gpus_per_worker: float | None, resources: dict | None = None
                 ) -> tuple[int, float, float]:
    """(workers, cpus per worker, gpus per worker) from what the cluster has (``resources``, default
    ``ray.cluster_resources()``). GPUs are requested only when the cluster reports some: Ray would otherwise keep
    the actors pending forever."""
    res = ray.cluster_resources() if resources is None else resources
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    if gpus > 0 and gpus_per_worker != 0:
        gpw = gpus_per_worker if gpus_per_worker else 1.0
        if gpw > gpus:
            raise PipelineError(f"--gpus-per-worker {gpw} is more than the cluster's {gpus:g} GPUs")
        n = workers or max(1, int(gpus // gpw))
        cpw = min(1.0, cpus / n) if cpus else 0
        return n, cpw, gpw
    if gpus_per_worker:
        logging.getLogger(__name__).warning("no GPUs in the cluster: ignoring --gpus-per-worker, using CPU workers")
    if cpus <= 0:
        raise PipelineError("the Ray cluster reports no CPUs")
    n = workers or max(1, int(cpus))
    # More workers than CPUs still runs (each asks for a fraction of a CPU) instead of waiting forever.
    return n, min(1.0, cpus / n), 0.0


def torch_device(gpu_ids, environ=None) -> str:
    """The torch device name of the first GPU Ray gave this process, "cpu" without one. Ray reports node-level
    GPU ids but (by default) narrows CUDA_VISIBLE_DEVICES to the GPUs it assigned, and torch numbers the visible
    GPUs from 0: GPU 3 of a node is cuda:0 inside its actor. So the index is the id's position in
    CUDA_VISIBLE_DEVICES, or the id itself when that is unset (as ray.train.torch.get_device does)."""
    if not gpu_ids:
        return "cpu"
    gid = str(gpu_ids[0])
    env = os.environ if environ is None else environ
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"cuda:{visible.index(gid)}" if gid in visible else f"cuda:{gid}"


def task_device() -> str:
    """The torch device for codec work in the running Ray task or actor: its first GPU, else "cpu"."""
    return torch_device(ray.get_gpu_ids())


@ray.remote
class CodecWorker:
    def __init__(self, src_fs, codec: str, verify: bool, slow_seconds: float = 0.0):
        import numpy as np

        from pixark import codec as pc

        self.fs = src_fs
        self.codec = codec
        self.verify = verify
        self.slow = slow_seconds  # test hook (PIXARK_TEST_SLOW_SECONDS): makes kill tests deterministic
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        gpu_ids = ray.get_gpu_ids()
        self.device = f"cuda:{gpu_ids[0]}" if gpu_ids else "cpu"  # the manifests' label: the node's GPU id
        self.torch_device = torch_device(gpu_ids)  # where the codec runs its network (learned codecs only)
        # Load the codec (and any model weights, onto the GPU too) now, once per process, not on the first image.
        rng = np.random.default_rng(0)
        self.warmup_error = ""
        try:
            pc.encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), codec, device=self.torch_device)
        except pc.CodecError:
            pass  # a forced codec that cannot take RGB: it still loaded
        except Exception as exc:  # a codec bug: each image then fails on its own and is stored as original bytes
            self.warmup_error = f"{type(exc).__name__}: {exc}"

    def ping(self) -> dict:
        return {"worker": self.worker, "device": self.device, "pid": os.getpid(), "warmup_error": self.warmup_error}

    def code(self, items: list[tuple[str, str, str, int]]) -> list[tuple[dict, bytes | None]]:
        if self.slow:
            time.sleep(self.slow * len(items))
        # the batch's images are coded together: small ones share the learned codec's network calls
        out = code_objects(self.fs, items, self.codec, self.verify, self.torch_device)
        for row, _ in out:
            row.update(worker=self.worker, device=self.device)
        return out


# Workers on a cluster started elsewhere do not inherit the driver's environment: its storage settings travel in
# the actors' runtime_env (store.storage_env: the one list, shared with `pixark submit`).


def this_node() -> tuple[str, dict]:
    """(node id, resources) of the node this driver runs on."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return node_id, dict(node.get("Resources") or {})
    return node_id, {}


def start_pool(n: int, cpus: float, gpus: float, src_fs, codec: str, verify: bool, slow_seconds: float,
               run_tag: str, max_restarts: int, pin_node: str | None = None) -> list:
    """``pin_node``: run every worker on that node (a local source path exists only on the driver's node)."""
    opts = dict(num_cpus=cpus, max_restarts=max_restarts, max_task_retries=max_restarts)
    if pin_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=pin_node, soft=False)
    if gpus:
        opts["num_gpus"] = gpus
    env = storage_env()
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return [CodecWorker.options(name=f"{ACTOR_PREFIX}-{run_tag}-w{i}", **opts).remote(src_fs, codec, verify, slow_seconds)
            for i in range(n)]


def wait_ready(actors: list, timeout: float) -> list[dict]:
    refs = [a.ping.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if len(ready) < len(refs):
        raise PipelineError(
            f"only {len(ready)} of {len(refs)} codec workers started within {timeout:.0f}s; cluster resources: "
            f"{ray.cluster_resources()}, available: {ray.available_resources()}. Use fewer --workers.")
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise PipelineError(f"codec workers failed to start: {one_line(exc)}") from exc


def stop_pool(actors: list) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # already dead
            pass
