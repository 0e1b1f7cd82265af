"""Shared fixtures: one Ray per test session, one local S3 endpoint (moto's standalone server) per session, and the
dev images from ../shared/data.

- ``ray_session``: ``ray.init(num_cpus=2)`` once per session (reused if a test already initialised Ray).
- ``s3_server``: moto's ThreadedMotoServer on 127.0.0.1 (a real HTTP S3 endpoint, as s3fs's own tests use), with
  dummy AWS credentials; fsspec's config points ``s3://`` at it in this process and FSSPEC_S3_ENDPOINT_URL plus
  the AWS variables do for subprocesses. Yields a dict: endpoint_url, storage_options, env.
- ``s3``: a fresh bucket on that server: (s3fs filesystem, bucket name).
- ``dev_images``: paths of a few /work/shared/data/dev images, or a skip saying why.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV = SHARED_DATA / "dev"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    import fsspec
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": endpoint}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    old_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = dict(options)
    try:
        yield {"endpoint_url": endpoint, "storage_options": options, "env": env}
    finally:
        if old_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = old_conf
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server["storage_options"], use_listings_cache=False)
    bucket = f"pixark-test-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    yield fs, bucket
    try:
        fs.rm(bucket, recursive=True)
    except Exception:  # the server goes away at session end anyway
        pass


@pytest.fixture(scope="session")
def dev_images() -> list[Path]:
    if not DEV.is_dir():
        pytest.skip(f"dev images not found: {DEV} is absent (it holds ../shared/data/dev from the project data)")
    files = sorted(DEV.rglob("*.png"))
    if len(files) < 4:
        pytest.skip(f"dev images not found: {DEV} holds {len(files)} PNG files, tests need 4")
    step = len(files) // 4
    return files[::step][:4]
