"""The cluster configs in infra/ parse, hold what a launch needs, and agree with each other and with the code.

The cluster launcher config is checked with Ray's own schema and default-filling (what `ray up` does before it
talks to AWS); the KubeRay manifests against the fields the operator reads; the RayJob entrypoints are parsed by
pixark's real CLI, so a renamed option breaks this test instead of a production job.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
LAUNCHER = INFRA / "aws" / "ray-cluster.yaml"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB_ARCHIVE = INFRA / "kuberay" / "rayjob-archive.yaml"
RAYJOB_VERIFY = INFRA / "kuberay" / "rayjob-verify.yaml"
SERVICE_ACCOUNT = INFRA / "kuberay" / "serviceaccount.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
LOCK = INFRA / "docker" / "requirements.lock"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z,]+\])?==([0-9][0-9A-Za-z.+-]*)", line)
        assert m, f"requirements.lock line not pinned to one version: {line!r}"
        pins[m.group(1).lower()] = m.group(3)
    return pins


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def image_tag() -> str:
    """The one image every config runs, named after the versions it pins."""
    a = dockerfile_args()
    return f"pixark:0.1.0-ray{lock_pins()['ray']}-torch{a['TORCH_VERSION']}"


def runs_our_image(ref: str) -> bool:
    """The image built from infra/docker at the pinned versions, under any registry it was pushed to."""
    return ref.rsplit("/", 1)[-1] == image_tag()


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


# ---------------------------------------------------------------------------------------------- container image


def test_dockerfile_pins_base_python_torch_and_every_dependency():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms == ["nvidia/cuda:12.8.1-base-ubuntu22.04"]
    assert not any(f.endswith(":latest") or ":" not in f for f in froms)
    args = dockerfile_args()
    assert re.fullmatch(r"3\.\d+\.\d+", args["PYTHON_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]) and re.fullmatch(r"\d+\.\d+\.\d+", args["UV_VERSION"])
    # torch alone, pinned, before the lock and before the package (so nothing re-resolves it).
    torch_at = text.index('uv pip install "torch==${TORCH_VERSION}"')
    assert torch_at < text.index("uv pip install -r ") < text.index("uv pip install --no-deps /opt/pixark-src")
    assert "torch" not in lock_pins(), "torch is pinned by the Dockerfile's own line, not the lock"
    # Every COPY source exists in the repository (the build context is the repo root).
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies {part}, which the repository does not have"


def test_lock_covers_every_runtime_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement

    pins = lock_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = req.name.lower()
        if name == "torch":
            version = dockerfile_args()["TORCH_VERSION"]
        else:
            assert name in pins, f"{name} (a pyproject dependency) is not pinned in {LOCK.name}"
            version = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {dep!r}"


def test_image_pins_what_the_tests_ran_with():
    import ray

    assert lock_pins()["ray"] == ray.__version__, "the image's Ray must match the Ray the tests ran with"
    assert runs_our_image("123456789012.dkr.ecr.us-east-1.amazonaws.com/" + image_tag())
    assert not runs_our_image("pixark:latest") and not runs_our_image(image_tag() + "-dirty")


# ---------------------------------------------------------------------------------------------- cluster launcher


def test_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(LAUNCHER)
    validate_config(prepare_config(copy.deepcopy(raw)))
    # The validator is real: a config without its head node type is refused.
    broken = copy.deepcopy(raw)
    del broken["head_node_type"]
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


def test_launcher_config_has_gpu_workers_and_a_driver_only_head():
    cfg = load(LAUNCHER)
    assert cfg["cluster_name"] == "pixark"
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["provider"]["cache_stopped_nodes"] is False
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no worker node type with GPUs"
    for t in gpu:
        assert t["max_workers"] >= 1 and t["min_workers"] == 0
        assert t["node_config"]["InstanceType"].startswith(("g4dn", "g5", "g6", "p3", "p4", "p5"))
    assert 0 < cfg["max_workers"] and all(t.get("max_workers", 0) <= cfg["max_workers"] for t in types.values())
    assert runs_our_image(cfg["docker"]["image"])
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_cmd and "--num-cpus=0" in head_cmd and "--dashboard-host=0.0.0.0" in head_cmd
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmd
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])


# ---------------------------------------------------------------------------------------------- KubeRay


def check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == lock_pins()["ray"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (head_c,) = containers(head["template"])
    assert runs_our_image(head_c["image"])
    assert {p["containerPort"] for p in head_c["ports"]} >= {6379, 8265, 10001, 8080}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_groups = [g for g in groups.values()
                  if int(containers(g["template"])[0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1
        (c,) = containers(g["template"])
        assert runs_our_image(c["image"])
        # Kubernetes requires request == limit for extended resources such as GPUs; equal CPU/memory keeps the
        # pods in the Guaranteed QoS class, so Ray's view of the node is what it really gets.
        assert c["resources"]["requests"] == c["resources"]["limits"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/dev/shm" in mounts, f"group {g['groupName']}: the object store needs a memory-backed /dev/shm"
        assert g["template"]["spec"]["serviceAccountName"] == load(SERVICE_ACCOUNT)["metadata"]["name"]
    for g in gpu_groups:
        tol = g["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tol)


def test_raycluster_manifest():
    doc = load(RAYCLUSTER)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"] == "pixark"
    check_ray_cluster_spec(doc["spec"])


def _command(name: str):
    import typer.main

    from pixark.jobs.cli import app

    group = typer.main.get_command(app)
    if name not in group.commands:
        pytest.skip(f"this build has no `pixark {name}` yet")
    return group.commands[name]


def check_entrypoint(entrypoint: str, job: str) -> list[str]:
    """The entrypoint runs `pixark JOB ...` and the real CLI accepts its arguments."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["pixark", job], entrypoint
    cmd = _command(job)
    ctx = cmd.make_context(job, argv[2:], resilient_parsing=False)  # raises on unknown options or missing args
    assert ctx.params
    return argv


def test_rayjob_archive_manifest():
    doc = load(RAYJOB_ARCHIVE)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    argv = check_entrypoint(spec["entrypoint"], "archive")
    assert all(a.startswith("s3://") for a in argv[2:4])
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    # The cluster a one-shot job brings is the same as the long-lived one.
    assert spec["rayClusterSpec"] == load(RAYCLUSTER)["spec"]
    check_ray_cluster_spec(spec["rayClusterSpec"])


def test_rayjob_verify_runs_on_the_long_lived_cluster():
    doc = load(RAYJOB_VERIFY)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    argv = check_entrypoint(spec["entrypoint"], "verify")
    archive_dest = shlex.split(load(RAYJOB_ARCHIVE)["spec"]["entrypoint"])[3]
    assert argv[2] == archive_dest, "verify checks the archive the archive job writes"
    assert "rayClusterSpec" not in spec
    assert spec["clusterSelector"] == {"ray.io/cluster": load(RAYCLUSTER)["metadata"]["name"]}


def test_service_account_uses_a_role_not_keys():
    doc = load(SERVICE_ACCOUNT)
    assert doc["kind"] == "ServiceAccount"
    assert doc["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for path in (RAYCLUSTER, RAYJOB_ARCHIVE, LAUNCHER):
        assert "AWS_SECRET_ACCESS_KEY" not in path.read_text(), f"{path.name} must not carry S3 keys"
